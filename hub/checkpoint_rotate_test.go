package hub

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/profilemate/profilemate/internal/testkit"
)

// folderFiles returns every regular file of session's folders under root (live and closed
// segments) by path relative to root, with its bytes.
func folderFiles(t *testing.T, root, session string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	dirs, err := segmentsIn(root, session)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		err := filepath.WalkDir(d, func(p string, e fs.DirEntry, err error) error {
			if err != nil || !e.Type().IsRegular() {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			b, err := os.ReadFile(p)
			out[filepath.ToSlash(rel)] = b
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestCheckpointAcrossRotation: a rotation renames the live folder to a closed segment and opens
// a new live folder whose files have the same names, the same header and a size that may be
// larger than, equal to or smaller than the old ones. Every checkpoint after it restores exactly
// the folders as they are: no bytes of the old segment under the live name, none missing.
func TestCheckpointAcrossRotation(t *testing.T) {
	_, js := testJS(t)
	ctx := context.Background()
	obs, err := js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: CheckpointBucket})
	if err != nil {
		t.Fatal(err)
	}
	const s = "r2"
	root := t.TempDir()
	live := filepath.Join(root, s)
	step := 0
	// open starts segment idx as the live folder with its metadata and a header-only CSV.
	open := func(idx int) {
		if err := os.MkdirAll(live, 0o750); err != nil {
			t.Fatal(err)
		}
		meta := fmt.Sprintf(`{"session_id":"r2","segment":{"index":%d,"start_ns":%d}}`, idx, 1000+idx)
		if err := os.WriteFile(filepath.Join(live, "metadata.json"), []byte(meta), 0o640); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(live, "forward_pass_timing.csv"), []byte("step,ns\n"), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	rows := func(n int) {
		f, err := os.OpenFile(filepath.Join(live, "forward_pass_timing.csv"), os.O_APPEND|os.O_WRONLY, 0o640)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < n; i++ {
			step++
			fmt.Fprintf(f, "%d,%d\n", step, 1000000+step) // same width: sizes can repeat exactly
		}
		f.Close()
	}
	rotate := func(idx int) {
		if err := os.Rename(live, filepath.Join(root, segmentFolderName(s, idx))); err != nil {
			t.Fatal(err)
		}
		open(idx + 1)
	}
	ck := &checkpointer{obs: obs, session: s, root: root, hub: "a", epoch: 1}
	seq := uint64(0)
	check := func(what string) {
		t.Helper()
		seq++
		if _, err := ck.checkpoint(ctx, seq, false, time.Now(), nil); err != nil {
			t.Fatal(err)
		}
		out := t.TempDir()
		if _, err := restoreCheckpoint(ctx, obs, s, out); err != nil {
			t.Fatal(err)
		}
		want, have := folderFiles(t, root, s), folderFiles(t, out, s)
		for rel, w := range want {
			if h, ok := have[rel]; !ok || !bytes.Equal(w, h) {
				t.Fatalf("%s: restored %s differs: %d bytes, want %d:\n got %.200q\nwant %.200q", what, rel, len(h), len(w), h, w)
			}
		}
		for rel := range have {
			if _, ok := want[rel]; !ok {
				t.Fatalf("%s: restored %s, which the folder does not have", what, rel)
			}
		}
	}
	open(0)
	rows(100)
	check("segment 0")
	rotate(0)
	rows(150) // the new live CSV is longer than the one checkpointed under its name
	check("rotation to a longer file")
	rotate(1)
	rows(150) // exactly as long as the one checkpointed under its name
	check("rotation to an equally long file")
	rotate(2)
	rows(20) // shorter
	check("rotation to a shorter file")
	rows(130) // then as long as before
	check("appends after a rotation")
	// In the same folder, a torn tail cut and rows appended again: the bytes before the old end
	// changed, so the file is stored whole.
	csv := filepath.Join(live, "forward_pass_timing.csv")
	b, _ := os.ReadFile(csv)
	if err := os.WriteFile(csv, b[:len(b)-4], 0o640); err != nil {
		t.Fatal(err)
	}
	step--
	rows(3)
	check("a cut tail grown again")
	// Rotated twice between checkpoints, and a takeover: a new owner starts from the restored
	// manifest and checkpoints again after more rotations.
	rotate(3)
	rows(150)
	rotate(4)
	rows(150)
	check("two rotations between checkpoints")
	m, err := readManifest(ctx, obs, s)
	if err != nil {
		t.Fatal(err)
	}
	ck = &checkpointer{obs: obs, session: s, root: root, hub: "b", epoch: 2, prev: m}
	rotate(5)
	rows(150)
	check("a new owner's checkpoint after a rotation")
	// Every step is in exactly one segment.
	seen := map[string]int{}
	for rel, b := range folderFiles(t, root, s) {
		if !strings.HasSuffix(rel, ".csv") {
			continue
		}
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n")[1:] {
			seen[strings.Split(line, ",")[0]]++
		}
	}
	if len(seen) != step {
		t.Fatalf("%d distinct steps in the segments, want %d", len(seen), step)
	}
	for k, n := range seen {
		if n != 1 {
			t.Fatalf("step %s in %d segments", k, n)
		}
	}
}

// segmentSeqs returns the seq column of every kv_cache_usage.csv of session's segments under the
// data folder data, counted across segments.
func segmentSeqs(t *testing.T, data, session string) (map[string]int, int) {
	t.Helper()
	got := map[string]int{}
	dirs, err := Segments(data, session)
	if err != nil {
		return got, 0
	}
	for _, d := range dirs {
		for q, n := range csvSeqs(t, d) {
			got[q] += n
		}
	}
	return got, len(dirs)
}

// TestSharedTakeoverWithRotation: hub a owns a session that rotates every three batches and is
// checkpointed every five; a dies; b takes over from a's last checkpoint and the stream
// after it. Across b's segments every row is there exactly once, and the closed segments b
// restored hold what a's did.
func TestSharedTakeoverWithRotation(t *testing.T) {
	ns := testkit.StartNATS(t)
	nc := testkit.Connect(t, ns.ClientURL())
	js, _ := jetstream.New(nc)
	dataA, dataB := t.TempDir(), t.TempDir()
	cfg := func(id, data string) Config {
		return Config{DataDir: data, NATSURL: ns.ClientURL(), Shared: true, HubID: id, LeaseTTL: time.Second,
			CheckpointEvery: time.Second, RotateBytes: 1500}
	}
	a, stopA := startHubCfg(t, cfg("a", dataA))
	const s = "r2"
	var msgs uint64
	pub := func(from, to uint64) {
		for q := from; q <= to; q += 10 {
			subj, m := sharedBatch(s, 7, q, min(q+9, to))
			publish(t, nc, subj, m)
			msgs++
			if msgs%5 != 0 {
				continue
			}
			// Five batches (a segment holds three) between checkpoints: a checkpoint sees the
			// live file after a rotation as long as or longer than the one it stored last.
			waitFor(t, "a's checkpoint of message "+strconv.FormatUint(msgs, 10), func() bool {
				e, err := LookupIndex(context.Background(), js, s)
				return err == nil && e.Owner == "a" && e.CheckpointSeq >= msgs
			})
			sameAsCheckpoint(t, js, dataA, s, "message "+strconv.FormatUint(msgs, 10))
		}
	}
	pub(1, 300)
	got, segs := segmentSeqs(t, dataA, s)
	if !exactly(got, 300) || segs < 4 {
		t.Fatalf("a: %d distinct rows in %d segments, want 300 once each in at least 4", len(got), segs)
	}
	startHubCfg(t, cfg("b", dataB))
	a.nc.Close()
	stopA()
	for q := uint64(301); q <= 400; q += 10 {
		subj, m := sharedBatch(s, 7, q, q+9)
		publish(t, nc, subj, m)
	}
	waitFor(t, "b holds rows 1-400 across its segments", func() bool {
		got, _ := segmentSeqs(t, dataB, s)
		return len(got) >= 400
	})
	got, segs = segmentSeqs(t, dataB, s)
	if !exactly(got, 400) {
		var dup []string
		for q, n := range got {
			if n != 1 {
				dup = append(dup, q)
			}
		}
		t.Fatalf("b: %d distinct rows in %d segments, want 400 once each; more than once: %v", len(got), segs, dup)
	}
	// The closed segments a wrote are b's byte for byte (a's last checkpoint was after them).
	for rel, want := range folderFiles(t, sessionsDir(dataA), s) {
		if !strings.HasPrefix(rel, s+"@") {
			continue
		}
		have, err := os.ReadFile(filepath.Join(sessionsDir(dataB), filepath.FromSlash(rel)))
		if err != nil || (!bytes.Equal(want, have) && strings.HasSuffix(rel, ".csv")) {
			t.Fatalf("closed segment file %s: b has %d bytes (%v), a had %d", rel, len(have), err, len(want))
		}
	}
}

// sameAsCheckpoint fails the test unless the session's latest checkpoint restores to exactly the
// session's folders under the data folder data (which nothing writes to meanwhile).
func sameAsCheckpoint(t *testing.T, js jetstream.JetStream, data, session, what string) {
	t.Helper()
	obs, err := js.ObjectStore(context.Background(), CheckpointBucket)
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	if _, err := restoreCheckpoint(context.Background(), obs, session, out); err != nil {
		t.Fatal(err)
	}
	want, have := folderFiles(t, sessionsDir(data), session), folderFiles(t, out, session)
	for rel, w := range want {
		if h, ok := have[rel]; !ok || (strings.HasSuffix(rel, ".csv") && !bytes.Equal(w, h)) {
			t.Errorf("checkpoint after %s: %s restored with %d bytes (%v), the folder has %d", what, rel, len(h), ok, len(w))
		}
	}
	for rel := range have {
		if _, ok := want[rel]; !ok {
			t.Errorf("checkpoint after %s: restored %s, which the folder does not have", what, rel)
		}
	}
}
