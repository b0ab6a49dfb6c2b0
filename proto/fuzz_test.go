package proto

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzDecodeLine: any input either decodes into a batch that converts and writes rows, or is
// rejected with ErrBadLine; nothing panics.
func FuzzDecodeLine(f *testing.F) {
	files, _ := filepath.Glob("testdata/batches/*.json")
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"t":"hello","v":1,"pid":3}`))
	f.Add([]byte(`{"t":"ctl","v":1,"op":"profiler","name":"x","enabled":true}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := DecodeLine(b)
		if err != nil {
			if !errors.Is(err, ErrBadLine) {
				t.Fatalf("error without ErrBadLine: %v", err)
			}
			return
		}
		if l.Batch == nil {
			return
		}
		eb, err := ToEventBatch(nil, l.Batch)
		if err != nil {
			t.Fatalf("decoded batch does not convert: %v", err)
		}
		for _, part := range BatchesByKind(eb) {
			for _, e := range part.Events {
				if _, err := Row(part.Process, e); err != nil {
					t.Fatalf("decoded event gives no row: %v", err)
				}
			}
		}
	})
}
