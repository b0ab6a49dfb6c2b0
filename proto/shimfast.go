package proto

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// The agent's fast path from shim JSON to the stream's protobuf: each event's columns are scanned
// straight from the line's bytes and appended as an Event message with protowire, without
// per-event maps and Values. It gives the same verdicts and the same messages as the reference
// path (DecodeLine → EventProto → proto.Marshal); FuzzShimCodec checks both on any input, and
// docs/BENCHMARKS.md has the numbers that justify keeping two.

// EncodedEvent is one checked event in its protobuf encoding (an Event message).
type EncodedEvent struct {
	Index int    // position in the batch as sent
	Kind  string // the event's kind, table and seq, for grouping and message ids
	Table string
	Seq   uint64
	Data  []byte // the Event message
}

// EncodeEvents checks every event against its table and encodes the good ones; one bad event
// never costs the others. good keeps the batch's order; bad gives each refused event's reason.
func EncodeEvents(events []Event) (good []EncodedEvent, bad []*EventError) {
	return Default().EncodeEvents(events)
}

// EncodeEvents checks and encodes events against r; see the package function.
func (r *Registry) EncodeEvents(events []Event) (good []EncodedEvent, bad []*EventError) {
	size := 0
	for i := range events {
		size += len(events[i].Cols) + len(events[i].Kind) + len(events[i].Table) + 40
	}
	buf := make([]byte, 0, size)
	ends := make([]int, 0, len(events))
	good = make([]EncodedEvent, 0, len(events))
	for i := range events {
		n := len(buf)
		var err *EventError
		buf, err = r.appendEvent(buf, &events[i])
		if err != nil {
			err.Index = i
			bad = append(bad, err)
			buf = buf[:n]
			continue
		}
		e := &events[i]
		good = append(good, EncodedEvent{Index: i, Kind: e.Kind, Table: e.Table, Seq: e.Seq})
		ends = append(ends, len(buf))
	}
	start := 0
	for i := range good {
		good[i].Data = buf[start:ends[i]:ends[i]]
		start = ends[i]
	}
	return good, bad
}

// BatchHead is what an EventBatch message says about its process: session, host, pid, role and
// ranks (-1 unknown), the process's cumulative drops, and the batch id (its Nats-Msg-Id).
type BatchHead struct {
	Session string
	Host    string
	PID     int64
	// Instance is the shim's per-start id (16 hex digits; empty from older shims).
	Instance string
	Ident    Ident
	Dropped  uint64
	BatchID  string
}

// AppendEventBatch appends an EventBatch of the current schema version holding events (Event
// messages from EncodeEvents, of one kind) to dst. The result equals proto.Marshal of the same
// message field by field (FuzzShimCodec decodes both and compares).
func AppendEventBatch(dst []byte, h *BatchHead, events []EncodedEvent) []byte {
	dst = protowire.AppendTag(dst, 1, protowire.VarintType)
	dst = protowire.AppendVarint(dst, SchemaMajor)
	if SchemaMinor != 0 {
		dst = protowire.AppendTag(dst, 2, protowire.VarintType)
		dst = protowire.AppendVarint(dst, SchemaMinor)
	}
	dst = protowire.AppendTag(dst, 3, protowire.BytesType)
	dst = protowire.AppendVarint(dst, uint64(processSize(h)))
	dst = appendProcess(dst, h)
	for i := range events {
		dst = protowire.AppendTag(dst, 4, protowire.BytesType)
		dst = protowire.AppendBytes(dst, events[i].Data)
	}
	if h.Dropped != 0 {
		dst = protowire.AppendTag(dst, 5, protowire.VarintType)
		dst = protowire.AppendVarint(dst, h.Dropped)
	}
	return appendString(dst, 6, h.BatchID)
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendInt(b []byte, num protowire.Number, v int64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(v))
}

