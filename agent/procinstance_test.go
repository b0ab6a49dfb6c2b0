package agent

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	gproto "google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/internal/testkit"
	pmproto "github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

// dialInstance is dialShim with the shim's per-start instance id in the hello.
func dialInstance(t *testing.T, sock string, pid int, instance, session string) *fakeShim {
	t.Helper()
	s := dialShimRaw(t, sock, pid)
	s.line(map[string]any{"t": "hello", "v": 1, "session": session, "pid": pid, "ppid": 1, "role": "worker",
		"dp": 0, "pp": 0, "tp": 0, "ep": -1, "rank": 0, "python": "3.12", "vllm": "0.16.0", "instance": instance})
	return s
}

// A pid reused by another process start (another instance) is another stream identity: its
// events are neither dropped as replays by the agent nor as duplicates by JetStream, and every
// message id names the instance.
func TestPidReuseWithNewInstanceKeepsBothStreams(t *testing.T) {
	ns := testkit.StartNATS(t)
	createStream(t, ns.ClientURL())
	a := newTestAgent(t, Config{NATS: NATSConfig{URL: ns.ClientURL()}, SpoolDir: t.TempDir()})
	first := dialInstance(t, a.Socket(), 500, "00000000000000aa", "s1")
	first.batch(5)
	waitFor(t, "5 events", func() bool { return countEvents(t, ns.ClientURL()) >= 5 })
	first.c.Close() // gone without bye; the kernel sees the same peer (this test), so only the instance tells
	second := dialInstance(t, a.Socket(), 500, "00000000000000bb", "s1")
	second.batch(5)
	second.bye()
	waitFor(t, "10 events", func() bool { return countEvents(t, ns.ClientURL()) >= 10 })
	byInst := map[string]int{}
	for _, m := range streamMsgs(t, ns.ClientURL()) {
		if !strings.HasPrefix(m.Subject, "pm.v1.ev.") {
			continue
		}
		b := decodePB(t, m)
		inst := b.GetProcess().GetInstance()
		if id := m.Header.Get(nats.MsgIdHdr); !strings.Contains(id, "/500."+inst+"/") {
			t.Errorf("message id %q does not name instance %q", id, inst)
		}
		byInst[inst] += len(b.Events)
	}
	if byInst["00000000000000aa"] != 5 || byInst["00000000000000bb"] != 5 {
		t.Fatalf("events by instance %v, want 5 each", byInst)
	}
}

// The agent acknowledges a batch once it is queued: {"t":"ctl","v":1,"op":"ack","seq":<last>}.
func TestBatchIsAcknowledgedOnceQueued(t *testing.T) {
	ns := testkit.StartNATS(t)
	createStream(t, ns.ClientURL())
	a := newTestAgent(t, Config{NATS: NATSConfig{URL: ns.ClientURL()}, SpoolDir: t.TempDir()})
	s := dialInstance(t, a.Socket(), 501, "00000000000000cc", "s1")
	s.batch(4)
	_ = s.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		line, err := s.r.ReadBytes('\n')
		if err != nil {
			t.Fatalf("no ack: %v", err)
		}
		var c pmproto.Ctl
		if err := json.Unmarshal(line, &c); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		if c.Op == "ack" {
			if c.Seq != 4 {
				t.Fatalf("ack seq %d, want 4", c.Seq)
			}
			return
		}
	}
}

// The agent names its host in every clock request, so the hub knows whose offset it measures.
func TestClockRequestNamesHost(t *testing.T) {
	ns := testkit.StartNATS(t)
	createStream(t, ns.ClientURL())
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	hosts := make(chan string, 16)
	sub, err := nc.Subscribe(pmproto.ClockSubject, func(m *nats.Msg) {
		var r pmpb.ClockRequest
		if gproto.Unmarshal(m.Data, &r) == nil {
			select {
			case hosts <- r.GetHost():
			default:
			}
		}
		b, _ := gproto.Marshal(&pmpb.ClockReply{T1Ns: r.GetT1Ns(), T2Ns: time.Now().UnixNano(), T3Ns: time.Now().UnixNano()})
		_ = m.Respond(b)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	newTestAgent(t, Config{NATS: NATSConfig{URL: ns.ClientURL()}, Heartbeat: 20 * time.Millisecond})
	select {
	case h := <-hosts:
		if h != "h1" {
			t.Fatalf("clock request host %q, want h1", h)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no clock request")
	}
}
