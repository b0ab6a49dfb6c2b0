package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/proto/pmpb"
)

// Schema version written into every message (profilemate.proto's header).
const (
	schemaMajor = 1
	schemaMinor = 0
)

func defaultEncoder() Encoder { return PBEncoder{} }

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
		cols, err := parseCols(e.Cols)
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
		m.Record = &pmpb.Lifecycle_Bye_{Bye: &pmpb.Lifecycle_Bye{Dropped: l.Dropped, LastSeq: l.LastSeq, EndNs: l.EndNS, Clean: l.Clean}}
	case "end":
		m.Record = &pmpb.Lifecycle_End{End: &pmpb.Lifecycle_SessionEnd{EndNs: l.EndNS, ShimDropped: l.Dropped,
			AgentDropped: uint64(l.AgentDropped), Reason: l.Reason}}
	default:
		return nil, fmt.Errorf("unknown lifecycle record %q", l.Type)
	}
	return proto.Marshal(m)
}

var errCols = errors.New("cols must be a flat JSON object")

// parseCols reads a flat JSON object of scalars without building a map[string]any first.
// null values are left out (an empty cell).
func parseCols(b []byte) (map[string]*pmpb.Value, error) {
	out := map[string]*pmpb.Value{}
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return nil, errCols
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return out, nil
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return nil, errCols
		}
		key, n, err := parseString(b, i)
		if err != nil {
			return nil, err
		}
		i = skipWS(b, n)
		if i >= len(b) || b[i] != ':' {
			return nil, errCols
		}
		i = skipWS(b, i+1)
		if i >= len(b) {
			return nil, errCols
		}
		var v *pmpb.Value
		switch c := b[i]; {
		case c == '"':
			s, n, err := parseString(b, i)
			if err != nil {
				return nil, err
			}
			v, i = &pmpb.Value{V: &pmpb.Value_S{S: s}}, n
		case c == 't' && hasPrefix(b[i:], "true"):
			v, i = &pmpb.Value{V: &pmpb.Value_B{B: true}}, i+4
		case c == 'f' && hasPrefix(b[i:], "false"):
			v, i = &pmpb.Value{V: &pmpb.Value_B{B: false}}, i+5
		case c == 'n' && hasPrefix(b[i:], "null"):
			i += 4
		case c == '-' || c >= '0' && c <= '9':
			j, float := i, false
			for j < len(b) && (b[j] == '-' || b[j] == '+' || b[j] == '.' || b[j] == 'e' || b[j] == 'E' || b[j] >= '0' && b[j] <= '9') {
				float = float || b[j] == '.' || b[j] == 'e' || b[j] == 'E'
				j++
			}
			num := string(b[i:j])
			if !float {
				if n, err := strconv.ParseInt(num, 10, 64); err == nil {
					v = &pmpb.Value{V: &pmpb.Value_I{I: n}}
				} else {
					float = true
				}
			}
			if float {
				f, err := strconv.ParseFloat(num, 64)
				if err != nil {
					return nil, fmt.Errorf("column %q: %w", key, err)
				}
				v = &pmpb.Value{V: &pmpb.Value_D{D: f}}
			}
			i = j
		default:
			return nil, fmt.Errorf("column %q: %w", key, errCols)
		}
		if v != nil {
			out[key] = v
		}
		i = skipWS(b, i)
		if i >= len(b) {
			return nil, errCols
		}
		if b[i] == '}' {
			return out, nil
		}
		if b[i] != ',' {
			return nil, errCols
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
