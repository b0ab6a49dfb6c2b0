package e2e

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/profilemate/profilemate/hub"
)

// TestSharedHubsTakeOverRotatingSession is the shared-mode takeover with rotation as a user runs it: two
// real shared pmhubs with a small --rotate-bytes and a real `pmagent run` over the simulator with
// 4 workers. Once the owning hub has closed several segments and checkpointed twice after them
// it is killed (-9); the other hub takes the session over from the last checkpoint. When the session
// has ended, the survivor's segments hold every event (host, pid, seq) exactly once, each
// process's rows equal what its shim said it emitted, and their union of MoE rows equals the
// simulator's ground truth.
func TestSharedHubsTakeOverRotatingSession(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: two hubs and a simulated vLLM server")
	}
	bin(t, "pmagent")
	ns := agStartNATS(t)
	type hubRun struct {
		id, data string
		p        *hubProc
	}
	hubs := map[string]*hubRun{}
	for _, id := range []string{"h1", "h2"} {
		h := &hubRun{id: id, data: t.TempDir()}
		h.p = startHub(t, h.data, freeAddr(t), "--nats", ns.url(), "--hub-id", id, "--rotate-bytes", "400000",
			"--lease-ttl", "2s", "--checkpoint-interval", "1s", "--session-idle", "30s", "--plugins=false")
		hubs[id] = h
	}
	nc, err := nats.Connect(ns.url())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	lookup := func(session string) hub.IndexEntry {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		e, _ := hub.LookupIndex(ctx, js, session)
		return e
	}
	session := "20261130_090000_0a0b0e"
	py, env, truthPath := agSim(t, "PMSIM_REQUESTS=48", "PROFILEMATE_MOE_INTERVAL_STEPS=1", "PMSIM_STEP_WORK_MS=15")
	args := append([]string{"run", "--nats", ns.url(), "--host", "rot-host", "--session", session, "--spool-dir", t.TempDir()}, agSimArgs(py)...)
	p := agStart(t, env, args...)

	// The owner has closed three segments and checkpointed twice after the third closed: a
	// segment takes about a checkpoint interval to fill, so its checkpoints see a live file that
	// a rotation replaced, as long as the one before or longer about half the time.
	var owner *hubRun
	checkpoints := map[int64]bool{}
	agWaitFor(t, 3*time.Minute, "the owner to close three segments and checkpoint twice after them", func() bool {
		e := lookup(session)
		owner = hubs[e.Owner]
		if owner == nil || e.Status != hub.StatusActive {
			return false
		}
		dirs, err := hub.Segments(owner.data, session)
		if err != nil || len(dirs) < 4 {
			return false
		}
		sm, err := hub.ReadMetadata(dirs[3])
		if err == nil && sm.Segment != nil && e.CheckpointNS > sm.Segment.StartNS {
			checkpoints[e.CheckpointNS] = true
		}
		return len(checkpoints) >= 2
	})
	t.Logf("killing %s, the owner", owner.id)
	_ = owner.p.stop(syscall.SIGKILL)
	if lookup(session).Status != hub.StatusActive {
		t.Fatal("the session ended before its owner was killed; the run is too short for this machine")
	}
	var survivor *hubRun
	for _, h := range hubs {
		if h != owner {
			survivor = h
		}
	}
	if err := p.wait(t, 4*time.Minute); err != nil {
		t.Fatalf("pmagent run: %v\n%s", err, p.output())
	}
	agWaitFor(t, 2*time.Minute, "the session ended and finally checkpointed by "+survivor.id, func() bool {
		e := lookup(session)
		m, err := hub.ReadMetadata(hub.SessionDir(survivor.data, session))
		return e.Status == hub.StatusEnded && e.Owner == "" && err == nil && m.Status == hub.StatusEnded
	})
	dirs, err := hub.Segments(survivor.data, session)
	if err != nil {
		t.Fatal(err)
	}
	m, err := hub.ReadMetadata(dirs[len(dirs)-1])
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d segments on %s", len(dirs), survivor.id)
	checkSegmentUnion(t, dirs, m, truthPath)
}
