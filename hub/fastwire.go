package hub

import (
	"math"
	"strconv"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/profilemate/profilemate/proto"
)

// The generic protobuf decoder spends most of the hub's time building each event's
// map<string, Value>. fastBatch reads the EventBatch wire format directly into the hub's Batch for
// the canonical encoding the agent produces; anything unusual (unexpected wire types, repeated
// sub-messages, invalid UTF-8) makes it give up, and the generic decoder decides. FuzzDecode
// checks that both agree on every input the fast path accepts.

type rawEvent struct {
	kind, table []byte
	seq         uint64
	step, ts    int64
	keys, vals  [][]byte // map entries as they came: raw key, raw Value message
}

// fastBatch decodes eb's body; ok is false when the generic decoder must take over.
func (w *wireSchema) fastBatch(data []byte, f proto.SubjectFields) (b *Batch, major uint32, ok bool) {
	b = &Batch{Proc: f.Proc, Kind: f.Kind, Events: make([]Event, 0, 16)}
	sawProcess := false
	var ev rawEvent   // reused for every event of the batch
	var pool []string // the batch's column cells, allocated in chunks rather than per event
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return nil, 0, false
		}
		data = data[n:]
		switch {
		case num == 1 && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(data)
			if n < 0 {
				return nil, 0, false
			}
			major, data = uint32(v), data[n:]
		case num == 2 && typ == protowire.VarintType, num == 5 && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(data)
			if n < 0 {
				return nil, 0, false
			}
			if num == 5 {
				b.Dropped = v
			}
			data = data[n:]
		case num == 3 && typ == protowire.BytesType && !sawProcess:
			v, n := protowire.ConsumeBytes(data)
			if n < 0 || !fastProcess(v, b) {
				return nil, 0, false
			}
			sawProcess, data = true, data[n:]
		case num == 4 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(data)
			if n < 0 {
				return nil, 0, false
			}
			ev.keys, ev.vals, ev.kind, ev.table = ev.keys[:0], ev.vals[:0], nil, nil
			if !fastEvent(v, &ev) {
				return nil, 0, false
			}
			// Anything the generic path would reject is left to it, so errors are decided in one place.
			table, known := w.names[string(ev.table)]
			if !known || (len(ev.kind) > 0 && string(ev.kind) != f.Kind) || !contains(w.reg.KindTables(f.Kind), table) {
				return nil, 0, false
			}
			own, types := w.own[table], w.types[table]
			if len(pool) < len(own) {
				pool = make([]string, 64*len(own))
			}
			e := Event{Table: table, Seq: ev.seq, Step: ev.step, TsNS: ev.ts, Cols: pool[:len(own):len(own)]}
			pool = pool[len(own):]
			for i, c := range own {
				for k := len(ev.keys) - 1; k >= 0; k-- { // the last entry of a key wins, as in protobuf maps
					if string(ev.keys[k]) == c {
						val, ok := fastValue(ev.vals[k], types[i])
						if !ok {
							return nil, 0, false
						}
						e.Cols[i] = val
						break
					}
				}
			}
			// Values of columns this hub does not know must still be well-formed for the
			// generic path to accept the message.
			for k := range ev.keys {
				if _, ok := fastValue(ev.vals[k], ""); !ok {
					return nil, 0, false
				}
			}
			b.Events = append(b.Events, e)
			data = data[n:]
		case num == 6 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(data)
			if n < 0 || !utf8.Valid(v) {
				return nil, 0, false
			}
			data = data[n:]
		default:
			return nil, 0, false
		}
	}
	return b, major, true
}

func fastString(data []byte) (string, int, bool) {
	v, n := protowire.ConsumeBytes(data)
	if n < 0 || !utf8.Valid(v) {
		return "", 0, false
	}
	return string(v), n, true
}

