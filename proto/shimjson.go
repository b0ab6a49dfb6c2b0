package proto

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"

	"github.com/profilemate/profilemate/proto/pmpb"
)

// WireVersion is the major version of the shim ↔ agent JSON lines ("v").
const WireVersion = 1

// Line types ("t").
const (
	LineHello  = "hello"
	LineBatch  = "batch"
	LineStatus = "status"
	LineBye    = "bye"
	LineCtl    = "ctl"
	LineAdmin  = "admin"
)

// ErrBadLine marks a JSON line that cannot be accepted; errors.Is works on every decode error.
var ErrBadLine = errors.New("bad line")

// Ident is who a process is inside its deployment; unknown ranks are -1.
type Ident struct {
	Role string `json:"role"`
	DP   int    `json:"dp"`
	PP   int    `json:"pp"`
	TP   int    `json:"tp"`
	EP   int    `json:"ep"`
	Rank int    `json:"rank"`
}

// Hello is the first line of a shim's connection.
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

// Process is the hello as a protobuf Process; the agent fills session and host where the shim
// left them empty.
func (h *Hello) Process() *pmpb.Process {
	return &pmpb.Process{
		Session: h.Session, Host: h.Host, Pid: int64(h.PID), Ppid: int64(h.PPID), Role: h.Role,
		Dp: int32(h.DP), Pp: int32(h.PP), Tp: int32(h.TP), Ep: int32(h.EP), Rank: int32(h.Rank),
		Python: h.Python, Vllm: h.VLLM, GpuUuid: h.GPUUUID, Title: h.Title, StartNs: h.StartNS,
		Argv: append([]string(nil), h.Argv...),
	}
}

// Event is one row as the shim sends it; Cols holds the table's own columns only.
type Event struct {
	Kind  string                     `json:"kind"`
	Table string                     `json:"table"`
	Seq   uint64                     `json:"seq"`
	Step  int64                      `json:"step"`
	TsNS  int64                      `json:"ts_ns"`
	Cols  map[string]json.RawMessage `json:"cols"`
}

// Batch is a group of events of one process; Ident, when present, updates the hello's ranks
// (a worker may learn its ranks after it said hello).
type Batch struct {
	PID     int     `json:"pid"`
	Ident   *Ident  `json:"ident,omitempty"`
	Events  []Event `json:"events"`
	Dropped uint64  `json:"dropped"`
}

// Target is one vLLM target's patch result.
type Target struct {
	Target string `json:"target"`
	Status string `json:"status"`
	Reason string `json:"reason"`
}

// Status reports a process's patch results.
type Status struct {
	PID     int      `json:"pid"`
	Targets []Target `json:"targets"`
}

// Bye is a process's last line.
type Bye struct {
	PID     int    `json:"pid"`
	Dropped uint64 `json:"dropped"`
	LastSeq uint64 `json:"last_seq"`
	EndNS   int64  `json:"end_ns"`
}

// Ctl is a line the agent sends to a shim: op "profiler" (Name, Enabled) or "session" (Session).
type Ctl struct {
	Op      string `json:"op"`
	Name    string `json:"name,omitempty"`
	Enabled *bool  `json:"enabled,omitempty"`
	Session string `json:"session,omitempty"`
}

// Admin is a request of an admin client (op "status").
type Admin struct {
	Op string `json:"op"`
}

// Line is one decoded JSON line; exactly the field named by T is set.
type Line struct {
	T      string
	V      int
	Hello  *Hello
	Batch  *Batch
	Status *Status
	Bye    *Bye
	Ctl    *Ctl
	Admin  *Admin
}

// DecodeLine decodes and checks one JSON line of the wire against the embedded tables.
func DecodeLine(b []byte) (*Line, error) { return Default().DecodeLine(b) }

