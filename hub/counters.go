package hub

import (
	"errors"
	"log/slog"
	"sort"
	"sync"
	"time"
)

// Reasons a message is skipped, the keys of Counters.Bad.
const (
	ReasonDecode       = "decode"        // payload is not a valid message
	ReasonSubject      = "subject"       // subject does not parse
	ReasonUnknownKind  = "unknown_kind"  // kind not in the contract
	ReasonUnknownTable = "unknown_table" // table unknown or not of the batch's kind
	ReasonOversized    = "oversized"     // payload above the hub's limit
	ReasonNewerMajor   = "newer_major"   // wire major newer than this hub: dead-lettered
	ReasonWrite        = "write"         // session folder could not be written
	ReasonSession      = "session"       // session id unusable as a folder name
	ReasonBadValue     = "bad_value"     // an event's value is not of its column's type (the event alone is refused)
)

// BadInput is a decode failure with the reason it is counted under.
type BadInput struct {
	Reason string
	Err    error
}

func (e *BadInput) Error() string { return e.Reason + ": " + e.Err.Error() }
func (e *BadInput) Unwrap() error { return e.Err }

func bad(reason string, err error) error { return &BadInput{Reason: reason, Err: err} }

// reasonOf returns the counting reason of a decode error.
func reasonOf(err error) string {
	var b *BadInput
	if errors.As(err, &b) {
		return b.Reason
	}
	return ReasonDecode
}

// Counters is a snapshot of what the hub has done since it started.
type Counters struct {
	Messages     int64 `json:"messages"`       // stream messages handled
	Rows         int64 `json:"rows"`           // CSV rows written
	Duplicates   int64 `json:"duplicates"`     // events already written, skipped
	DroppedByCap int64 `json:"dropped_by_cap"` // rows beyond a session's size cap
	DeadLettered int64 `json:"dead_lettered"`  // messages kept in <data>/deadletter/
	// DeadLetterSkipped: messages for the dead-letter folder beyond its caps, counted only.
	DeadLetterSkipped int64 `json:"dead_letter_skipped"`
	// AlignedClamped: rows whose ts_aligned_ns was clamped (see Metadata.AlignedClamped).
	AlignedClamped int64 `json:"aligned_clamped"`
	// ConsumerRecreated: times the hub found its durable consumer gone and created it again.
	ConsumerRecreated int64            `json:"consumer_recreated"`
	Bad               map[string]int64 `json:"bad"`      // skipped messages, and refused events of kept ones, by reason
	Sessions          int              `json:"sessions"` // sessions open in memory
	// Shared mode (cluster.go): Owned is the sessions whose lease this hub holds, Checkpoints the
	// checkpoints it stored.
	Owned       int   `json:"owned,omitempty"`
	Checkpoints int64 `json:"checkpoints,omitempty"`
}

type counters struct {
	mu sync.Mutex
	c  Counters
	// limited logging: one line per reason per logEvery, with how many were suppressed
	lastLog    map[string]time.Time
	suppressed map[string]int64
}

const logEvery = 10 * time.Second

func newCounters() *counters {
	return &counters{c: Counters{Bad: map[string]int64{}}, lastLog: map[string]time.Time{}, suppressed: map[string]int64{}}
}

func (c *counters) bad(log *slog.Logger, reason, subject string, err error) {
	c.mu.Lock()
	c.c.Bad[reason]++
	now := time.Now()
	if now.Sub(c.lastLog[reason]) < logEvery {
		c.suppressed[reason]++
		c.mu.Unlock()
		return
	}
	n := c.suppressed[reason]
	c.suppressed[reason] = 0
	c.lastLog[reason] = now
	c.mu.Unlock()
	log.Warn("message skipped", "reason", reason, "subject", subject, "err", err, "suppressed_since_last", n)
}

func (c *counters) add(f func(*Counters)) {
	c.mu.Lock()
	f(&c.c)
	c.mu.Unlock()
}

func (c *counters) snapshot() Counters {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.c
	s.Bad = make(map[string]int64, len(c.c.Bad))
	for k, v := range c.c.Bad {
		s.Bad[k] = v
	}
	return s
}

// SessionInfo is the in-memory summary of one session, for status pages and metrics.
type SessionInfo struct {
	Session   string           `json:"session"`
	Dir       string           `json:"dir"`
	Status    string           `json:"status"`
	EndReason string           `json:"end_reason,omitempty"`
	Hosts     []string         `json:"hosts"`
	Processes int              `json:"processes"`
	Rows      map[string]int64 `json:"rows"`
	Bytes     int64            `json:"bytes"`
	// Segments is how many segment folders of the session are on disk (1 for a session that never
	// rotated; Rows and Bytes are summed over them).
	Segments int `json:"segments"`
	// Owner is the hub holding the session's lease (shared mode; empty when none does).
	Owner string `json:"owner,omitempty"`
}

func sortedKeys[M ~map[string]V, V any](m M) []string {
	k := make([]string, 0, len(m))
	for s := range m {
		k = append(k, s)
	}
	sort.Strings(k)
	return k
}
