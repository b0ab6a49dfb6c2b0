package hub

import (
	"sync/atomic"
	"testing"
	"time"

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
