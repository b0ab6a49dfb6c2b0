package hub

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/profilemate/profilemate/proto"
)

// Dead-letter caps: beyond either, messages are only counted (Counters.DeadLetterSkipped).
const (
	DefaultDeadLetterMaxCount = 1000     // messages kept in <data>/deadletter/
	DefaultDeadLetterMaxBytes = 64 << 20 // bytes of .bin and .json files together
)

// deadLetters tracks what <data>/deadletter/ holds, so its caps hold across restarts.
type deadLetters struct {
	mu     sync.Mutex
	dir    string
	count  int64 // messages (.bin files)
	bytes  int64 // all files
	logged bool  // the "cap reached" line was logged
}

// openDeadLetters counts what dir already holds; a missing folder is empty.
func openDeadLetters(dir string) (*deadLetters, error) {
	d := &deadLetters{dir: dir}
	ents, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("dead letters: %w", err)
	}
	for _, e := range ents {
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() {
			continue
		}
		d.bytes += info.Size()
		if strings.HasSuffix(e.Name(), ".bin") {
			d.count++
		}
	}
	return d, nil
}

// deadLetter keeps a message in <data>/deadletter/<stream seq>-<ns>.bin with a .json note
// (subject, headers, stream sequence, reason, error), so a newer hub or a person can read it
// later. Beyond DeadLetterMaxCount messages or DeadLetterMaxBytes it keeps nothing and reports
// kept=false (the caller counts it). Errors are write failures.
func (s *Server) deadLetter(m jetstream.Msg, reason string, cause error) (kept bool, err error) {
	return s.deadLetterNote(m, reason, cause, nil)
}

// ReasonRejectedEvents is a dead letter's reason when its refused events have different reasons
// (each one's own reason is in the note's "rejected" list).
const ReasonRejectedEvents = "rejected_events"

// rejectedNote is one refused event in a dead letter's note ("rejected"): its place in the
// message, seq, kind, table, the offending column, the proto.Reason* and the error text.
type rejectedNote struct {
	Index  int    `json:"index"`
	Seq    uint64 `json:"seq"`
	Kind   string `json:"kind"`
	Table  string `json:"table"`
	Column string `json:"column,omitempty"`
	Reason string `json:"reason"`
	Error  string `json:"error"`
}

// deadLetterRejected keeps a message some of whose events the contract refused, its note listing
// each refused event with its reason (the message's good events were written as usual); within
// the same caps as deadLetter. The note's reason is the refused events' reason when they share
// one, else ReasonRejectedEvents.
func (s *Server) deadLetterRejected(m jetstream.Msg, rejected []*proto.EventError) (kept bool, err error) {
	reason := rejected[0].Reason
	notes := make([]rejectedNote, 0, len(rejected))
	for _, r := range rejected {
		if r.Reason != reason {
			reason = ReasonRejectedEvents
		}
		msg := ""
		if r.Err != nil {
			msg = r.Err.Error()
		}
		notes = append(notes, rejectedNote{Index: r.Index, Seq: r.Seq, Kind: r.Kind, Table: r.Table, Column: r.Column, Reason: r.Reason, Error: msg})
	}
	return s.deadLetterNote(m, reason, fmt.Errorf("%d events refused, first: %w", len(rejected), rejected[0]), notes)
}

func (s *Server) deadLetterNote(m jetstream.Msg, reason string, cause error, rejected []rejectedNote) (kept bool, err error) {
	d := s.dead
	var seq uint64
	if md, err := m.Metadata(); err == nil {
		seq = md.Sequence.Stream
	}
	fields := map[string]any{
		"subject": m.Subject(), "headers": m.Headers(), "stream_seq": seq,
		"reason": reason, "error": cause.Error(), "received_ns": s.cfg.Now().UnixNano(),
	}
	if rejected != nil {
		fields["rejected"] = rejected
	}
	note, _ := json.MarshalIndent(fields, "", "  ")
	note = append(note, '\n')
	size := int64(len(m.Data()) + len(note))
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.count+1 > s.cfg.DeadLetterMaxCount || d.bytes+size > s.cfg.DeadLetterMaxBytes {
		if !d.logged {
			d.logged = true
			s.log.Warn("dead-letter folder full; further dead letters are only counted",
				"dir", d.dir, "messages", d.count, "bytes", d.bytes,
				"max_messages", s.cfg.DeadLetterMaxCount, "max_bytes", s.cfg.DeadLetterMaxBytes)
		}
		return false, nil
	}
	if err := os.MkdirAll(d.dir, 0o750); err != nil {
		return false, fmt.Errorf("dead letter: %w", err)
	}
	base := filepath.Join(d.dir, fmt.Sprintf("%d-%d", seq, s.cfg.Now().UnixNano()))
	if err := writeFileAtomic(base+".bin", m.Data()); err != nil {
		return false, fmt.Errorf("dead letter: %w", err)
	}
	if err := writeFileAtomic(base+".json", note); err != nil {
		_ = os.Remove(base + ".bin")
		return false, fmt.Errorf("dead letter: %w", err)
	}
	d.count++
	d.bytes += size
	return true, nil
}
