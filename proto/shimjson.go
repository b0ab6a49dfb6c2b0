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
	// Instance is drawn once per process start (16 hex digits): with PID it names the process,
	// so a pid reused by another process never shares its stream identity. Empty from older shims.
	Instance string `json:"instance"`
	// Reconnects counts the shim's reconnects to an agent (0 on its first hello).
	Reconnects int `json:"reconnects"`
	// SessionGiven (optional): the session came from the environment the process was started with
	// (PROFILEMATE_SESSION), not from its shim; the agent keeps it over an instance's session.
	SessionGiven bool `json:"session_given,omitempty"`
	// InstanceKey (optional): the multi-node instance the process belongs to, from
	// PROFILEMATE_INSTANCE_KEY (a launcher sets it where no command-line flag names the instance,
	// e.g. Ray, which copies it through VLLM_RAY_EXTRA_ENV_VARS_TO_COPY); docs/multinode.md.
	InstanceKey string `json:"instance_key,omitempty"`
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
		Argv: append([]string(nil), h.Argv...), Instance: h.Instance,
	}
}

// Event is one row as the shim sends it. Cols is the JSON object of the table's own columns, kept
// raw until the event is checked and encoded (EncodeEvents, or EventProto for the reference path);
// absent or null means no columns.
type Event struct {
	Kind  string          `json:"kind"`
	Table string          `json:"table"`
	Seq   uint64          `json:"seq"`
	Step  int64           `json:"step"`
	TsNS  int64           `json:"ts_ns"`
	Cols  json.RawMessage `json:"cols"`
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
	Reason string `json:"reason,omitempty"`
}

// Status reports a process's patch results.
type Status struct {
	PID     int      `json:"pid"`
	Targets []Target `json:"targets"`
	// Tables says why each CSV table has rows or not in this process; empty from older shims.
	Tables []TableStatus `json:"tables"`
}

// TableStatus is one table's status in a process (the shim's metadata.json "tables"): recorded,
// no events, disabled, "unavailable: needs CUDA events", "not in this vLLM era", "not in this
// process" or "failed: <reason>".
type TableStatus struct {
	Table  string `json:"table"`
	Status string `json:"status"`
}

// Bye is a process's last line. EndState is how the process says it ends: "clean", or "killed"
// with EndSignal, the signal's name ("SIGTERM"), when a signal's default action ends it after its
// last flush; empty from older shims (read as clean).
type Bye struct {
	PID       int    `json:"pid"`
	Dropped   uint64 `json:"dropped"`
	LastSeq   uint64 `json:"last_seq"`
	EndNS     int64  `json:"end_ns"`
	EndState  string `json:"end_state,omitempty"`
	EndSignal string `json:"end_signal,omitempty"`
}

// Ctl is a line the agent sends to a shim: op "profiler" (Name, Enabled) or "session" (Session).
// T and V are the line's type and wire version; the sender sets them ("ctl", WireVersion).
type Ctl struct {
	T       string `json:"t"`
	V       int    `json:"v"`
	Op      string `json:"op"`
	Name    string `json:"name,omitempty"`
	Enabled *bool  `json:"enabled,omitempty"`
	Session string `json:"session,omitempty"`
	// Seq (op "ack"): every event of this process up to this sequence number is queued durably
	// by the agent (or refused for good); the shim may let go of its copies.
	Seq uint64 `json:"seq,omitempty"`
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
	// Rejected lists the events of a batch that DecodeLine refused, with their reasons; Batch.Events
	// then holds only the good ones. ReadLine does not check events (EncodeEvents does).
	Rejected []*EventError
}

// wireLine is the union of every line type's fields, so a line is parsed in one pass whatever its
// type; the hello's fields are embedded.
type wireLine struct {
	T *string `json:"t"`
	V *int    `json:"v"`
	Hello
	Ident   *Ident   `json:"ident"`
	Events  []Event  `json:"events"`
	Dropped uint64   `json:"dropped"`
	Targets []Target `json:"targets"`
	// status
	Tables  []TableStatus `json:"tables"`
	LastSeq uint64        `json:"last_seq"`
	EndNS   int64         `json:"end_ns"`
	// bye
	EndState  string `json:"end_state"`
	EndSignal string `json:"end_signal"`
	Op        string `json:"op"`
	Name      string `json:"name"`
	Enabled   *bool  `json:"enabled"`
}

