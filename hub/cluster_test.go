package hub

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/profilemate/profilemate/internal/testkit"
	"github.com/profilemate/profilemate/proto"
)

func testJS(t *testing.T) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	ns := testkit.StartNATS(t)
	nc := testkit.Connect(t, ns.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// TestLeaseClaimRenewLoss: the first claim wins, a renewal keeps the lease, a lease left alone
// expires and another hub claims it, and the first hub's next renewal says ErrLeaseLost.
func TestLeaseClaimRenewLoss(t *testing.T) {
	_, js := testJS(t)
	ctx := context.Background()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: LeaseBucket, TTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	a := &leases{kv: kv, hub: "a", now: time.Now}
	b := &leases{kv: kv, hub: "b", now: time.Now}
	const s = "20261130_080000_abcdef"
	revA, ok, err := a.claim(ctx, s)
	if err != nil || !ok {
		t.Fatalf("first claim: ok %v err %v", ok, err)
	}
	if _, ok, err := b.claim(ctx, s); err != nil || ok {
		t.Fatalf("second claim of a held lease: ok %v err %v", ok, err)
	}
	if h, _ := b.holder(ctx, s); h != "a" {
		t.Fatalf("holder %q, want a", h)
	}
	// Renewed past its TTL, the lease stays a's.
	deadline := time.Now().Add(2500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if revA, err = a.renew(ctx, s, revA); err != nil {
			t.Fatalf("renew: %v", err)
		}
		if _, ok, _ := b.claim(ctx, s); ok {
			t.Fatal("b claimed a lease a kept renewing")
		}
		time.Sleep(300 * time.Millisecond)
	}
	// Left alone, it expires and b takes it.
	var revB uint64
	waitFor(t, "the lease to expire and b to claim it", func() bool {
		r, ok, err := b.claim(ctx, s)
		revB = r
		return err == nil && ok
	})
	if _, err := a.renew(ctx, s, revA); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("renew after losing the lease: %v, want ErrLeaseLost", err)
	}
	if h, _ := a.holder(ctx, s); h != "b" {
		t.Fatalf("holder %q, want b", h)
	}
	// A release with a stale revision does not free b's lease; b's own release does.
	_ = a.release(ctx, s, revA)
	if h, _ := a.holder(ctx, s); h != "b" {
		t.Fatalf("after a stale release: holder %q, want b", h)
	}
	if err := b.release(ctx, s, revB); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := a.claim(ctx, s); err != nil || !ok {
		t.Fatalf("claim after release: ok %v err %v", ok, err)
	}
}

func TestRendezvousSpreadsAndMovesLittle(t *testing.T) {
	hubs := []string{"h1", "h2", "h3"}
	count := map[string]int{}
	moved := 0
	for i := 0; i < 3000; i++ {
		s := "20261130_080000_" + strconv.FormatInt(int64(i), 16)
		first := firstChoice(hubs, s)
		count[first]++
		if firstChoice(hubs[:2], s) != first && first != "h3" {
			moved++ // a session whose choice was h1 or h2 must stay when h3 leaves
		}
	}
	for _, h := range hubs {
		if count[h] < 800 || count[h] > 1200 {
			t.Errorf("hub %s first choice of %d of 3000 sessions", h, count[h])
		}
	}
	if moved != 0 {
		t.Errorf("%d sessions moved between the hubs that stayed", moved)
	}
}

