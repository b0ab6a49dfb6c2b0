package hub

import (
	"path/filepath"
	"testing"
	"time"
)

func instBatch(instance string, seqs ...uint64) *Batch {
	b := kvBatch("hostA", 10, seqs...)
	b.Instance = instance
	return b
}

// Two processes that share a pid on a host (another instance) keep separate seen-state: the
// second one's sequence numbers are not taken for replays of the first, before and after the
// session is loaded again from its files.
func TestSamePidOtherInstanceIsAnotherProcess(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "S1")
	now := time.Now()
	ss := newSession(dir, "S1", testSchema{}, 0, now)
	hello := func(s *session, inst string, start int64) {
		s.applyLife(&Life{Session: "S1", Host: "hostA", PID: 10, Instance: inst, Proc: "w0", Type: LifeHello,
			Ident: Ident{Role: "worker", EP: -1}, StartNS: start}, now)
	}
	hello(ss, "00000000000000aa", 1)
	if n, err := ss.writeBatch(instBatch("00000000000000aa", 1, 2, 3), now); err != nil || n != 3 {
		t.Fatalf("first process: %d rows (%v), want 3", n, err)
	}
	hello(ss, "00000000000000bb", 2)
	if n, err := ss.writeBatch(instBatch("00000000000000bb", 1, 2, 3), now); err != nil || n != 3 {
		t.Fatalf("second process with the same pid: %d rows (%v), want 3", n, err)
	}
	if n, _ := ss.writeBatch(instBatch("00000000000000bb", 3), now); n != 0 {
		t.Fatalf("a replay of the second process wrote %d rows, want 0", n)
	}
	if err := ss.commit(); err != nil {
		t.Fatal(err)
	}
	ss.closeFiles()
	if got := len(ss.meta.Processes); got != 2 {
		t.Fatalf("%d processes in the metadata, want 2", got)
	}

	re, err := loadSession(dir, "S1", testSchema{}, 0, now)
	if err != nil {
		t.Fatal(err)
	}
	n, err := re.writeBatch(instBatch("00000000000000bb", 2, 3, 4), now)
	if err != nil || n != 1 {
		t.Fatalf("after loading again the latest process wrote %d rows (%v), want 1 (seq 4)", n, err)
	}
	re.closeFiles()
	if got := len(readCSV(t, filepath.Join(dir, "kv_cache_usage.csv"))) - 1; got != 7 {
		t.Errorf("%d rows, want 7", got)
	}
}