// DecodeLine decodes and checks one JSON line: its type and version, its required fields, and for
// a batch every event's kind, table and column types.
func (r *Registry) DecodeLine(b []byte) (*Line, error) {
	var env struct {
		T *string `json:"t"`
		V *int    `json:"v"`
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		return nil, fmt.Errorf("%w: not a JSON object: %.40q", ErrBadLine, b)
	}
	if err := json.Unmarshal(b, &env); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadLine, err)
	}
	if env.T == nil || *env.T == "" {
		return nil, fmt.Errorf("%w: no \"t\"", ErrBadLine)
	}
	if env.V == nil {
		return nil, fmt.Errorf("%w: %s line without \"v\"", ErrBadLine, *env.T)
	}
	if *env.V != WireVersion {
		return nil, fmt.Errorf("%w: %s line has wire version %d, this side speaks %d", ErrBadLine, *env.T, *env.V, WireVersion)
	}
	l := &Line{T: *env.T, V: *env.V}
	var dst any
	switch l.T {
	case LineHello:
		l.Hello = &Hello{DP: -1, PP: -1, TP: -1, EP: -1, Rank: -1}
		dst = l.Hello
	case LineBatch:
		l.Batch = &Batch{}
		dst = l.Batch
	case LineStatus:
		l.Status = &Status{}
		dst = l.Status
	case LineBye:
		l.Bye = &Bye{}
		dst = l.Bye
	case LineCtl:
		l.Ctl = &Ctl{}
		dst = l.Ctl
	case LineAdmin:
		l.Admin = &Admin{}
		dst = l.Admin
	default:
		return nil, fmt.Errorf("%w: unknown line type %q", ErrBadLine, l.T)
	}
	if err := json.Unmarshal(b, dst); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrBadLine, l.T, err)
	}
	switch {
	case l.Hello != nil && l.Hello.PID <= 0,
		l.Batch != nil && l.Batch.PID <= 0,
		l.Status != nil && l.Status.PID <= 0,
		l.Bye != nil && l.Bye.PID <= 0:
		return nil, fmt.Errorf("%w: %s line without a positive pid", ErrBadLine, l.T)
	case l.Ctl != nil && l.Ctl.Op != "profiler" && l.Ctl.Op != "session",
		l.Admin != nil && l.Admin.Op == "":
		return nil, fmt.Errorf("%w: %s line with unknown op %q", ErrBadLine, l.T, opOf(l))
	}
	if l.Hello != nil && !knownRole(l.Hello.Role) {
		return nil, fmt.Errorf("%w: hello with unknown role %q", ErrBadLine, l.Hello.Role)
	}
	if l.Batch != nil && l.Batch.Ident != nil && !knownRole(l.Batch.Ident.Role) {
		return nil, fmt.Errorf("%w: batch ident with unknown role %q", ErrBadLine, l.Batch.Ident.Role)
	}
	if l.Batch != nil {
		for i := range l.Batch.Events {
			if _, err := r.EventProto(&l.Batch.Events[i]); err != nil {
				return nil, fmt.Errorf("%w: batch event %d: %v", ErrBadLine, i, err)
			}
		}
	}
	return l, nil
}

// knownRole accepts the three process roles, and "" for a process that does not know its role yet.
func knownRole(r string) bool {
	return r == "" || r == RoleAPIServer || r == RoleEngineCore || r == RoleWorker
}

func opOf(l *Line) string {
	if l.Ctl != nil {
		return l.Ctl.Op
	}
	return l.Admin.Op
}

// EventProto checks one shim event against its table and converts it to a protobuf Event. A null
// column is left out (an empty cell); an int column takes only integral numbers; a float column
// takes any number.
func (r *Registry) EventProto(ev *Event) (*pmpb.Event, error) {
	if !isKind(ev.Kind) {
		return nil, fmt.Errorf("unknown kind %q", ev.Kind)
	}
	s, ok := r.byName[ev.Table]
	if !ok {
		return nil, fmt.Errorf("unknown table %q", ev.Table)
	}
	if s.Kind != ev.Kind {
		return nil, fmt.Errorf("table %s belongs to kind %s, not %s", ev.Table, s.Kind, ev.Kind)
	}
	out := &pmpb.Event{Kind: ev.Kind, Table: ev.Table, Seq: ev.Seq, Step: ev.Step, TsNs: ev.TsNS,
		Cols: make(map[string]*pmpb.Value, len(ev.Cols))}
	for name, raw := range ev.Cols {
		c, ok := s.Col(name)
		if !ok {
			return nil, fmt.Errorf("table %s has no column %q", ev.Table, name)
		}
		v, err := jsonValue(c.Type, raw)
		if err != nil {
			return nil, fmt.Errorf("table %s column %s: %w", ev.Table, name, err)
		}
		if v != nil {
			out.Cols[name] = v
		}
	}
	return out, nil
}

// jsonValue converts one JSON value to a Value of the column type; nil for JSON null.
func jsonValue(typ string, raw json.RawMessage) (*pmpb.Value, error) {
	raw = bytes.TrimSpace(raw)
	if string(raw) == "null" {
		return nil, nil
	}
	switch typ {
	case TypeInt:
		n, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil {
			// 3.0 is an integer a float-minded encoder may write; 3.5 or "3" is not.
			f, ferr := strconv.ParseFloat(string(raw), 64)
			if ferr != nil || raw[0] == '"' || f != math.Trunc(f) || math.Abs(f) > 1<<53 {
				return nil, fmt.Errorf("want int, got %.40s", raw)
			}
			n = int64(f)
		}
		return &pmpb.Value{V: &pmpb.Value_I{I: n}}, nil
	case TypeFloat:
		if len(raw) == 0 || raw[0] == '"' || raw[0] == 't' || raw[0] == 'f' || raw[0] == '{' || raw[0] == '[' {
			return nil, fmt.Errorf("want float, got %.40s", raw)
		}
		f, err := strconv.ParseFloat(string(raw), 64)
		if err != nil {
			return nil, fmt.Errorf("want float, got %.40s", raw)
		}
		return &pmpb.Value{V: &pmpb.Value_D{D: f}}, nil
	case TypeString:
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("want string, got %.40s", raw)
		}
		return &pmpb.Value{V: &pmpb.Value_S{S: s}}, nil
	case TypeBool:
		switch string(raw) {
		case "true":
			return &pmpb.Value{V: &pmpb.Value_B{B: true}}, nil
		case "false":
			return &pmpb.Value{V: &pmpb.Value_B{B: false}}, nil
		}
		return nil, fmt.Errorf("want bool, got %.40s", raw)
	}
	return nil, fmt.Errorf("unknown column type %q", typ)
}

