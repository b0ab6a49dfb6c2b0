package hub

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/profilemate/profilemate/internal/testkit"
	"github.com/profilemate/profilemate/proto"
)

// TestSharedRetention: two shared hubs; two sessions end (idle) and are finally checkpointed;
// hub b serves one from a fetched copy in its cache. A retention pass past --retention removes
// both checkpoints (no object of theirs is left), leaves tombstones that listings skip, and
// empties b's cache. A late message brings a removed session back from that message on, not
// from the stream's older messages. Once the stream no longer holds a removed session's
// messages, its tombstone goes too.
func TestSharedRetention(t *testing.T) {
	ns := testkit.StartNATS(t)
	nc := testkit.Connect(t, ns.ClientURL())
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	cfg := func(id, data string) Config {
		return Config{DataDir: data, NATSURL: ns.ClientURL(), Shared: true, HubID: id, LeaseTTL: time.Second,
			CheckpointEvery: 200 * time.Millisecond, SessionIdle: 500 * time.Millisecond, Retention: time.Hour}
	}
	dataA, dataB := t.TempDir(), t.TempDir()
	a, _ := startHubCfg(t, cfg("a", dataA))
	b, _ := startHubCfg(t, cfg("b", dataB))
	const old, gone = "S1", "S2" // gone's messages come first in the stream: purged below
	for _, s := range []string{gone, old} {
		for q := uint64(1); q <= 20; q += 10 {
			subj, m := sharedBatch(s, 7, q, q+9)
			publish(t, nc, subj, m)
		}
	}
	var ended [2]IndexEntry
	for i, s := range []string{gone, old} {
		waitFor(t, s+" ended and finally checkpointed", func() bool {
			e, err := LookupIndex(ctx, js, s)
			ended[i] = e
			return err == nil && e.Status == StatusEnded && e.Owner == "" && e.CheckpointSeq > 0 && e.Rows["kv_cache_usage"] == 20
		})
	}
	obs, err := js.ObjectStore(ctx, CheckpointBucket)
	if err != nil {
		t.Fatal(err)
	}
	objects := func(s string) int {
		infos, err := obs.List(ctx)
		if err != nil && !errors.Is(err, jetstream.ErrNoObjectsFound) {
			t.Fatal(err)
		}
		n := 0
		for _, in := range infos {
			if strings.HasPrefix(in.Name, proto.Escape(s)+"/") {
				n++
			}
		}
		return n
	}
	for _, s := range []string{gone, old} {
		if objects(s) == 0 {
			t.Fatalf("%s: no checkpoint objects", s)
		}
	}
	// b serves both from its cache (b may own neither: fetch a copy into cache/ for the test).
	cached := filepath.Join(dataB, "cache", "sessions", old)
	if _, err := restoreCheckpoint(ctx, obs, old, filepath.Join(dataB, "cache", "sessions")); err != nil {
		t.Fatal(err)
	}
	e, _ := LookupIndex(ctx, js, old)
	writeMarker(filepath.Join(dataB, "cache"), old, &CheckpointManifest{Seq: e.CheckpointSeq, NS: e.CheckpointNS})
	if dir, err := SessionFolder(ctx, js, dataB, old); err != nil || (dir != cached && dir != SessionDir(dataB, old)) {
		t.Fatalf("SessionFolder before retention: %q, %v", dir, err)
	}

	// Before retention runs out nothing goes.
	early := time.Unix(0, ended[1].EndNS).Add(30 * time.Minute)
	a.cl.applySharedRetention(ctx, early)
	b.cl.applySharedRetention(ctx, early)
	if objects(old) == 0 || objects(gone) == 0 {
		t.Fatal("a checkpoint was removed before its retention ran out")
	}
	late := time.Unix(0, max(ended[0].EndNS, ended[1].EndNS)).Add(2 * time.Hour)
	waitFor(t, "both checkpoints removed by whichever hub ranks first", func() bool {
		a.cl.applySharedRetention(ctx, late)
		b.cl.applySharedRetention(ctx, late)
		return objects(old) == 0 && objects(gone) == 0
	})
	for _, s := range []string{gone, old} {
		if _, err := LookupIndex(ctx, js, s); !errors.Is(err, ErrNoSession) {
			t.Fatalf("%s: LookupIndex after removal: %v, want ErrNoSession", s, err)
		}
		if e, err := lookupIndex(ctx, js, s); err != nil || e.Status != StatusRemoved {
			t.Fatalf("%s: tombstone %+v, %v", s, e, err)
		}
	}
	if l, err := ListIndex(ctx, js); err != nil || len(l) != 0 {
		t.Fatalf("ListIndex after removal: %d entries, %v", len(l), err)
	}
	waitFor(t, "b's cached copy removed", func() bool {
		b.trimCache(late)
		_, err := os.Stat(cached)
		_, merr := os.Stat(markPath(filepath.Join(dataB, "cache"), old))
		return errors.Is(err, os.ErrNotExist) && errors.Is(merr, os.ErrNotExist)
	})

	// A late message brings old back: from that message on, not its removed rows again.
	subj, m := sharedBatch(old, 7, 21, 25)
	publish(t, nc, subj, m)
	waitFor(t, old+" back with rows 21-25 only", func() bool {
		for _, d := range []string{dataA, dataB} {
			got := csvSeqs(t, SessionDir(d, old))
			if len(got) == 5 && got["21"] == 1 && got["25"] == 1 {
				return true
			}
			if len(got) > 20 { // 20: a's own folder before the claim removes it
				t.Fatalf("%s came back with %d rows: the removed ones were replayed", old, len(got))
			}
		}
		return false
	})

	// gone's messages leave the stream: its tombstone is no longer needed.
	st, err := js.Stream(ctx, proto.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSubject(proto.EventPrefix+"."+proto.Escape(gone)+".>")); err != nil {
		t.Fatal(err)
	}
	kv, _ := js.KeyValue(ctx, IndexBucket)
	waitFor(t, gone+"'s tombstone deleted", func() bool {
		a.cl.applySharedRetention(ctx, late)
		b.cl.applySharedRetention(ctx, late)
		_, err := kv.Get(ctx, proto.Escape(gone))
		return errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted)
	})
}