func fastProcess(data []byte, b *Batch) bool {
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return false
		}
		data = data[n:]
		switch {
		case typ == protowire.BytesType && (num == 1 || num == 2 || num == 5 || (num >= 11 && num <= 14) || num == 16):
			s, n, ok := fastString(data)
			if !ok {
				return false
			}
			switch num {
			case 1:
				b.Session = s
			case 2:
				b.Host = s
			case 5:
				b.Ident.Role = s
			}
			data = data[n:]
		case typ == protowire.VarintType && (num == 3 || num == 4 || (num >= 6 && num <= 10) || num == 15):
			v, n := protowire.ConsumeVarint(data)
			if n < 0 {
				return false
			}
			switch num {
			case 3:
				b.PID = int64(v)
			case 6:
				b.Ident.DP = int64(int32(v))
			case 7:
				b.Ident.PP = int64(int32(v))
			case 8:
				b.Ident.TP = int64(int32(v))
			case 9:
				b.Ident.EP = int64(int32(v))
			case 10:
				b.Ident.Rank = int64(int32(v))
			}
			data = data[n:]
		default:
			return false
		}
	}
	return true
}

func fastEvent(data []byte, ev *rawEvent) bool {
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return false
		}
		data = data[n:]
		switch {
		case (num == 1 || num == 2) && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(data)
			if n < 0 || !utf8.Valid(v) {
				return false
			}
			if num == 1 {
				ev.kind = v
			} else {
				ev.table = v
			}
			data = data[n:]
		case num >= 3 && num <= 5 && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(data)
			if n < 0 {
				return false
			}
			switch num {
			case 3:
				ev.seq = v
			case 4:
				ev.step = int64(v)
			case 5:
				ev.ts = int64(v)
			}
			data = data[n:]
		case num == 6 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(data)
			if n < 0 {
				return false
			}
			k, val, ok := fastEntry(v)
			if !ok {
				return false
			}
			ev.keys = append(ev.keys, k)
			ev.vals = append(ev.vals, val)
			data = data[n:]
		default:
			return false
		}
	}
	return true
}

// fastEntry splits one map entry into its key (1) and its Value message (2).
func fastEntry(data []byte) (key, val []byte, ok bool) {
	key, val = []byte{}, []byte{}
	sawVal := false
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return nil, nil, false
		}
		data = data[n:]
		switch {
		case num == 1 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(data)
			if n < 0 || !utf8.Valid(v) {
				return nil, nil, false
			}
			key, data = v, data[n:]
		case num == 2 && typ == protowire.BytesType && !sawVal:
			v, n := protowire.ConsumeBytes(data)
			if n < 0 {
				return nil, nil, false
			}
			sawVal, val, data = true, v, data[n:]
		default:
			return nil, nil, false
		}
	}
	return key, val, true
}

// fastValue spells one Value message as a CSV cell; ok is false for anything the generic path must
// judge, including a value whose case is not the one typ (the column's type; "" for any) writes.
func fastValue(data []byte, typ string) (string, bool) {
	out := ""
	for len(data) > 0 {
		num, wt, n := protowire.ConsumeTag(data)
		if n < 0 {
			return "", false
		}
		data = data[n:]
		switch {
		case num == 1 && wt == protowire.VarintType && (typ == "" || typ == proto.TypeInt):
			v, n := protowire.ConsumeVarint(data)
			if n < 0 {
				return "", false
			}
			out, data = strconv.FormatInt(int64(v), 10), data[n:]
		case num == 2 && wt == protowire.Fixed64Type && (typ == "" || typ == proto.TypeFloat):
			v, n := protowire.ConsumeFixed64(data)
			if n < 0 {
				return "", false
			}
			out, data = proto.FormatFloat(math.Float64frombits(v)), data[n:]
		case num == 3 && wt == protowire.BytesType && (typ == "" || typ == proto.TypeString):
			s, n, ok := fastString(data)
			if !ok {
				return "", false
			}
			out, data = s, data[n:]
		case num == 4 && wt == protowire.VarintType && (typ == "" || typ == proto.TypeBool):
			v, n := protowire.ConsumeVarint(data)
			if n < 0 {
				return "", false
			}
			out, data = strconv.FormatBool(v != 0), data[n:]
		default:
			return "", false
		}
	}
	return out, true
}