// ReadLine decodes one JSON line and checks everything but the events of a batch: the line's type
// and wire version, a positive pid, known roles and ops, and the hello's session and host names
// (the grammar of names.go). It is the agent's fast path; the events are checked and encoded once
// by EncodeEvents. Every error wraps ErrBadLine.
func ReadLine(b []byte) (*Line, error) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		return nil, fmt.Errorf("%w: not a JSON object: %.40q", ErrBadLine, b)
	}
	w := wireLine{Hello: Hello{DP: -1, PP: -1, TP: -1, EP: -1, Rank: -1}}
	if err := json.Unmarshal(b, &w); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadLine, err)
	}
	if w.T == nil || *w.T == "" {
		return nil, fmt.Errorf("%w: no \"t\"", ErrBadLine)
	}
	if w.V == nil {
		return nil, fmt.Errorf("%w: %s line without \"v\"", ErrBadLine, *w.T)
	}
	if *w.V != WireVersion {
		return nil, fmt.Errorf("%w: %s line has wire version %d, this side speaks %d", ErrBadLine, *w.T, *w.V, WireVersion)
	}
	l := &Line{T: *w.T, V: *w.V}
	pid := w.PID
	switch l.T {
	case LineHello:
		h := w.Hello
		l.Hello = &h
	case LineBatch:
		l.Batch = &Batch{PID: pid, Ident: w.Ident, Events: w.Events, Dropped: w.Dropped}
	case LineStatus:
		l.Status = &Status{PID: pid, Targets: w.Targets, Tables: w.Tables}
	case LineBye:
		l.Bye = &Bye{PID: pid, Dropped: w.Dropped, LastSeq: w.LastSeq, EndNS: w.EndNS, EndState: w.EndState, EndSignal: w.EndSignal}
	case LineCtl:
		l.Ctl = &Ctl{T: l.T, V: l.V, Op: w.Op, Name: w.Name, Enabled: w.Enabled, Session: w.Session}
	case LineAdmin:
		l.Admin = &Admin{Op: w.Op}
	default:
		return nil, fmt.Errorf("%w: unknown line type %q", ErrBadLine, l.T)
	}
	switch {
	case l.Ctl == nil && l.Admin == nil && pid <= 0:
		return nil, fmt.Errorf("%w: %s line without a positive pid", ErrBadLine, l.T)
	case l.Ctl != nil && l.Ctl.Op != "profiler" && l.Ctl.Op != "session",
		l.Admin != nil && l.Admin.Op == "":
		return nil, fmt.Errorf("%w: %s line with unknown op %q", ErrBadLine, l.T, w.Op)
	}
	if l.Hello != nil {
		if !knownRole(l.Hello.Role) {
			return nil, fmt.Errorf("%w: hello with unknown role %q", ErrBadLine, l.Hello.Role)
		}
		if l.Hello.Session != "" {
			if err := ValidateSession(l.Hello.Session); err != nil {
				return nil, fmt.Errorf("%w: hello: %w", ErrBadLine, err)
			}
		}
		if l.Hello.Host != "" {
			if err := ValidateHost(l.Hello.Host); err != nil {
				return nil, fmt.Errorf("%w: hello: %w", ErrBadLine, err)
			}
		}
	}
	if l.Batch != nil && l.Batch.Ident != nil && !knownRole(l.Batch.Ident.Role) {
		return nil, fmt.Errorf("%w: batch ident with unknown role %q", ErrBadLine, l.Batch.Ident.Role)
	}
	return l, nil
}

// DecodeLine decodes and checks one JSON line against the embedded tables.
func DecodeLine(b []byte) (*Line, error) { return Default().DecodeLine(b) }

