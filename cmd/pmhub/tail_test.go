package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

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