func sizeString(num protowire.Number, s string) int {
	if s == "" {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(len(s))
}

func sizeInt(num protowire.Number, v int64) int {
	if v == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeVarint(uint64(v))
}

// Process fields: session 1, host 2, pid 3, role 5, dp 6, pp 7, tp 8, ep 9, rank 10, instance 17
// (int32 as
// protobuf writes them: sign-extended to 64 bits).
func appendProcess(b []byte, h *BatchHead) []byte {
	b = appendString(b, 1, h.Session)
	b = appendString(b, 2, h.Host)
	b = appendInt(b, 3, h.PID)
	b = appendString(b, 5, h.Ident.Role)
	b = appendInt(b, 6, int64(int32(h.Ident.DP)))
	b = appendInt(b, 7, int64(int32(h.Ident.PP)))
	b = appendInt(b, 8, int64(int32(h.Ident.TP)))
	b = appendInt(b, 9, int64(int32(h.Ident.EP)))
	b = appendInt(b, 10, int64(int32(h.Ident.Rank)))
	return appendString(b, 17, h.Instance)
}

func processSize(h *BatchHead) int {
	return sizeString(1, h.Session) + sizeString(2, h.Host) + sizeInt(3, h.PID) + sizeString(5, h.Ident.Role) +
		sizeInt(6, int64(int32(h.Ident.DP))) + sizeInt(7, int64(int32(h.Ident.PP))) + sizeInt(8, int64(int32(h.Ident.TP))) +
		sizeInt(9, int64(int32(h.Ident.EP))) + sizeInt(10, int64(int32(h.Ident.Rank))) + sizeString(17, h.Instance)
}

// appendEvent appends one Event message (kind 1, table 2, seq 3, step 4, ts_ns 5, cols 6) checking
// the event as EventProto does; on error dst is returned unchanged in length.
func (r *Registry) appendEvent(b []byte, e *Event) ([]byte, *EventError) {
	sch, eerr := r.eventSchema(e)
	if eerr != nil {
		return b, eerr
	}
	n := len(b)
	b = appendString(b, 1, e.Kind)
	b = appendString(b, 2, e.Table)
	b = appendInt(b, 3, int64(e.Seq))
	b = appendInt(b, 4, e.Step)
	b = appendInt(b, 5, e.TsNS)
	var val [32]byte
	var seen colSet
	err := scanCols(e.Cols, func(key, raw []byte) *EventError {
		i, ok := sch.index[string(key)] // no copy: the compiler looks the bytes up as they are
		if !ok {
			return eventErr(e, ReasonUnknownColumn, string(key), "table %s has no column %q", e.Table, key)
		}
		if seen.has(i) {
			return eventErr(e, ReasonBadCols, string(key), "column %q twice", key)
		}
		seen.add(i)
		v, isNull, err := appendCell(val[:0], sch.Columns[i].Type, raw)
		if err != nil {
			return eventErr(e, ReasonBadValue, string(key), "table %s column %s: %w", e.Table, key, err)
		}
		if isNull {
			return nil
		}
		// A map entry: key = 1, value = 2 (a Value message).
		size := protowire.SizeTag(1) + protowire.SizeBytes(len(key)) + protowire.SizeTag(2) + protowire.SizeBytes(len(v))
		b = protowire.AppendTag(b, 6, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(size))
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendBytes(b, key)
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendBytes(b, v)
		return nil
	})
	if err != nil {
		if err.Reason == "" { // the scanner's own error: not a flat object
			err = eventErr(e, ReasonBadCols, err.Column, "%v", err.Err)
		}
		return b[:n], err
	}
	return b, nil
}

// colSet remembers which of a table's columns an event named (tables have few columns).
type colSet struct {
	lo   uint64
	more map[int]bool
}

func (s *colSet) has(i int) bool {
	if i < 64 {
		return s.lo&(1<<uint(i)) != 0
	}
	return s.more[i]
}

func (s *colSet) add(i int) {
	if i < 64 {
		s.lo |= 1 << uint(i)
		return
	}
	if s.more == nil {
		s.more = map[int]bool{}
	}
	s.more[i] = true
}

// appendCell appends a Value message (i 1, d 2, s 3, b 4) for one JSON value of a column type;
// isNull reports an empty cell (null, or "" outside a string column), for which nothing is written.
func appendCell(b []byte, typ string, raw []byte) (out []byte, isNull bool, err error) {
	if string(raw) == "null" || (typ != TypeString && string(raw) == `""`) {
		return b, true, nil
	}
	switch typ {
	case TypeInt:
		n, err := cellInt(raw)
		if err != nil {
			return b, false, err
		}
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		return protowire.AppendVarint(b, uint64(n)), false, nil
	case TypeFloat:
		f, err := cellFloat(raw)
		if err != nil {
			return b, false, err
		}
		b = protowire.AppendTag(b, 2, protowire.Fixed64Type)
		return protowire.AppendFixed64(b, math.Float64bits(f)), false, nil
	case TypeString:
		if len(raw) == 0 || raw[0] != '"' {
			return b, false, fmt.Errorf("want string, got %.40s", raw)
		}
		s, _, err := parseString(raw, 0)
		if err != nil {
			return b, false, fmt.Errorf("want string, got %.40s", raw)
		}
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		return protowire.AppendString(b, s), false, nil
	case TypeBool:
		v, err := cellBool(raw)
		if err != nil {
			return b, false, err
		}
		b = protowire.AppendTag(b, 4, protowire.VarintType)
		return protowire.AppendVarint(b, protowire.EncodeBool(v)), false, nil
	}
	return b, false, fmt.Errorf("unknown column type %q", typ)
}

var errNotFlat = errors.New("cols is not a flat JSON object")

// scanCols walks the cols object and calls f with each key and raw value in document order,
// without building a map. The line was already validated as JSON by ReadLine, so the scanner only
// needs to find token boundaries; an object or array value is passed on whole (f refuses it). Absent
// or null cols have no columns. Errors without a Reason are the scanner's own (not a flat object).
func scanCols(b []byte, f func(key, raw []byte) *EventError) *EventError {
	i := skipWS(b, 0)
	if i >= len(b) || hasPrefix(b[i:], "null") && skipWS(b, i+4) == len(b) {
		return nil
	}
	if b[i] != '{' {
		return &EventError{Err: errNotFlat}
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return nil
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return &EventError{Err: errNotFlat}
		}
		key, n, err := parseBytes(b, i)
		if err != nil {
			return &EventError{Err: err}
		}
		i = skipWS(b, n)
		if i >= len(b) || b[i] != ':' {
			return &EventError{Err: errNotFlat}
		}
		i = skipWS(b, i+1)
		if i >= len(b) {
			return &EventError{Err: errNotFlat}
		}
		start := i
		switch c := b[i]; {
		case c == '"':
			_, n, err := parseBytes(b, i)
			if err != nil {
				return &EventError{Err: err}
			}
			i = n
		case c == '{' || c == '[':
			n, ok := skipNested(b, i)
			if !ok {
				return &EventError{Err: errNotFlat}
			}
			i = n
		case c == 't' && hasPrefix(b[i:], "true"):
			i += 4
		case c == 'f' && hasPrefix(b[i:], "false"):
			i += 5
		case c == 'n' && hasPrefix(b[i:], "null"):
			i += 4
		case c == '-' || c >= '0' && c <= '9':
			for i < len(b) && (b[i] == '-' || b[i] == '+' || b[i] == '.' || b[i] == 'e' || b[i] == 'E' || b[i] >= '0' && b[i] <= '9') {
				i++
			}
		default:
			return &EventError{Column: string(key), Err: errNotFlat}
		}
		if err := f(key, b[start:i]); err != nil {
			return err
		}
		i = skipWS(b, i)
		if i >= len(b) {
			return &EventError{Err: errNotFlat}
		}
		if b[i] == '}' {
			if skipWS(b, i+1) != len(b) {
				return &EventError{Err: errNotFlat}
			}
			return nil
		}
		if b[i] != ',' {
			return &EventError{Err: errNotFlat}
		}
		i = skipWS(b, i+1)
	}
}

