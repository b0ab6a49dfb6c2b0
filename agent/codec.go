package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"google.golang.org/protobuf/proto"

	pmproto "github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

// Schema version written into every message (profilemate.proto's header).
const (
	schemaMajor = pmproto.SchemaMajor
	schemaMinor = pmproto.SchemaMinor
)

func defaultEncoder() Encoder { return WireEncoder{} }

// PBEncoder writes the stream's protobuf messages (proto/profilemate/v1).
type PBEncoder struct{}

var _ Encoder = PBEncoder{}

func pbProcess(session, host string, pid int, id Ident, h *Hello) *pmpb.Process {
	p := &pmpb.Process{Session: session, Host: host, Pid: int64(pid), Role: id.Role,
		Dp: int32(id.DP), Pp: int32(id.PP), Tp: int32(id.TP), Ep: int32(id.EP), Rank: int32(id.Rank)}
	if h != nil {
		p.Ppid, p.Python, p.Vllm, p.GpuUuid, p.Title, p.StartNs, p.Argv = int64(h.PPID), h.Python, h.VLLM, h.GPUUUID, h.Title, h.StartNS, h.Argv
	}
	return p
}

// EncodeBatch encodes an EventBatch; column values keep their JSON type (integer, number, string, bool).
func (PBEncoder) EncodeBatch(h *BatchHead, events []Event) ([]byte, error) {
	b := &pmpb.EventBatch{
		SchemaMajor: schemaMajor, SchemaMinor: schemaMinor,
		Process: pbProcess(h.Session, h.Host, h.PID, h.Ident, nil),
		Dropped: h.Dropped,
		Events:  make([]*pmpb.Event, len(events)),
	}
	if len(events) > 0 {
		b.BatchId = eventMsgID(h.Session, h.Host, h.PID, h.Kind, events[0].Seq, events[len(events)-1].Seq)
	}
	for i := range events {
		e := &events[i]
		cols, err := eventCols(e)
		if err != nil {
			return nil, fmt.Errorf("event seq %d (%s): %w", e.Seq, e.Table, err)
		}
		b.Events[i] = &pmpb.Event{Kind: e.Kind, Table: e.Table, Seq: e.Seq, Step: e.Step, TsNs: e.TsNS, Cols: cols}
	}
	return proto.Marshal(b)
}

// EncodeLife encodes a Lifecycle record.
func (PBEncoder) EncodeLife(l *Life) ([]byte, error) {
	m := &pmpb.Lifecycle{SchemaMajor: schemaMajor, SchemaMinor: schemaMinor,
		Process: pbProcess(l.Session, l.Host, l.PID, l.Ident, l.Hello), TsNs: time.Now().UnixNano()}
	switch l.Type {
	case "start":
		m.Record = &pmpb.Lifecycle_Start{Start: &pmpb.Lifecycle_SessionStart{AgentVersion: l.AgentVersion, StartNs: l.EndNS}}
	case "hello":
		m.Record = &pmpb.Lifecycle_Hello_{Hello: &pmpb.Lifecycle_Hello{}}
	case "status":
		st := &pmpb.Lifecycle_Status{}
		for _, t := range l.Targets {
			st.Targets = append(st.Targets, &pmpb.TargetStatus{Target: t.Target, Status: t.Status, Reason: t.Reason})
		}
		m.Record = &pmpb.Lifecycle_Status_{Status: st}
	case "bye":
		m.Record = &pmpb.Lifecycle_Bye_{Bye: &pmpb.Lifecycle_Bye{Dropped: l.Dropped, LastSeq: l.LastSeq, EndNs: l.EndNS, Clean: l.Clean,
			EndState: l.EndState, EndSignal: l.EndSignal}}
	case "end":
		m.Record = &pmpb.Lifecycle_End{End: &pmpb.Lifecycle_SessionEnd{EndNs: l.EndNS, ShimDropped: l.Dropped,
			AgentDropped: uint64(l.AgentDropped), Reason: l.Reason}}
	default:
		return nil, fmt.Errorf("unknown lifecycle record %q", l.Type)
	}
	return proto.Marshal(m)
}

var errCols = errors.New("cols must be a flat JSON object")

