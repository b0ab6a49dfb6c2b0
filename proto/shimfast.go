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
	Ident   Ident
	Dropped uint64
	BatchID string
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

// Process fields: session 1, host 2, pid 3, role 5, dp 6, pp 7, tp 8, ep 9, rank 10 (int32 as
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
	return appendInt(b, 10, int64(int32(h.Ident.Rank)))
}

func processSize(h *BatchHead) int {
	return sizeString(1, h.Session) + sizeString(2, h.Host) + sizeInt(3, h.PID) + sizeString(5, h.Ident.Role) +
		sizeInt(6, int64(int32(h.Ident.DP))) + sizeInt(7, int64(int32(h.Ident.PP))) + sizeInt(8, int64(int32(h.Ident.TP))) +
		sizeInt(9, int64(int32(h.Ident.EP))) + sizeInt(10, int64(int32(h.Ident.Rank)))
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