// skipNested returns the index after the object or array starting at b[i], minding strings.
func skipNested(b []byte, i int) (int, bool) {
	depth := 0
	for ; i < len(b); i++ {
		switch b[i] {
		case '"':
			_, n, err := parseBytes(b, i)
			if err != nil {
				return 0, false
			}
			i = n - 1
		case '{', '[':
			depth++
		case '}', ']':
			depth--
			if depth == 0 {
				return i + 1, true
			}
		}
	}
	return 0, false
}

func hasPrefix(b []byte, s string) bool { return len(b) >= len(s) && string(b[:len(s)]) == s }

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// parseString reads the JSON string starting at b[i] ('"') and returns it and the index after it.
func parseString(b []byte, i int) (string, int, error) {
	v, n, err := parseBytes(b, i)
	return string(v), n, err
}

// parseBytes reads the JSON string starting at b[i] ('"') and returns its value and the index after
// it. Plain ASCII is returned as a slice of b, without copying; escapes and other bytes go through
// encoding/json, so the value is the same valid UTF-8 the reference decoder gives (invalid bytes
// become U+FFFD).
func parseBytes(b []byte, i int) ([]byte, int, error) {
	plain := true
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '\\':
			plain = false
			j++
		case c == '"':
			if plain {
				return b[i+1 : j], j + 1, nil
			}
			var s string
			if err := json.Unmarshal(b[i:j+1], &s); err != nil {
				return nil, 0, err
			}
			return []byte(s), j + 1, nil
		case c >= utf8.RuneSelf || c < 0x20:
			plain = false
		}
	}
	return nil, 0, errNotFlat
}

