package hub

import (
	"io/fs"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
)

// TestSessionFilesNotWorldReadable: session folders are 0750 and their files 0640 (the argv in
// metadata.json may hold secrets); before, they were 0755 and 0644.
func TestSessionFilesNotWorldReadable(t *testing.T) {
	data := t.TempDir()
	s := startHub(t, data)
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	publish(t, nc, "pm.v1.ev.S1.h.w0.kv_cache", jsonMsg{Batch: kvBatch("h", 1, 1)})
	waitFor(t, "a row", func() bool { return s.Counters().Rows == 1 })
	n := 0
	err = filepath.WalkDir(data, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == data || strings.Contains(p, string(filepath.Separator)+"jetstream") {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if info.Mode().Perm()&0o007 != 0 {
			t.Errorf("%s: mode %v lets every user in", p, info.Mode().Perm())
		}
		n++
		return nil
	})
	if err != nil || n < 3 {
		t.Fatalf("walked %d entries: %v", n, err)
	}
}
