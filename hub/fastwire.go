package hub

import (
	"math"
	"strconv"
	"unicode/utf8"
	"unsafe"

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
	col         []int    // per entry: the index of the table's own column its key names, or -1
	win         []int    // per own column: the entry that fills it (the last of its key), or -1
}

// fastBatch decodes eb's body; ok is false when the generic decoder must take over. Every cell of
// the batch is spelled straight from the wire bytes into one buffer and the events' Cols are
// slices of one string made from it: two allocations per batch for the cells, not one per cell.
func (w *wireSchema) fastBatch(data []byte, f proto.SubjectFields) (b *Batch, major uint32, ok bool) {
	events := countEvents(data)
	b = &Batch{Proc: f.Proc, Kind: f.Kind, Events: make([]Event, 0, events)}
	sawProcess := false
	var ev rawEvent   // reused for every event of the batch
	var pool []string // the batch's column cells, allocated in chunks rather than per event
	// Every cell's text, back to back, in the order of the events' Cols (a cell's text is about
	// as long as its wire form), and where each cell ends.
	cells := make([]byte, 0, len(data))
	var ends []uint32
	var kindTables []string
	lastTable := ""         // the last table found to belong to the batch's kind
	var own, types []string // lastTable's own columns and their types
	for len(data) > 0 {
		// A one-byte tag (every field here) is read inline; anything else by protowire.
		num, typ, n := protowire.Number(data[0]>>3), protowire.Type(data[0]&7), 1
		if data[0] >= 0x80 || num == 0 {
			num, typ, n = protowire.ConsumeTag(data)
		}
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
			if !known || (len(ev.kind) > 0 && string(ev.kind) != f.Kind) {
				return nil, 0, false
			}
			if table != lastTable {
				if kindTables == nil {
					kindTables = w.reg.KindTables(f.Kind)
				}
				if !contains(kindTables, table) {
					return nil, 0, false
				}
				lastTable, own, types = table, w.own[table], w.types[table]
			}
			// Which of the table's columns each map entry names (-1: none), and which entry
			// fills each column: the last entry of a key wins, as in protobuf maps.
			ev.col, ev.win = ev.col[:0], ev.win[:0]
			for range own {
				ev.win = append(ev.win, -1)
			}
			for k, key := range ev.keys {
				c := -1
				for i, name := range own {
					if string(key) == name {
						c = i
						break
					}
				}
				ev.col = append(ev.col, c)
				if c >= 0 {
					ev.win[c] = k
				}
			}
			// Entries that are not spelled must still be well-formed for the generic path to
			// accept the message: a key that names no column must be valid UTF-8 (a column's
			// name is), and every value one the fast path reads. A spelled value is checked
			// while it is spelled (appendValue accepts less than fastValueOK).
			for k, c := range ev.col {
				if c >= 0 && ev.win[c] == k {
					continue
				}
				if (c < 0 && !utf8.Valid(ev.keys[k])) || !fastValueOK(ev.vals[k]) {
					return nil, 0, false
				}
			}
			if len(pool) < len(own) {
				pool = make([]string, max(events-len(b.Events), 1)*len(own))
			}
			if ends == nil {
				ends = make([]uint32, 0, events*len(own))
			}
			e := Event{Table: table, Seq: ev.seq, Step: ev.step, TsNS: ev.ts, Cols: pool[:len(own):len(own)]}
			pool = pool[len(own):]
			for i, k := range ev.win {
				if k >= 0 {
					var ok bool
					if cells, ok = appendValue(cells, ev.vals[k], types[i]); !ok {
						return nil, 0, false
					}
				}
				ends = append(ends, uint32(len(cells)))
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
	// The rows' cells share one string over the batch's buffer, which nothing writes again.
	all, k, start := "", 0, uint32(0)
	if len(cells) > 0 {
		all = unsafe.String(&cells[0], len(cells))
	}
	for i := range b.Events {
		cols := b.Events[i].Cols
		for j := range cols {
			cols[j] = all[start:ends[k]]
			start = ends[k]
			k++
		}
	}
	return b, major, true
}

// countEvents counts an EventBatch's events (field 4) without decoding them, to size the
// batch's slices once; a malformed message counts what precedes the damage.
func countEvents(data []byte) int {
	n := 0
	for len(data) > 0 {
		// An event (field 4, length-delimited: tag byte 0x22) is skipped by its length alone.
		if data[0] == 0x22 {
			l, k := protowire.ConsumeVarint(data[1:])
			if k < 0 || uint64(len(data)-1-k) < l {
				break
			}
			data = data[1+k+int(l):]
			n++
			continue
		}
		num, typ, k := protowire.ConsumeTag(data)
		if k < 0 {
			break
		}
		data = data[k:]
		if k = protowire.ConsumeFieldValue(num, typ, data); k < 0 {
			break
		}
		data = data[k:]
		if num == 4 {
			n++
		}
	}
	return n
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
		// A one-byte tag (every field here) is read inline; anything else by protowire.
		num, typ, n := protowire.Number(data[0]>>3), protowire.Type(data[0]&7), 1
		if data[0] >= 0x80 || num == 0 {
			num, typ, n = protowire.ConsumeTag(data)
		}
		if n < 0 {
			return false
		}
		data = data[n:]
		switch {
		case typ == protowire.BytesType && (num == 1 || num == 2 || num == 5 || (num >= 11 && num <= 14) || num == 16 || num == 17):
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
			case 17:
				b.Instance = s
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
		// A one-byte tag (every field here) is read inline; anything else by protowire.
		num, typ, n := protowire.Number(data[0]>>3), protowire.Type(data[0]&7), 1
		if data[0] >= 0x80 || num == 0 {
			num, typ, n = protowire.ConsumeTag(data)
		}
		if n < 0 {
			return false
		}
		data = data[n:]
		switch {
		case (num == 1 || num == 2) && typ == protowire.BytesType:
			// No UTF-8 check: the fast path accepts only a kind equal to the subject's
			// (a registered kind) and a table the contract names, both valid.
			v, n := protowire.ConsumeBytes(data)
			if n < 0 {
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
		// A one-byte tag (every field here) is read inline; anything else by protowire.
		num, typ, n := protowire.Number(data[0]>>3), protowire.Type(data[0]&7), 1
		if data[0] >= 0x80 || num == 0 {
			num, typ, n = protowire.ConsumeTag(data)
		}
		if n < 0 {
			return nil, nil, false
		}
		data = data[n:]
		switch {
		case num == 1 && typ == protowire.BytesType:
			// The key's UTF-8 is checked by the caller, only for keys that name no column.
			v, n := protowire.ConsumeBytes(data)
			if n < 0 {
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

// appendValue appends one Value message spelled as a CSV cell to dst; ok is false for anything
// the generic path must judge, including a value whose case is not the one typ (the column's
// type) writes. An empty Value appends nothing (an empty cell); of several cases the last wins,
// as protobuf decodes a oneof.
func appendValue(dst, data []byte, typ string) ([]byte, bool) {
	start := len(dst)
	for len(data) > 0 {
		// A one-byte tag (every field here) is read inline; anything else by protowire.
		num, wt, n := protowire.Number(data[0]>>3), protowire.Type(data[0]&7), 1
		if data[0] >= 0x80 || num == 0 {
			num, wt, n = protowire.ConsumeTag(data)
		}
		if n < 0 {
			return dst, false
		}
		data = data[n:]
		dst = dst[:start]
		switch {
		case num == 1 && wt == protowire.VarintType && typ == proto.TypeInt:
			v, n := protowire.ConsumeVarint(data)
			if n < 0 {
				return dst, false
			}
			dst, data = strconv.AppendInt(dst, int64(v), 10), data[n:]
		case num == 2 && wt == protowire.Fixed64Type && typ == proto.TypeFloat:
			v, n := protowire.ConsumeFixed64(data)
			if n < 0 {
				return dst, false
			}
			dst, data = proto.AppendFloat(dst, math.Float64frombits(v)), data[n:]
		case num == 3 && wt == protowire.BytesType && typ == proto.TypeString:
			v, n := protowire.ConsumeBytes(data)
			if n < 0 || !utf8.Valid(v) {
				return dst, false
			}
			dst, data = append(dst, v...), data[n:]
		case num == 4 && wt == protowire.VarintType && typ == proto.TypeBool:
			v, n := protowire.ConsumeVarint(data)
			if n < 0 {
				return dst, false
			}
			dst, data = strconv.AppendBool(dst, v != 0), data[n:]
		default:
			return dst, false
		}
	}
	return dst, true
}

// fastValueOK reports whether a Value message is one the fast path reads (any case, well-formed),
// without spelling it.
func fastValueOK(data []byte) bool {
	for len(data) > 0 {
		// A one-byte tag (every field here) is read inline; anything else by protowire.
		num, wt, n := protowire.Number(data[0]>>3), protowire.Type(data[0]&7), 1
		if data[0] >= 0x80 || num == 0 {
			num, wt, n = protowire.ConsumeTag(data)
		}
		if n < 0 {
			return false
		}
		data = data[n:]
		switch {
		case (num == 1 || num == 4) && wt == protowire.VarintType:
			n = protowire.ConsumeFieldValue(num, wt, data)
		case num == 2 && wt == protowire.Fixed64Type:
			n = protowire.ConsumeFieldValue(num, wt, data)
		case num == 3 && wt == protowire.BytesType:
			var v []byte
			if v, n = protowire.ConsumeBytes(data); n >= 0 && !utf8.Valid(v) {
				return false
			}
		default:
			return false
		}
		if n < 0 {
			return false
		}
		data = data[n:]
	}
	return true
}