// LineReader decodes shim lines as ReadLine does, reusing its memory for batch lines, the bulk of
// the traffic: a batch line written the way the shim writes it (exact lower-case keys, each once;
// integers without fraction or exponent; plain ASCII names; cols a flat object of plain values) is
// scanned in one pass without allocating — events' Cols are slices of the line, kind and table
// names are shared strings. Any other line (other types, escapes, unusual numbers, unknown keys)
// goes to ReadLine, so the verdict and the decoded values are always ReadLine's; FuzzLineReader
// checks both on any input. Not safe for concurrent use: one per connection.
type LineReader struct {
	line   Line
	batch  Batch
	ident  Ident
	events []Event
	names  map[string]string // interned kind and table names
}

// maxInterned bounds the names a LineReader keeps; beyond it names are allocated per event.
const maxInterned = 256

// Read decodes one line. The returned Line, and for a batch its events (whose Cols point into b),
// are valid until the next Read and while b is unchanged. Errors wrap ErrBadLine.
func (r *LineReader) Read(b []byte) (*Line, error) {
	if l, ok := r.scanBatch(b); ok {
		return l, nil
	}
	return ReadLine(b)
}

// Keys of a batch line and of its parts, as bits for the each-key-once check.
const (
	keyT = 1 << iota
	keyV
	keyPID
	keyIdent
	keyEvents
	keyDropped
)

// scanBatch is Read's fast path; ok is false when ReadLine must decide.
func (r *LineReader) scanBatch(b []byte) (*Line, bool) {
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return nil, false
	}
	r.events = r.events[:0]
	r.batch = Batch{}
	var seen, v int
	var pid uint64
	i++
	for {
		i = skipWS(b, i)
		key, n, ok := plainString(b, i)
		if !ok {
			return nil, false
		}
		i = skipWS(b, n)
		if i >= len(b) || b[i] != ':' {
			return nil, false
		}
		i = skipWS(b, i+1)
		var bit int
		switch string(key) {
		case "t":
			bit = keyT
			var t []byte
			if t, i, ok = plainString(b, i); !ok || string(t) != LineBatch {
				return nil, false
			}
		case "v":
			bit = keyV
			var u uint64
			if u, i, ok = scanUint(b, i); !ok || u != WireVersion {
				return nil, false
			}
			v = int(u)
		case "pid":
			bit = keyPID
			if pid, i, ok = scanUint(b, i); !ok || pid == 0 || pid > math.MaxInt32 {
				return nil, false
			}
		case "dropped":
			bit = keyDropped
			if r.batch.Dropped, i, ok = scanUint(b, i); !ok {
				return nil, false
			}
		case "ident":
			bit = keyIdent
			if i, ok = r.scanIdent(b, i); !ok {
				return nil, false
			}
		case "events":
			bit = keyEvents
			if i, ok = r.scanEvents(b, i); !ok {
				return nil, false
			}
		default:
			return nil, false
		}
		if seen&bit != 0 {
			return nil, false
		}
		seen |= bit
		i = skipWS(b, i)
		if i >= len(b) {
			return nil, false
		}
		if b[i] == '}' {
			break
		}
		if b[i] != ',' {
			return nil, false
		}
		i++
	}
	if skipWS(b, i+1) != len(b) || seen&(keyT|keyV|keyPID) != keyT|keyV|keyPID {
		return nil, false
	}
	r.batch.PID = int(pid)
	r.batch.Events = r.events
	if seen&keyIdent != 0 {
		r.batch.Ident = &r.ident
	}
	r.line = Line{T: LineBatch, V: v, Batch: &r.batch}
	return &r.line, true
}

