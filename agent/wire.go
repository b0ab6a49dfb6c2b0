// Package agent is pmagent's pipeline: it accepts the shims of every vLLM process on the host over
// a Unix socket, assigns their sessions, and publishes their events to the PROFILEMATE JetStream
// stream, keeping what it cannot deliver yet in memory and then in a size-limited disk spool.
package agent

import (
	"encoding/json"
	"errors"
	"fmt"
)

// WireVersion is the major version of the shim ↔ agent line protocol.
const WireVersion = 1

// Ident is who a process is inside its deployment; unknown ranks are -1.
type Ident struct {
	Role string `json:"role"`
	DP   int    `json:"dp"`
	PP   int    `json:"pp"`
	TP   int    `json:"tp"`
	EP   int    `json:"ep"`
	Rank int    `json:"rank"`
}

// Hello is the first line a shim sends on a connection.
type Hello struct {
	Session string   `json:"session"`
	Host    string   `json:"host"`
	PID     int      `json:"pid"`
	PPID    int      `json:"ppid"`
	Role    string   `json:"role"`
	DP      int      `json:"dp"`
	PP      int      `json:"pp"`
	TP      int      `json:"tp"`
	EP      int      `json:"ep"`
	Rank    int      `json:"rank"`
	Python  string   `json:"python"`
	VLLM    string   `json:"vllm"`
	GPUUUID string   `json:"gpu_uuid"`
	Title   string   `json:"title"`
	Argv    []string `json:"argv"`
	StartNS int64    `json:"start_ns"`
}

// Ident returns the identity the hello announces.
func (h *Hello) Ident() Ident {
	return Ident{Role: h.Role, DP: h.DP, PP: h.PP, TP: h.TP, EP: h.EP, Rank: h.Rank}
}

// Event is one row as the shim sends it; Cols stays raw until it is encoded for the stream.
type Event struct {
	Kind  string          `json:"kind"`
	Table string          `json:"table"`
	Seq   uint64          `json:"seq"`
	Step  int64           `json:"step"`
	TsNS  int64           `json:"ts_ns"`
	Cols  json.RawMessage `json:"cols"`
}

// Batch is a group of events of one process.
type Batch struct {
	PID     int     `json:"pid"`
	Ident   *Ident  `json:"ident"`
	Events  []Event `json:"events"`
	Dropped uint64  `json:"dropped"`
}

// Target is the patch result of one vLLM target inside a process.
type Target struct {
	Target string `json:"target"`
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"`
}

// StatusMsg reports a process's patch results.
type StatusMsg struct {
	PID     int      `json:"pid"`
	Targets []Target `json:"targets"`
}

// Bye is the last line of a process: its final drop count and last sequence number.
type Bye struct {
	PID     int    `json:"pid"`
	Dropped uint64 `json:"dropped"`
	LastSeq uint64 `json:"last_seq"`
	EndNS   int64  `json:"end_ns"`
	// EndState and EndSignal: how the process says it ends ("clean", or "killed" with the signal's
	// name when a signal's default action ends it after its last flush).
	EndState  string `json:"end_state"`
	EndSignal string `json:"end_signal"`
}

// Ctl is a control line the agent sends to a shim.
type Ctl struct {
	T       string `json:"t"`
	V       int    `json:"v"`
	Op      string `json:"op"`
	Name    string `json:"name,omitempty"`
	Enabled *bool  `json:"enabled,omitempty"`
	Session string `json:"session,omitempty"`
}

// ErrBadLine marks a line the agent rejected; the connection stays open.
var ErrBadLine = errors.New("bad line")

// line is the union of every message type, so a line is parsed once whatever its type.
type line struct {
	T  string `json:"t"`
	V  *int   `json:"v"`
	Op string `json:"op"`
	Hello
	Ident   *Ident   `json:"ident"`
	Events  []Event  `json:"events"`
	Dropped uint64   `json:"dropped"`
	Targets []Target `json:"targets"`
	LastSeq uint64   `json:"last_seq"`
	EndNS   int64    `json:"end_ns"`
	// bye
	EndState  string `json:"end_state"`
	EndSignal string `json:"end_signal"`
}

// decodeLine parses a line and checks its type and version.
func decodeLine(b []byte) (*line, error) {
	e := &line{}
	if err := json.Unmarshal(b, e); err != nil {
		return e, fmt.Errorf("%w: not a valid object: %v", ErrBadLine, err)
	}
	if e.T == "" {
		return e, fmt.Errorf("%w: no \"t\"", ErrBadLine)
	}
	if e.V == nil || *e.V != WireVersion {
		v := "missing"
		if e.V != nil {
			v = fmt.Sprint(*e.V)
		}
		return e, fmt.Errorf("%w: wire version %s, want %d", ErrBadLine, v, WireVersion)
	}
	return e, nil
}

func (l *line) batch() (*Batch, error) {
	b := Batch{PID: l.PID, Ident: l.Ident, Events: l.Events, Dropped: l.Dropped}
	if b.PID <= 0 {
		return nil, fmt.Errorf("%w: batch without pid", ErrBadLine)
	}
	for i := range b.Events {
		e := &b.Events[i]
		if e.Kind == "" || e.Table == "" {
			return nil, fmt.Errorf("%w: batch event %d without kind or table", ErrBadLine, i)
		}
		if len(e.Cols) == 0 || e.Cols[0] != '{' {
			return nil, fmt.Errorf("%w: batch event %d: cols is not an object", ErrBadLine, i)
		}
	}
	return &b, nil
}
