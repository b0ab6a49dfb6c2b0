package hub

import (
	"errors"
	"testing"
)

// FuzzDecode feeds arbitrary subjects and payloads to the wire decoder: it must never panic, and
// whatever it accepts must be something the writer can take as it is.
// Seeds: testdata/fuzz/FuzzDecode (bad inputs kept from earlier runs) plus valid messages.
func FuzzDecode(f *testing.F) {
	ws, err := newWireSchema()
	if err != nil {
		f.Skip(err)
	}
	for _, s := range fuzzSeeds(f) {
		f.Add(s.subject, s.data)
	}
	f.Fuzz(func(t *testing.T, subject string, data []byte) {
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