// scanIdent reads the ident object (each key at most once, ints, a known role) into r.ident.
func (r *LineReader) scanIdent(b []byte, i int) (int, bool) {
	if i >= len(b) || b[i] != '{' {
		return 0, false
	}
	r.ident = Ident{}
	seen := 0
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1, true
	}
	for {
		key, n, ok := plainString(b, i)
		if !ok {
			return 0, false
		}
		i = skipWS(b, n)
		if i >= len(b) || b[i] != ':' {
			return 0, false
		}
		i = skipWS(b, i+1)
		var bit int
		var dst *int
		switch string(key) {
		case "role":
			bit = 1
			var role []byte
			if role, i, ok = plainString(b, i); !ok {
				return 0, false
			}
			switch string(role) {
			case "":
				r.ident.Role = ""
			case RoleWorker:
				r.ident.Role = RoleWorker
			case RoleEngineCore:
				r.ident.Role = RoleEngineCore
			case RoleAPIServer:
				r.ident.Role = RoleAPIServer
			case RoleLauncher:
				r.ident.Role = RoleLauncher
			default:
				return 0, false
			}
		case "dp":
			bit, dst = 2, &r.ident.DP
		case "pp":
			bit, dst = 4, &r.ident.PP
		case "tp":
			bit, dst = 8, &r.ident.TP
		case "ep":
			bit, dst = 16, &r.ident.EP
		case "rank":
			bit, dst = 32, &r.ident.Rank
		default:
			return 0, false
		}
		if dst != nil {
			var n int64
			if n, i, ok = scanInt(b, i); !ok || n < math.MinInt32 || n > math.MaxInt32 {
				return 0, false
			}
			*dst = int(n)
		}
		if seen&bit != 0 {
			return 0, false
		}
		seen |= bit
		i = skipWS(b, i)
		if i >= len(b) {
			return 0, false
		}
		if b[i] == '}' {
			return i + 1, true
		}
		if b[i] != ',' {
			return 0, false
		}
		i = skipWS(b, i+1)
	}
}

// scanEvents reads the events array into r.events.
func (r *LineReader) scanEvents(b []byte, i int) (int, bool) {
	if i >= len(b) || b[i] != '[' {
		return 0, false
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == ']' {
		return i + 1, true
	}
	for {
		r.events = append(r.events, Event{})
		var ok bool
		if i, ok = r.scanEvent(b, i, &r.events[len(r.events)-1]); !ok {
			return 0, false
		}
		i = skipWS(b, i)
		if i >= len(b) {
			return 0, false
		}
		if b[i] == ']' {
			return i + 1, true
		}
		if b[i] != ',' {
			return 0, false
		}
		i = skipWS(b, i+1)
	}
}

// scanEvent reads one event object into e.
func (r *LineReader) scanEvent(b []byte, i int, e *Event) (int, bool) {
	if i >= len(b) || b[i] != '{' {
		return 0, false
	}
	seen := 0
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1, true
	}
	for {
		key, n, ok := plainString(b, i)
		if !ok {
			return 0, false
		}
		i = skipWS(b, n)
		if i >= len(b) || b[i] != ':' {
			return 0, false
		}
		i = skipWS(b, i+1)
		var bit int
		switch string(key) {
		case "kind", "table":
			bit = 1
			if key[0] == 't' {
				bit = 2
			}
			var name []byte
			if name, i, ok = plainString(b, i); !ok {
				return 0, false
			}
			if bit == 1 {
				e.Kind = r.intern(name)
			} else {
				e.Table = r.intern(name)
			}
		case "seq":
			bit = 4
			if e.Seq, i, ok = scanUint(b, i); !ok {
				return 0, false
			}
		case "step":
			bit = 8
			if e.Step, i, ok = scanInt(b, i); !ok {
				return 0, false
			}
		case "ts_ns":
			bit = 16
			if e.TsNS, i, ok = scanInt(b, i); !ok {
				return 0, false
			}
		case "cols":
			bit = 32
			start := i
			if i, ok = scanFlatCols(b, i); !ok {
				return 0, false
			}
			e.Cols = b[start:i:i]
		default:
			return 0, false
		}
		if seen&bit != 0 {
			return 0, false
		}
		seen |= bit
		i = skipWS(b, i)
		if i >= len(b) {
			return 0, false
		}
		if b[i] == '}' {
			return i + 1, true
		}
		if b[i] != ',' {
			return 0, false
		}
		i = skipWS(b, i+1)
	}
}

