package hub

import (
	"errors"
	"reflect"
	"testing"

	"github.com/profilemate/profilemate/proto"
)

// FuzzDecode feeds arbitrary subjects and payloads to the wire decoder: it must never panic, and
// whatever it accepts must be something the writer can take as it is.
// Seeds: testdata/fuzz/FuzzDecode (bad inputs kept from earlier runs) plus valid messages.
func FuzzDecode(f *testing.F) {
	ws, err := newWireSchema()
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range fuzzSeeds(f) {
		f.Add(s.subject, s.data)
	}
	f.Fuzz(func(t *testing.T, subject string, data []byte) {
		// Differential: whatever the fast event-batch reader accepts, the generic one reads alike.
		if sf, err := proto.ParseEventSubject(subject); err == nil && proto.IsKind(sf.Kind) {
			if fb, major, ok := ws.fastBatch(data, sf); ok && major == proto.SchemaMajor {
				gb, err := ws.genericBatch(data, sf)
				if err != nil {
					t.Fatalf("fast path accepted what the generic one rejects: %v", err)
				}
				if !reflect.DeepEqual(fb, gb) {
					t.Fatalf("fast %+v\ngeneric %+v", fb, gb)
				}
			}
		}
		v, err := ws.Decode(subject, data)
		if err != nil {
			var b *BadInput
			if !errors.As(err, &b) && !errors.Is(err, ErrNewerMajor) {
				t.Fatalf("error %v is neither BadInput nor ErrNewerMajor", err)
			}
			return
		}
		switch v := v.(type) {
		case *Batch:
			if !sessionRE.MatchString(v.Session) && v.Session != "" {
				return // the server rejects it by session id, counted separately
			}
			for _, e := range v.Events {
				h, ok := ws.Header(e.Table)
				if !ok {
					t.Fatalf("accepted unknown table %q", e.Table)
				}
				if len(e.Cols) != len(h)-len(commonColumns) {
					t.Fatalf("table %s: %d columns, header has %d own", e.Table, len(e.Cols), len(h)-len(commonColumns))
				}
			}
		case *Life, *Heartbeat:
		default:
			t.Fatalf("decoded to %T", v)
		}
	})
}