// TestCheckpointRestore: appended CSV bytes are stored as new parts only (merged like a binary
// counter), other files whole; a restore gives back the folder byte for byte; a shorter file is
// stored whole again; replaced parts are deleted.
func TestCheckpointRestore(t *testing.T) {
	_, js := testJS(t)
	ctx := context.Background()
	obs, err := js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: CheckpointBucket})
	if err != nil {
		t.Fatal(err)
	}
	const s = "S1"
	root := t.TempDir()
	dir := filepath.Join(root, s)
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o750); err != nil {
		t.Fatal(err)
	}
	// A closed segment of S1 (segments.go) is kept too; another session's folder is not.
	if err := os.MkdirAll(filepath.Join(root, s+"@000001"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "S10"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "S10", "metadata.json"), []byte("{}"), 0o640); err != nil {
		t.Fatal(err)
	}
	write := func(rel, text string, appendTo bool) {
		flag := os.O_CREATE | os.O_WRONLY | os.O_TRUNC
		if appendTo {
			flag = os.O_CREATE | os.O_WRONLY | os.O_APPEND
		}
		f, err := os.OpenFile(filepath.Join(root, rel), flag, 0o640)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(text)
		f.Close()
	}
	csvRel, metaRel := s+"/kv_cache_usage.csv", s+"/metadata.json"
	files := []string{csvRel, metaRel, s + "/sub/forward_pass_timing.csv", s + "@000001/metadata.json"}
	write(csvRel, "session,seq\n", false)
	write(metaRel, `{"v":1}`, false)
	write(files[2], "h\n1\n", false)
	write(files[3], `{"segment":1}`, false)
	ck := &checkpointer{obs: obs, session: s, root: root, hub: "a", epoch: 7}
	check := func(seq uint64) *CheckpointManifest {
		t.Helper()
		m, err := ck.checkpoint(ctx, seq, false, time.Now(), nil)
		if err != nil {
			t.Fatal(err)
		}
		out := t.TempDir()
		got, err := restoreCheckpoint(ctx, obs, s, out)
		if err != nil {
			t.Fatal(err)
		}
		if got.Seq != seq {
			t.Fatalf("restored seq %d, want %d", got.Seq, seq)
		}
		if _, err := os.Stat(filepath.Join(out, "S10")); err == nil {
			t.Fatal("another session's folder was stored with S1")
		}
		for _, rel := range files {
			want, _ := os.ReadFile(filepath.Join(root, rel))
			have, err := os.ReadFile(filepath.Join(out, rel))
			if err != nil || !bytes.Equal(want, have) {
				t.Fatalf("seq %d %s: restored %q (%v), folder has %q", seq, rel, have, err, want)
			}
		}
		// Only the manifest's parts and the manifest remain in the bucket.
		live := 1
		for _, f := range m.Files {
			live += len(f.Parts)
		}
		list, err := obs.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != live {
			t.Fatalf("seq %d: %d objects in the bucket, manifest names %d", seq, len(list), live)
		}
		return m
	}
	// No checkpoint yet: the folders stay as they are (a single-mode hub's sessions, say).
	if m, err := restoreCheckpoint(ctx, obs, s, root); err != nil || m != nil {
		t.Fatalf("restore without a checkpoint: %v %v", m, err)
	}
	if _, err := os.Stat(filepath.Join(root, csvRel)); err != nil {
		t.Fatalf("restore without a checkpoint removed the folder: %v", err)
	}
	check(1)
	for i := 0; i < 40; i++ {
		write(csvRel, "S1,"+strconv.Itoa(i)+strings.Repeat("x", i)+"\n", true)
		if i%7 == 0 {
			write(metaRel, `{"v":`+strconv.Itoa(i)+`}`, false)
		}
		m := check(uint64(i + 2))
		if n := len(m.Files[csvRel].Parts); n > 7 {
			t.Fatalf("after %d appends the CSV has %d parts, want O(log n)", i+1, n)
		}
	}
	// A torn tail cut off makes the file shorter: stored whole again.
	p := filepath.Join(root, csvRel)
	b, _ := os.ReadFile(p)
	if err := os.WriteFile(p, b[:len(b)-5], 0o640); err != nil {
		t.Fatal(err)
	}
	if m := check(100); len(m.Files[csvRel].Parts) != 1 {
		t.Fatalf("a shorter file has %d parts, want 1", len(m.Files[csvRel].Parts))
	}
	// A closed segment removed by retention leaves the checkpoint too (check counts the objects).
	if err := os.RemoveAll(filepath.Join(root, s+"@000001")); err != nil {
		t.Fatal(err)
	}
	files = files[:3]
	check(100)
	// A fence that fails stores no manifest.
	write(csvRel, "more\n", true)
	if _, err := ck.checkpoint(ctx, 101, false, time.Now(), func() error { return ErrLeaseLost }); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("fenced checkpoint: %v", err)
	}
	if m, _ := readManifest(ctx, obs, s); m.Seq != 100 {
		t.Fatalf("manifest seq %d after a fenced checkpoint, want 100", m.Seq)
	}
	// An owner that lost the lease without noticing (its own epoch) uploads its parts while its
	// successor checkpoints; its fence then fails and it deletes what it uploaded: never the
	// successor's parts, so the successor's checkpoint restores whole.
	stale := &checkpointer{obs: obs, session: s, root: root, hub: "old", epoch: 6, prev: ck.prev}
	write(csvRel, "while two owners write\n", true)
	_, err = stale.checkpoint(ctx, 102, false, time.Now(), func() error {
		if _, err := ck.checkpoint(ctx, 103, false, time.Now(), nil); err != nil {
			t.Fatal(err)
		}
		return ErrLeaseLost
	})
	if !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("stale checkpoint: %v", err)
	}
	out := t.TempDir()
	if m, err := restoreCheckpoint(ctx, obs, s, out); err != nil || m.Seq != 103 {
		t.Fatalf("restore after a stale owner's failed checkpoint: %v (%+v)", err, m)
	}
	want, _ := os.ReadFile(filepath.Join(root, csvRel))
	if have, _ := os.ReadFile(filepath.Join(out, csvRel)); !bytes.Equal(want, have) {
		t.Fatalf("restored CSV differs after a stale owner's failed checkpoint")
	}
}