// intern returns name as a string shared by every event that names it.
func (r *LineReader) intern(name []byte) string {
	if s, ok := r.names[string(name)]; ok {
		return s
	}
	s := string(name)
	if r.names == nil {
		r.names = map[string]string{}
	}
	if len(r.names) < maxInterned {
		r.names[s] = s
	}
	return s
}

// scanFlatCols checks the cols value at b[i]: null or an object whose values are plain strings,
// JSON numbers, true, false or null; it returns the index after it.
func scanFlatCols(b []byte, i int) (int, bool) {
	if hasPrefix(b[i:], "null") {
		return i + 4, true
	}
	if i >= len(b) || b[i] != '{' {
		return 0, false
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1, true
	}
	for {
		_, n, ok := plainString(b, i)
		if !ok {
			return 0, false
		}
		i = skipWS(b, n)
		if i >= len(b) || b[i] != ':' {
			return 0, false
		}
		i = skipWS(b, i+1)
		if i >= len(b) {
			return 0, false
		}
		switch c := b[i]; {
		case c == '"':
			if _, i, ok = plainString(b, i); !ok {
				return 0, false
			}
		case c == 't' && hasPrefix(b[i:], "true"):
			i += 4
		case c == 'f' && hasPrefix(b[i:], "false"):
			i += 5
		case c == 'n' && hasPrefix(b[i:], "null"):
			i += 4
		default:
			if i, ok = scanNumber(b, i); !ok {
				return 0, false
			}
		}
		i = skipWS(b, i)
		if i >= len(b) {
			return 0, false
		}
		if b[i] == '}' {
			return i + 1, true
		}
		if b[i] != ',' {
			return 0, false
		}
		i = skipWS(b, i+1)
	}
}

// plainString reads the string at b[i] when it holds only printable ASCII without escapes and
// returns its bytes (a slice of b) and the index after it.
func plainString(b []byte, i int) ([]byte, int, bool) {
	if i >= len(b) || b[i] != '"' {
		return nil, 0, false
	}
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return b[i+1 : j], j + 1, true
		case c == '\\' || c < 0x20 || c >= utf8.RuneSelf:
			return nil, 0, false
		}
	}
	return nil, 0, false
}

// scanUint reads a JSON integer without sign, fraction or exponent that fits in a uint64.
func scanUint(b []byte, i int) (uint64, int, bool) {
	start := i
	var n uint64
	for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		d := uint64(b[i] - '0')
		if n > (math.MaxUint64-d)/10 {
			return 0, 0, false
		}
		n = n*10 + d
	}
	if i == start || (b[start] == '0' && i > start+1) || i < len(b) && (b[i] == '.' || b[i] == 'e' || b[i] == 'E') {
		return 0, 0, false
	}
	return n, i, true
}

// scanInt reads a JSON integer without fraction or exponent that fits in an int64.
func scanInt(b []byte, i int) (int64, int, bool) {
	neg := i < len(b) && b[i] == '-'
	if neg {
		i++
	}
	u, i, ok := scanUint(b, i)
	switch {
	case !ok:
		return 0, 0, false
	case neg && u <= 1<<63:
		return -int64(u), i, true
	case !neg && u <= math.MaxInt64:
		return int64(u), i, true
	}
	return 0, 0, false
}

// scanNumber checks the JSON number grammar at b[i] and returns the index after the number.
func scanNumber(b []byte, i int) (int, bool) {
	if i < len(b) && b[i] == '-' {
		i++
	}
	digits := func() bool {
		start := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		return i > start
	}
	if i < len(b) && b[i] == '0' {
		i++
	} else if !digits() {
		return 0, false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if !digits() {
			return 0, false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if !digits() {
			return 0, false
		}
	}
	return i, true
}