// eventCols converts an event's cols to Values of its table's column types (proto/tables): an
// unknown kind, table or column, or a value of the wrong type, rejects the event.
func eventCols(e *Event) (map[string]*pmpb.Value, error) {
	if !pmproto.IsKind(e.Kind) {
		return nil, fmt.Errorf("unknown kind %q", e.Kind)
	}
	sch, ok := pmproto.Table(e.Table)
	if !ok {
		return nil, fmt.Errorf("unknown table %q", e.Table)
	}
	if sch.Kind != e.Kind {
		return nil, fmt.Errorf("table %s belongs to kind %s, not %s", e.Table, sch.Kind, e.Kind)
	}
	out := make(map[string]*pmpb.Value, len(sch.Columns))
	err := scanCols(e.Cols, func(key string, raw []byte) error {
		c, ok := sch.Col(key)
		if !ok {
			return fmt.Errorf("table %s has no column %q", e.Table, key)
		}
		v, err := typedValue(c.Type, raw)
		if err != nil {
			return fmt.Errorf("table %s column %s: %w", e.Table, key, err)
		}
		if v != nil {
			out[key] = v
		}
		return nil
	})
	return out, err
}

// typedValue converts one JSON scalar to the column type, as proto's shim JSON conversion does:
// an int column takes an integral float (3.0), a float column takes integers; null is an empty cell.
func typedValue(typ string, raw []byte) (*pmpb.Value, error) {
	// "" in a non-string column is an empty CSV cell, as null is: keep the row.
	if string(raw) == "null" || (typ != pmproto.TypeString && string(raw) == `""`) {
		return nil, nil
	}
	switch typ {
	case pmproto.TypeInt:
		n, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil {
			f, ferr := strconv.ParseFloat(string(raw), 64)
			if ferr != nil || raw[0] == '"' || f != math.Trunc(f) || math.Abs(f) > 1<<53 {
				return nil, fmt.Errorf("want int, got %.40s", raw)
			}
			n = int64(f)
		}
		return &pmpb.Value{V: &pmpb.Value_I{I: n}}, nil
	case pmproto.TypeFloat:
		if raw[0] == '"' || raw[0] == 't' || raw[0] == 'f' {
			return nil, fmt.Errorf("want float, got %.40s", raw)
		}
		f, err := strconv.ParseFloat(string(raw), 64)
		if err != nil {
			return nil, fmt.Errorf("want float, got %.40s", raw)
		}
		return &pmpb.Value{V: &pmpb.Value_D{D: f}}, nil
	case pmproto.TypeString:
		if raw[0] != '"' {
			return nil, fmt.Errorf("want string, got %.40s", raw)
		}
		s, _, err := parseString(raw, 0)
		if err != nil {
			return nil, fmt.Errorf("want string, got %.40s", raw)
		}
		return &pmpb.Value{V: &pmpb.Value_S{S: s}}, nil
	case pmproto.TypeBool:
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

// scanCols walks a flat JSON object of scalars and calls f with each key and raw value, without
// building a map[string]any first.
func scanCols(b []byte, f func(key string, raw []byte) error) error {
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return errCols
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return nil
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return errCols
		}
		key, n, err := parseString(b, i)
		if err != nil {
			return err
		}
		i = skipWS(b, n)
		if i >= len(b) || b[i] != ':' {
			return errCols
		}
		i = skipWS(b, i+1)
		if i >= len(b) {
			return errCols
		}
		start := i
		switch c := b[i]; {
		case c == '"':
			_, n, err := parseString(b, i)
			if err != nil {
				return err
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
			return fmt.Errorf("column %q: %w", key, errCols)
		}
		if err := f(key, b[start:i]); err != nil {
			return err
		}
		i = skipWS(b, i)
		if i >= len(b) {
			return errCols
		}
		if b[i] == '}' {
			return nil
		}
		if b[i] != ',' {
			return errCols
		}
		i = skipWS(b, i+1)
	}
}

func hasPrefix(b []byte, s string) bool { return len(b) >= len(s) && string(b[:len(s)]) == s }

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// parseString reads the JSON string starting at b[i] ('"'); it returns the string and the index after it.
func parseString(b []byte, i int) (string, int, error) {
	esc := false
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			esc = true
			j++
		case '"':
			if !esc {
				return string(b[i+1 : j]), j + 1, nil
			}
			var s string
			if err := json.Unmarshal(b[i:j+1], &s); err != nil {
				return "", 0, err
			}
			return s, j + 1, nil
		}
	}
	return "", 0, errCols
}