// sharedHub starts a shared hub on the cluster at url.
func sharedHub(t *testing.T, url, id, data string) (*Server, func()) {
	t.Helper()
	return startHubCfg(t, Config{DataDir: data, NATSURL: url, Shared: true, HubID: id, LeaseTTL: time.Second,
		CheckpointEvery: 200 * time.Millisecond})
}

func sharedBatch(session string, pid int64, from, to uint64) (string, jsonMsg) {
	b := kvBatch("h1", pid, seqRange(from, to)...)
	b.Session = session
	return proto.EventSubject(session, "h1", "w0", "kv_cache"), jsonMsg{V: 1, Batch: b}
}

func seqRange(from, to uint64) []uint64 {
	var s []uint64
	for q := from; q <= to; q++ {
		s = append(s, q)
	}
	return s
}

// csvSeqs returns the seq column of dir's kv_cache_usage.csv, counted.
func csvSeqs(t *testing.T, dir string) map[string]int {
	t.Helper()
	got := map[string]int{}
	p := filepath.Join(dir, "kv_cache_usage.csv")
	if _, err := os.Stat(p); err != nil {
		return got
	}
	recs := readCSV(t, p)
	for _, r := range recs[1:] {
		got[r[8]]++
	}
	return got
}

func exactly(got map[string]int, n int) bool {
	if len(got) != n {
		return false
	}
	for q := 1; q <= n; q++ {
		if got[strconv.Itoa(q)] != 1 {
			return false
		}
	}
	return true
}

// TestSharedTakeover: two sessions owned by hub a; a dies without a word (its connection cut);
// b takes both over from a's last checkpoint plus the stream after it; every row is written
// once. The index names b, and a's stale copy is not served: SessionFolder on a's data folder
// fetches b's checkpoint.
func TestSharedTakeover(t *testing.T) {
	ns := testkit.StartNATS(t)
	nc := testkit.Connect(t, ns.ClientURL())
	js, _ := jetstream.New(nc)
	dataA, dataB := t.TempDir(), t.TempDir()
	a, stopA := sharedHub(t, ns.ClientURL(), "a", dataA)
	sessions := []string{"S1", "S2.x"}
	pub := func(from, to uint64) {
		for _, s := range sessions {
			for q := from; q <= to; q += 10 {
				subj, m := sharedBatch(s, 7, q, min(q+9, to))
				publish(t, nc, subj, m)
			}
		}
	}
	pub(1, 50)
	for _, s := range sessions {
		waitFor(t, s+" written and checkpointed by a", func() bool {
			e, err := LookupIndex(context.Background(), js, s)
			return exactly(csvSeqs(t, SessionDir(dataA, s)), 50) && err == nil && e.Owner == "a" && e.CheckpointSeq > 0
		})
	}
	b, _ := sharedHub(t, ns.ClientURL(), "b", dataB)
	pub(51, 60)
	for _, s := range sessions {
		waitFor(t, s+" rows 51-60 written by a", func() bool { return exactly(csvSeqs(t, SessionDir(dataA, s)), 60) })
	}
	// a dies: no final checkpoint, no release; its leases expire.
	a.nc.Close()
	stopA()
	pub(61, 100)
	for _, s := range sessions {
		waitFor(t, s+" taken over by b with every row once", func() bool {
			return exactly(csvSeqs(t, SessionDir(dataB, s)), 100)
		})
		waitFor(t, s+" checkpointed by b", func() bool {
			e, err := LookupIndex(context.Background(), js, s)
			return err == nil && e.Owner == "b" && e.Rows["kv_cache_usage"] == 100
		})
		dir, err := SessionFolder(context.Background(), js, dataA, s)
		if err != nil {
			t.Fatal(err)
		}
		if dir == SessionDir(dataA, s) {
			t.Fatalf("%s: a's stale copy served", s)
		}
		if got := csvSeqs(t, dir); !exactly(got, 100) {
			t.Fatalf("%s from a's data folder (%s): %d rows", s, dir, len(got))
		}
	}
	// b's /metrics names it and counts the sessions it owns.
	m := NewMetrics()
	m.Attach(b)
	fams, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range fams {
		for _, mt := range f.GetMetric() {
			v := mt.GetGauge().GetValue() + mt.GetCounter().GetValue()
			if f.GetName() == "profilemate_hub_info" {
				for _, l := range mt.GetLabel() {
					if l.GetName() == "hub" && l.GetValue() == "b" {
						got["info_b"] = v
					}
				}
			}
			got[f.GetName()] = v
		}
	}
	if got["info_b"] != 1 || got["profilemate_hub_sessions_owned"] != 2 || got["profilemate_hub_checkpoints_total"] < 1 {
		t.Fatalf("b's shared series: %v", got)
	}
}