// DecodeLine is the reference decoder: ReadLine, then every event of a batch checked with
// EventProto (encoding/json throughout). Bad events do not fail the line: they leave
// Batch.Events and are listed in Line.Rejected with their reasons. The fast path (ReadLine +
// EncodeEvents) is fuzzed against it (FuzzShimCodec). Line errors wrap ErrBadLine.
func (r *Registry) DecodeLine(b []byte) (*Line, error) {
	l, err := ReadLine(b)
	if err != nil || l.Batch == nil {
		return l, err
	}
	good := l.Batch.Events[:0:0]
	for i := range l.Batch.Events {
		if _, err := r.EventProto(&l.Batch.Events[i]); err != nil {
			ee := err.(*EventError)
			ee.Index = i
			l.Rejected = append(l.Rejected, ee)
			continue
		}
		good = append(good, l.Batch.Events[i])
	}
	l.Batch.Events = good
	return l, nil
}

// knownRole accepts the four process roles, and "" for a process that does not know its role yet.
func knownRole(r string) bool {
	return r == "" || r == RoleAPIServer || r == RoleLauncher || r == RoleEngineCore || r == RoleWorker
}

// Reasons an event is refused (EventError.Reason): the keys the agent and the hub count them by.
const (
	ReasonUnknownKind   = "unknown_kind"   // kind not in the registry (or not one the reader accepts)
	ReasonUnknownTable  = "unknown_table"  // table unknown, or of another kind
	ReasonUnknownColumn = "unknown_column" // a column the table does not have
	ReasonBadValue      = "bad_value"      // a value that does not fit its column's type
	ReasonBadCols       = "bad_cols"       // cols is not a flat JSON object, or names a column twice
)

// EventError says why one event of a batch was refused; the batch's other events are kept.
type EventError struct {
	Index  int    // position in the batch as sent
	Seq    uint64 // the event's seq
	Kind   string
	Table  string
	Column string // the offending column, when one is
	Reason string // a Reason* constant
	Err    error
}

func (e *EventError) Error() string {
	return fmt.Sprintf("event %d (seq %d, %s/%s): %s: %v", e.Index, e.Seq, e.Kind, e.Table, e.Reason, e.Err)
}

func (e *EventError) Unwrap() error { return e.Err }

func eventErr(ev *Event, reason, column string, format string, a ...any) *EventError {
	return &EventError{Seq: ev.Seq, Kind: ev.Kind, Table: ev.Table, Column: column, Reason: reason, Err: fmt.Errorf(format, a...)}
}

// eventSchema finds an event's table and checks it belongs to the event's kind.
func (r *Registry) eventSchema(ev *Event) (*Schema, *EventError) {
	if !r.IsKind(ev.Kind) {
		return nil, eventErr(ev, ReasonUnknownKind, "", "unknown kind %q", ev.Kind)
	}
	s, ok := r.table(ev.Table)
	if !ok {
		return nil, eventErr(ev, ReasonUnknownTable, "", "unknown table %q", ev.Table)
	}
	if s.Kind != ev.Kind {
		return nil, eventErr(ev, ReasonUnknownTable, "", "table %s belongs to kind %s, not %s", ev.Table, s.Kind, ev.Kind)
	}
	return s, nil
}

