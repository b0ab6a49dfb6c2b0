package agent

import (
	"reflect"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/internal/testkit"
	"github.com/profilemate/profilemate/proto/pmpb"
)

// TestStatusShowsProfilerState: a kind switched by a hub Control (pm.v1.ctl) shows in the status
// of each process of that session with its state and who switched it; a kind the process's status
// line reports switched off since start shows as off by PROFILEMATE_PROFILERS; a process of
// another session keeps none.
func TestStatusShowsProfilerState(t *testing.T) {
	ns := testkit.StartNATS(t)
	createStream(t, ns.ClientURL())
	a := newTestAgent(t, Config{NATS: NATSConfig{URL: ns.ClientURL()}, Heartbeat: 20 * time.Millisecond})
	s := dialShim(t, a.Socket(), 1201, 0, "sw1")
	other := dialShim(t, a.Socket(), 1202, 1, "sw2")
	s.batch(1)
	other.batch(1)
	s.line(map[string]any{"t": "status", "v": 1, "pid": 1201, "targets": []map[string]any{
		{"target": "kv_cache_manager", "status": "disabled", "reason": "profiler switched off: kv_cache"},
		{"target": "scheduler", "status": "patched"}}})
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	send := func(on bool) {
		ctl, _ := proto.Marshal(&pmpb.Control{SchemaMajor: 1, Host: "h1", Session: "sw1",
			Op: &pmpb.Control_Profiler_{Profiler: &pmpb.Control_Profiler{Name: "moe_expert", Enabled: on}}})
		_ = nc.Publish("pm.v1.ctl.h1", ctl)
	}
	states := func(pid int) []ProfilerState {
		for _, p := range a.Status().Processes {
			if p.Pid == pid {
				for i := range p.Profilers {
					p.Profilers[i].AtNS = 0
				}
				return p.Profilers
			}
		}
		return nil
	}
	wantOff := []ProfilerState{{Kind: "kv_cache", By: SwitchedByStartup}, {Kind: "moe_expert", By: SwitchedByHub}}
	waitFor(t, "moe_expert off by pmhub and kv_cache off since start", func() bool {
		send(false)
		return reflect.DeepEqual(states(1201), wantOff)
	})
	wantOn := []ProfilerState{{Kind: "kv_cache", By: SwitchedByStartup}, {Kind: "moe_expert", Enabled: true, By: SwitchedByHub}}
	waitFor(t, "moe_expert on again", func() bool {
		send(true)
		return reflect.DeepEqual(states(1201), wantOn)
	})
	if got := states(1202); len(got) != 0 {
		t.Fatalf("process of another session shows %+v", got)
	}
}
