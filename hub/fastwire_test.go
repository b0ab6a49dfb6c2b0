package hub

import (
	"math"
	"reflect"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/profilemate/profilemate/proto"
)

// wireEntry is one map entry of an event's columns: its key and its Value message, both raw.
type wireEntry struct{ key, val []byte }

func floatValue(f float64) []byte {
	return protowire.AppendFixed64(protowire.AppendTag(nil, 2, protowire.Fixed64Type), math.Float64bits(f))
}

func stringValue(s string) []byte {
	return protowire.AppendBytes(protowire.AppendTag(nil, 3, protowire.BytesType), []byte(s))
}

func intValue(v int64) []byte {
	return protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), uint64(v))
}

// rawKVBatch spells an EventBatch of one kv_cache_usage event byte by byte, so that a test can put
// in what a protobuf library would refuse to marshal (invalid UTF-8, repeated map keys).
func rawKVBatch(t *testing.T, kind string, entries ...wireEntry) []byte {
	var ev []byte
	if kind != "" {
		ev = protowire.AppendBytes(protowire.AppendTag(ev, 1, protowire.BytesType), []byte(kind))
	}
	ev = protowire.AppendBytes(protowire.AppendTag(ev, 2, protowire.BytesType), []byte("kv_cache_usage"))
	ev = protowire.AppendVarint(protowire.AppendTag(ev, 3, protowire.VarintType), 1)
	ev = protowire.AppendVarint(protowire.AppendTag(ev, 5, protowire.VarintType), 1_700_000_000_000_000_000)
	for _, e := range entries {
		var m []byte
		m = protowire.AppendBytes(protowire.AppendTag(m, 1, protowire.BytesType), e.key)
		m = protowire.AppendBytes(protowire.AppendTag(m, 2, protowire.BytesType), e.val)
		ev = protowire.AppendBytes(protowire.AppendTag(ev, 6, protowire.BytesType), m)
	}
	b := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), uint64(proto.SchemaMajor))
	b = protowire.AppendBytes(protowire.AppendTag(b, 3, protowire.BytesType), mustMarshal(t, wireProcess("S1", "h", 7, 0)))
	return protowire.AppendBytes(protowire.AppendTag(b, 4, protowire.BytesType), ev)
}

// TestFastBatchEntries: the fast reader checks a map entry only as far as it must (a key that
// names a column is valid UTF-8 by being that name; the value that fills a column is checked
// while it is spelled) and still gives up on exactly what the generic decoder refuses: an invalid
// key that names no column, a malformed value overwritten by a later entry of the same key, a
// kind that is not the subject's. Whatever it accepts equals the generic decoder's batch.
func TestFastBatchEntries(t *testing.T) {
	ws, err := newWireSchema()
	if err != nil {
		t.Fatal(err)
	}
	subj := proto.EventSubject("S1", "h", "w0", proto.KindKVCache)
	sf, err := proto.ParseEventSubject(subj)
	if err != nil {
		t.Fatal(err)
	}
	usage := []byte("usage")
	cases := []struct {
		name    string
		data    []byte
		fast    bool // the fast reader takes it
		invalid bool // the decoder refuses the message
	}{
		{"one column", rawKVBatch(t, "", wireEntry{usage, floatValue(0.5)}), true, false},
		{"kind given", rawKVBatch(t, proto.KindKVCache, wireEntry{usage, floatValue(0.5)}), true, false},
		{"unknown column, valid", rawKVBatch(t, "", wireEntry{[]byte("later_col"), intValue(3)}, wireEntry{usage, floatValue(0.5)}), true, false},
		{"last entry wins", rawKVBatch(t, "", wireEntry{usage, intValue(3)}, wireEntry{usage, floatValue(0.25)}), true, false},
		{"unknown key, invalid UTF-8", rawKVBatch(t, "", wireEntry{[]byte("a\xffb"), intValue(3)}, wireEntry{usage, floatValue(0.5)}), false, true},
		{"overwritten value, invalid UTF-8", rawKVBatch(t, "", wireEntry{usage, stringValue("\xff")}, wireEntry{usage, floatValue(0.5)}), false, true},
		{"kind, invalid UTF-8", rawKVBatch(t, "kv\xff", wireEntry{usage, floatValue(0.5)}), false, true},
		{"wrong case for the column", rawKVBatch(t, "", wireEntry{usage, stringValue("x")}), false, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fb, _, ok := ws.fastBatch(c.data, sf)
			if ok != c.fast {
				t.Fatalf("fast reader took it: %v, want %v", ok, c.fast)
			}
			gb, gerr := ws.genericBatch(c.data, sf)
			if ok {
				if gerr != nil || !reflect.DeepEqual(fb, gb) {
					t.Fatalf("fast %+v\ngeneric %+v, %v", fb, gb, gerr)
				}
			}
			v, err := ws.Decode(subj, c.data)
			refused := err != nil || (v != nil && len(v.(*Batch).Rejected) > 0)
			if refused != c.invalid {
				t.Fatalf("refused: %v (%v), want %v", refused, err, c.invalid)
			}
		})
	}
}