// applyIdent copies a batch's ident over a process's ranks.
func applyIdent(p *pmpb.Process, id *Ident) *pmpb.Process {
	if id == nil {
		return p
	}
	q := cloneProcess(p)
	q.Role, q.Dp, q.Pp, q.Tp, q.Ep, q.Rank = id.Role, int32(id.DP), int32(id.PP), int32(id.TP), int32(id.EP), int32(id.Rank)
	return q
}

func cloneProcess(p *pmpb.Process) *pmpb.Process {
	if p == nil {
		return &pmpb.Process{Dp: -1, Pp: -1, Tp: -1, Ep: -1, Rank: -1}
	}
	q := &pmpb.Process{
		Session: p.Session, Host: p.Host, Pid: p.Pid, Ppid: p.Ppid, Role: p.Role,
		Dp: p.Dp, Pp: p.Pp, Tp: p.Tp, Ep: p.Ep, Rank: p.Rank, Python: p.Python, Vllm: p.Vllm,
		GpuUuid: p.GpuUuid, Title: p.Title, StartNs: p.StartNs, Argv: append([]string(nil), p.Argv...),
	}
	return q
}

// ToEventBatch converts a whole shim batch into one EventBatch for process p (usually
// Hello.Process() with session and host filled in); the batch's ident, when present, overrides
// p's role and ranks. BatchID is left empty: batches are published per kind (see BatchesByKind).
func ToEventBatch(p *pmpb.Process, b *Batch) (*pmpb.EventBatch, error) {
	return Default().ToEventBatch(p, b)
}

// ToEventBatch converts a whole shim batch; see the package function.
func (r *Registry) ToEventBatch(p *pmpb.Process, b *Batch) (*pmpb.EventBatch, error) {
	out := &pmpb.EventBatch{SchemaMajor: SchemaMajor, SchemaMinor: SchemaMinor,
		Process: applyIdent(cloneProcess(p), b.Ident), Dropped: b.Dropped}
	switch {
	case p == nil || p.Pid == 0:
		out.Process.Pid = int64(b.PID)
	case b.PID != 0 && p.Pid != int64(b.PID):
		return nil, fmt.Errorf("%w: batch of pid %d for process %d", ErrBadLine, b.PID, p.Pid)
	}
	for i := range b.Events {
		e, err := r.EventProto(&b.Events[i])
		if err != nil {
			return nil, fmt.Errorf("%w: event %d: %v", ErrBadLine, i, err)
		}
		out.Events = append(out.Events, e)
	}
	return out, nil
}

// BatchesByKind splits a converted batch into one EventBatch per kind (first-seen order), each
// with its BatchID set to MsgID of its first and last seq: one message per event subject.
func BatchesByKind(eb *pmpb.EventBatch) []*pmpb.EventBatch {
	var order []string
	by := map[string]*pmpb.EventBatch{}
	for _, e := range eb.Events {
		k := by[e.Kind]
		if k == nil {
			k = &pmpb.EventBatch{SchemaMajor: eb.SchemaMajor, SchemaMinor: eb.SchemaMinor,
				Process: eb.Process, Dropped: eb.Dropped}
			by[e.Kind] = k
			order = append(order, e.Kind)
		}
		k.Events = append(k.Events, e)
	}
	out := make([]*pmpb.EventBatch, 0, len(order))
	for _, kind := range order {
		k := by[kind]
		p := k.Process
		k.BatchId = MsgID(p.GetSession(), p.GetHost(), p.GetPid(), kind, k.Events[0].Seq, k.Events[len(k.Events)-1].Seq)
		out = append(out, k)
	}
	return out
}

// BatchSubject is the event subject a single-kind EventBatch is published on.
func BatchSubject(eb *pmpb.EventBatch) string {
	p := eb.GetProcess()
	kind := ""
	if len(eb.Events) > 0 {
		kind = eb.Events[0].Kind
	}
	return EventSubject(p.GetSession(), p.GetHost(), ProcToken(p.GetRole(), int(p.GetDp()), int(p.GetRank()), int(p.GetPid())), kind)
}
