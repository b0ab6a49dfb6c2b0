package agent

import (
	"fmt"
	"math"
	"strconv"
	"sync"

	"google.golang.org/protobuf/encoding/protowire"

	pmproto "github.com/profilemate/profilemate/proto"
)

// WireEncoder writes the same EventBatch bytes as PBEncoder straight from the shim's JSON, without
// building protobuf structs (no per-event maps and Values: the agent's hot path). Field numbers
// follow proto/profilemate/v1/profilemate.proto; a test checks both encoders agree.
type WireEncoder struct{ PBEncoder }

var _ Encoder = WireEncoder{}

var scratchPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// EncodeBatch encodes an EventBatch.
func (WireEncoder) EncodeBatch(h *BatchHead, events []Event) ([]byte, error) {
	out := make([]byte, 0, 256+len(events)*160)
	out = protowire.AppendTag(out, 1, protowire.VarintType)
	out = protowire.AppendVarint(out, schemaMajor)
	if schemaMinor != 0 {
		out = protowire.AppendTag(out, 2, protowire.VarintType)
		out = protowire.AppendVarint(out, schemaMinor)
	}
	sp := scratchPool.Get().(*[]byte)
	defer scratchPool.Put(sp)
	proc := appendProcess((*sp)[:0], h)
	out = protowire.AppendTag(out, 3, protowire.BytesType)
	out = protowire.AppendBytes(out, proc)
	ev := proc[len(proc):]
	for i := range events {
		var err error
		ev, err = appendEvent(ev[:0], &events[i])
		if err != nil {
			*sp = ev[:0]
			return nil, fmt.Errorf("event seq %d (%s): %w", events[i].Seq, events[i].Table, err)
		}
		out = protowire.AppendTag(out, 4, protowire.BytesType)
		out = protowire.AppendBytes(out, ev)
	}
	*sp = ev[:0]
	if h.Dropped != 0 {
		out = protowire.AppendTag(out, 5, protowire.VarintType)
		out = protowire.AppendVarint(out, h.Dropped)
	}
	if len(events) > 0 {
		out = appendString(out, 6, eventMsgID(h.Session, h.Host, h.PID, h.Kind, events[0].Seq, events[len(events)-1].Seq))
	}
	return out, nil
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

func appendProcess(b []byte, h *BatchHead) []byte {
	b = appendString(b, 1, h.Session)
	b = appendString(b, 2, h.Host)
	b = appendInt(b, 3, int64(h.PID))
	b = appendString(b, 5, h.Ident.Role)
	b = appendInt(b, 6, int64(int32(h.Ident.DP)))
	b = appendInt(b, 7, int64(int32(h.Ident.PP)))
	b = appendInt(b, 8, int64(int32(h.Ident.TP)))
	b = appendInt(b, 9, int64(int32(h.Ident.EP)))
	b = appendInt(b, 10, int64(int32(h.Ident.Rank)))
	return b
}

func appendEvent(b []byte, e *Event) ([]byte, error) {
	if !pmproto.IsKind(e.Kind) {
		return b, fmt.Errorf("unknown kind %q", e.Kind)
	}
	sch, ok := pmproto.Table(e.Table)
	if !ok {
		return b, fmt.Errorf("unknown table %q", e.Table)
	}
	if sch.Kind != e.Kind {
		return b, fmt.Errorf("table %s belongs to kind %s, not %s", e.Table, sch.Kind, e.Kind)
	}
	b = appendString(b, 1, e.Kind)
	b = appendString(b, 2, e.Table)
	b = appendInt(b, 3, int64(e.Seq))
	b = appendInt(b, 4, e.Step)
	b = appendInt(b, 5, e.TsNS)
	var val [32]byte
	err := scanCols(e.Cols, func(key string, raw []byte) error {
		c, ok := sch.Col(key)
		if !ok {
			return fmt.Errorf("table %s has no column %q", e.Table, key)
		}
		v, isNull, err := appendTypedValue(val[:0], c.Type, raw)
		if err != nil {
			return fmt.Errorf("table %s column %s: %w", e.Table, key, err)
		}
		if isNull {
			return nil
		}
		// A map entry: key = 1, value = 2 (a Value message).
		n := protowire.SizeTag(1) + protowire.SizeBytes(len(key)) + protowire.SizeTag(2) + protowire.SizeBytes(len(v))
		b = protowire.AppendTag(b, 6, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(n))
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, key)
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendBytes(b, v)
		return nil
	})
	return b, err
}

// appendTypedValue appends a Value message converting raw as typedValue does.
func appendTypedValue(b []byte, typ string, raw []byte) ([]byte, bool, error) {
	if string(raw) == "null" || (typ != pmproto.TypeString && string(raw) == `""`) {
		return b, true, nil
	}
	switch typ {
	case pmproto.TypeInt:
		n, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil {
			f, ferr := strconv.ParseFloat(string(raw), 64)
			if ferr != nil || raw[0] == '"' || f != math.Trunc(f) || math.Abs(f) > 1<<53 {
				return b, false, fmt.Errorf("want int, got %.40s", raw)
			}
			n = int64(f)
		}
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		return protowire.AppendVarint(b, uint64(n)), false, nil
	case pmproto.TypeFloat:
		if raw[0] == '"' || raw[0] == 't' || raw[0] == 'f' {
			return b, false, fmt.Errorf("want float, got %.40s", raw)
		}
		f, err := strconv.ParseFloat(string(raw), 64)
		if err != nil {
			return b, false, fmt.Errorf("want float, got %.40s", raw)
		}
		b = protowire.AppendTag(b, 2, protowire.Fixed64Type)
		return protowire.AppendFixed64(b, math.Float64bits(f)), false, nil
	case pmproto.TypeString, pmproto.TypeBool:
		v, err := typedValue(typ, raw)
		if err != nil {
			return b, false, err
		}
		if typ == pmproto.TypeString {
			b = protowire.AppendTag(b, 3, protowire.BytesType)
			return protowire.AppendString(b, v.GetS()), false, nil
		}
		b = protowire.AppendTag(b, 4, protowire.VarintType)
		return protowire.AppendVarint(b, protowire.EncodeBool(v.GetB())), false, nil
	}
	return b, false, fmt.Errorf("unknown column type %q", typ)
}
