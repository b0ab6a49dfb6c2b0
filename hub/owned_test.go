package hub

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/profilemate/profilemate/internal/testkit"
)

// TestSharedCommitOutsideHubLock: an owned session whose commit (fsync) is slow does not stall
// the hub's other sessions: while S1's commit is held, S2's rows are written and committed, and
// S1's rows follow once its commit goes on, every row once.
func TestSharedCommitOutsideHubLock(t *testing.T) {
	ns := testkit.StartNATS(t)
	nc := testkit.Connect(t, ns.ClientURL())
	hold, reached := make(chan struct{}), make(chan struct{}, 1)
	var s2Committed atomic.Bool
	commitHook = func(id string) {
		switch id {
		case "S1":
			select {
			case reached <- struct{}{}:
				select { // the first commit of S1 waits for the test (bounded)
				case <-hold:
				case <-time.After(30 * time.Second):
				}
			default:
			}
		case "S2":
			s2Committed.Store(true)
		}
	}
	defer func() { commitHook = nil }()
	data := t.TempDir()
	_, stop := sharedHub(t, ns.ClientURL(), "a", data)
	defer stop()
	subj, m := sharedBatch("S1", 7, 1, 10)
	publish(t, nc, subj, m)
	select {
	case <-reached:
	case <-time.After(30 * time.Second):
		t.Fatal("S1 never committed")
	}
	subj, m = sharedBatch("S2", 7, 1, 10)
	publish(t, nc, subj, m)
	waitFor(t, "S2 written and committed while S1's commit is held", func() bool {
		return s2Committed.Load() && exactly(csvSeqs(t, SessionDir(data, "S2")), 10)
	})
	close(hold)
	waitFor(t, "S1 written once its commit went on", func() bool { return exactly(csvSeqs(t, SessionDir(data, "S1")), 10) })
}

// TestSharedRebalanceOnJoin: hub a owns every session; hub b joins; the sessions that now rank
// first on b move to b at a safe point (checkpoint, release, claim), the others stay on a, and
// every row is written once, also the rows that came after the move.
func TestSharedRebalanceOnJoin(t *testing.T) {
	ns := testkit.StartNATS(t)
	nc := testkit.Connect(t, ns.ClientURL())
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	var movers, stayers []string
	for i := 0; len(movers) < 2 || len(stayers) < 2; i++ {
		s := fmt.Sprintf("R%d", i)
		if firstChoice([]string{"a", "b"}, s) == "b" {
			if len(movers) < 2 {
				movers = append(movers, s)
			}
		} else if len(stayers) < 2 {
			stayers = append(stayers, s)
		}
	}
	all := append(append([]string{}, movers...), stayers...)
	pub := func(from, to uint64) {
		for _, s := range all {
			subj, m := sharedBatch(s, 7, from, to)
			publish(t, nc, subj, m)
		}
	}
	dataA, dataB := t.TempDir(), t.TempDir()
	sharedHub(t, ns.ClientURL(), "a", dataA)
	pub(1, 20)
	for _, s := range all {
		waitFor(t, s+" owned and checkpointed by a", func() bool {
			e, err := LookupIndex(ctx, js, s)
			return err == nil && e.Owner == "a" && e.Rows["kv_cache_usage"] == 20
		})
	}
	sharedHub(t, ns.ClientURL(), "b", dataB)
	for _, s := range movers {
		waitFor(t, s+" handed over to b", func() bool {
			e, err := LookupIndex(ctx, js, s)
			return err == nil && e.Owner == "b"
		})
	}
	pub(21, 30)
	for _, s := range movers {
		waitFor(t, s+" complete once in b's folder", func() bool { return exactly(csvSeqs(t, SessionDir(dataB, s)), 30) })
		waitFor(t, s+" served from a's data folder with every row", func() bool {
			dir, err := SessionFolder(ctx, js, dataA, s)
			return err == nil && exactly(csvSeqs(t, dir), 30)
		})
	}
	for _, s := range stayers {
		waitFor(t, s+" complete once in a's folder", func() bool { return exactly(csvSeqs(t, SessionDir(dataA, s)), 30) })
		if e, err := LookupIndex(ctx, js, s); err != nil || e.Owner != "a" {
			t.Fatalf("%s: owner %q (%v), want a: a session whose first choice did not change moved", s, e.Owner, err)
		}
	}
}
