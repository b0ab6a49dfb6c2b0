package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	gproto "google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/internal/stream"
	"github.com/profilemate/profilemate/internal/testkit"
	"github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

func TestTailFilterOnRanks(t *testing.T) {
	w := &pmpb.Process{Role: proto.RoleWorker, Dp: 1, Pp: 0, Tp: 3, Rank: 7}
	eng := &pmpb.Process{Role: proto.RoleEngineCore, Dp: 1, Pp: -1, Tp: -1, Rank: -1}
	all := tailFilter{-1, -1, -1, -1}
	cases := []struct {
		f    tailFilter
		p    *pmpb.Process
		want bool
	}{
		{all, w, true}, {all, eng, true},
		{tailFilter{7, -1, -1, -1}, w, true}, {tailFilter{6, -1, -1, -1}, w, false},
		{tailFilter{-1, 3, -1, -1}, w, true}, {tailFilter{-1, 2, -1, -1}, w, false},
		{tailFilter{-1, -1, 0, 1}, w, true}, {tailFilter{-1, -1, -1, 0}, w, false},
		// A rank filter leaves out processes without that rank (the engine).
		{tailFilter{0, -1, -1, -1}, eng, false}, {tailFilter{-1, -1, -1, 1}, eng, true},
	}
	for i, c := range cases {
		if got := c.f.match(c.p); got != c.want {
			t.Errorf("case %d: %+v on %+v = %v, want %v", i, c.f, c.p, got, c.want)
		}
	}
}

func TestTailPrintsEachEvent(t *testing.T) {
	b := &pmpb.EventBatch{
		Process: &pmpb.Process{Session: "S", Host: "h", Pid: 42, Role: proto.RoleWorker, Tp: 1, Ep: -1, Rank: 1},
		Events: []*pmpb.Event{
			{Kind: proto.KindForwardPass, Table: "forward_pass_timing", Seq: 9, Step: 3, TsNs: 123, Cols: map[string]*pmpb.Value{"cpu_ms": dv(1.5), "num_reqs": iv(4)}},
			{Kind: proto.KindForwardPass, Table: "forward_pass_timing", Seq: 10, Step: 4, TsNs: 124, Cols: map[string]*pmpb.Value{"cpu_ms": dv(2)}},
		},
	}
	var out bytes.Buffer
	if err := printBatch(&out, b, true); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d JSON lines for 2 events:\n%s", len(lines), out.String())
	}
	var ev tailEvent
	if err := json.Unmarshal([]byte(lines[0]), &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Session != "S" || ev.Host != "h" || ev.PID != 42 || ev.Rank != 1 || ev.Kind != "forward_pass" || ev.Seq != 9 || ev.Step != 3 ||
		ev.TsNS != 123 || ev.Cols["cpu_ms"] != 1.5 || ev.Cols["num_reqs"] != float64(4) {
		t.Fatalf("JSON event %+v", ev)
	}
	out.Reset()
	if err := printBatch(&out, b, false); err != nil {
		t.Fatal(err)
	}
	if first, _, _ := strings.Cut(out.String(), "\n"); first != "S h w1 step=3 forward_pass_timing cpu_ms=1.5 num_reqs=4" {
		t.Fatalf("text line %q", first)
	}
}

// TestTailLayoutFromStream: a tail filtering by instance or node rank started after the processes
// said hello places them from the stream: the last lifecycle record of each process (the agent
// puts the layout on every record); a process whose records carry none stays unplaced.
func TestTailLayoutFromStream(t *testing.T) {
	ns := testkit.StartNATS(t)
	nc := testkit.Connect(t, ns.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, stream.Config()); err != nil {
		t.Fatal(err)
	}
	one := int32(1)
	pub := func(p *pmpb.Process, hello bool) {
		lc := &pmpb.Lifecycle{Process: p, TsNs: 1}
		if hello {
			lc.Record = &pmpb.Lifecycle_Hello_{Hello: &pmpb.Lifecycle_Hello{}}
		} else {
			lc.Record = &pmpb.Lifecycle_Status_{Status: &pmpb.Lifecycle_Status{}}
		}
		b, err := gproto.Marshal(proto.Stamp(lc))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js.Publish(ctx, proto.LifeSubject(p.Session, p.Host, proto.ProcToken(p.Role, int(p.Dp), int(p.Rank), int(p.Pid))), b); err != nil {
			t.Fatal(err)
		}
	}
	w2 := &pmpb.Process{Session: "S", Host: "hostB", Pid: 20, Role: proto.RoleWorker, Dp: -1, Tp: 0, Pp: 1, Ep: -1, Rank: 2,
		InstanceKey: "mp:10.0.0.1:29500", NodeRank: &one}
	pub(w2, true)
	pub(w2, false) // the last record per process is the one read
	pub(&pmpb.Process{Session: "S", Host: "hostC", Pid: 30, Role: proto.RoleWorker, Dp: -1, Tp: 0, Pp: 0, Ep: -1, Rank: 0}, true)

	lay := &layoutFilter{instance: "mp:10.0.0.1:29500", node: 1, procs: map[layoutKey]procLayout{}}
	if err := lay.snapshot(ctx, nc, proto.LifeFilter("", "", "")); err != nil {
		t.Fatal(err)
	}
	if !lay.match(w2) {
		t.Errorf("hostB's rank 2 not placed in node 1 of its instance: %v", lay.procs)
	}
	if lay.match(&pmpb.Process{Session: "S", Host: "hostC", Pid: 30}) {
		t.Error("a process without an instance matched --instance")
	}
	lay.node = 0
	if lay.match(w2) {
		t.Error("node rank 1 matched --node-rank 0")
	}
}