// EventProto checks one shim event against its table and converts it to a protobuf Event: the
// reference conversion, built on encoding/json. Columns are read in document order; null, or ""
// in a column that is not a string, is an empty cell (left out); an int column takes only integral
// numbers (3 or 3.0, |n| ≤ 2^53 when written as a float); a float column any number. The error is
// an *EventError.
func (r *Registry) EventProto(ev *Event) (*pmpb.Event, error) {
	s, eerr := r.eventSchema(ev)
	if eerr != nil {
		return nil, eerr
	}
	out := &pmpb.Event{Kind: ev.Kind, Table: ev.Table, Seq: ev.Seq, Step: ev.Step, TsNs: ev.TsNS,
		Cols: map[string]*pmpb.Value{}}
	raw := bytes.TrimSpace(ev.Cols)
	if len(raw) == 0 || string(raw) == "null" {
		return out, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, eventErr(ev, ReasonBadCols, "", "cols is not a JSON object")
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, eventErr(ev, ReasonBadCols, "", "cols: %v", err)
		}
		name := tok.(string)
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			return nil, eventErr(ev, ReasonBadCols, name, "cols: %v", err)
		}
		c, ok := s.Col(name)
		if !ok {
			return nil, eventErr(ev, ReasonUnknownColumn, name, "table %s has no column %q", ev.Table, name)
		}
		if seen[name] {
			return nil, eventErr(ev, ReasonBadCols, name, "column %q twice", name)
		}
		seen[name] = true
		v, err := jsonValue(c.Type, val)
		if err != nil {
			return nil, eventErr(ev, ReasonBadValue, name, "table %s column %s: %w", ev.Table, name, err)
		}
		if v != nil {
			out.Cols[name] = v
		}
	}
	return out, nil
}

// jsonValue converts one JSON value to a Value of the column type with encoding/json; nil for an
// empty cell (null, or "" outside a string column).
func jsonValue(typ string, raw json.RawMessage) (*pmpb.Value, error) {
	raw = bytes.TrimSpace(raw)
	if string(raw) == "null" || (typ != TypeString && string(raw) == `""`) {
		return nil, nil
	}
	switch typ {
	case TypeInt:
		n, err := cellInt(raw)
		if err != nil {
			return nil, err
		}
		return &pmpb.Value{V: &pmpb.Value_I{I: n}}, nil
	case TypeFloat:
		f, err := cellFloat(raw)
		if err != nil {
			return nil, err
		}
		return &pmpb.Value{V: &pmpb.Value_D{D: f}}, nil
	case TypeString:
		var s string
		if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
			return nil, fmt.Errorf("want string, got %.40s", raw)
		}
		return &pmpb.Value{V: &pmpb.Value_S{S: s}}, nil
	case TypeBool:
		b, err := cellBool(raw)
		if err != nil {
			return nil, err
		}
		return &pmpb.Value{V: &pmpb.Value_B{B: b}}, nil
	}
	return nil, fmt.Errorf("unknown column type %q", typ)
}

// cellInt reads a JSON number as an int column's value: an integer, or an integral float up to
// 2^53 (3.0 is what a float-minded encoder may write; 3.5 or "3" is not an int).
func cellInt(raw []byte) (int64, error) {
	if len(raw) == 0 || !(raw[0] == '-' || raw[0] >= '0' && raw[0] <= '9') {
		return 0, fmt.Errorf("want int, got %.40s", raw)
	}
	n, err := strconv.ParseInt(string(raw), 10, 64)
	if err == nil {
		return n, nil
	}
	f, ferr := strconv.ParseFloat(string(raw), 64)
	if ferr != nil || f != math.Trunc(f) || math.Abs(f) > 1<<53 {
		return 0, fmt.Errorf("want int, got %.40s", raw)
	}
	return int64(f), nil
}

// cellFloat reads a JSON number as a float column's value; out of range (1e400) is refused.
func cellFloat(raw []byte) (float64, error) {
	if len(raw) == 0 || !(raw[0] == '-' || raw[0] >= '0' && raw[0] <= '9') {
		return 0, fmt.Errorf("want float, got %.40s", raw)
	}
	f, err := strconv.ParseFloat(string(raw), 64)
	if err != nil {
		return 0, fmt.Errorf("want float, got %.40s", raw)
	}
	return f, nil
}

func cellBool(raw []byte) (bool, error) {
	switch string(raw) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, fmt.Errorf("want bool, got %.40s", raw)
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
		k.BatchId = MsgID(p.GetSession(), p.GetHost(), p.GetPid(), p.GetInstance(), kind, k.Events[0].Seq, k.Events[len(k.Events)-1].Seq)
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
