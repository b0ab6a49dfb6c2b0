package main

import (
	"testing"

	"github.com/profilemate/profilemate/plugins/sdk"
	"github.com/profilemate/profilemate/plugins/sdk/sdktest"
)

func fp(seq uint64, step int64, cpu float64) sdk.Event {
	return sdk.Event{Table: "forward_pass_timing", Seq: seq, Step: step, Cols: map[string]any{"cpu_ms": cpu, "tokens": int64(8)}}
}

func TestExample(t *testing.T) {
	w0 := sdk.Process{Host: "a", PID: 10, Role: "worker", DP: 0, PP: 0, TP: 0, EP: -1, Rank: 0}
	w1 := sdk.Process{Host: "a", PID: 11, Role: "worker", DP: 0, PP: 0, TP: 1, EP: -1, Rank: 1}
	rows := sdktest.Run(t, &Example{}, sdk.Session{ID: "s"},
		sdk.Batch{StreamSeq: 1, Kind: "forward_pass", Process: w0, Events: []sdk.Event{fp(1, 1, 2), fp(2, 2, 4)}},
		sdk.Batch{StreamSeq: 2, Kind: "forward_pass", Process: w1, Events: []sdk.Event{fp(1, 1, 9)}},
		sdk.Batch{StreamSeq: 5, Kind: "forward_pass", Process: w0, Events: []sdk.Event{fp(3, 3, 3)}},
	)
	var batches, totals, findings []sdktest.Row
	for _, r := range rows {
		switch r.Table {
		case "example_batches":
			batches = append(batches, r)
		case "example_totals":
			totals = append(totals, r)
		case sdk.FindingsTable:
			findings = append(findings, r)
		default:
			t.Errorf("row of undeclared table %s", r.Table)
		}
	}
	if len(batches) != 3 || batches[0].InputSeq != 1 || batches[2].InputSeq != 5 || batches[0].Cols["events"] != int64(2) ||
		batches[0].Cols["cpu_ms"] != 6.0 || batches[0].Step != 2 || batches[1].TP != 1 {
		t.Fatalf("batch rows %+v", batches)
	}
	if len(totals) != 2 || totals[0].Cols["proc_pid"] != int64(10) || totals[0].Cols["events"] != int64(3) || totals[0].Cols["mean_cpu_ms"] != 3.0 {
		t.Fatalf("totals %+v", totals)
	}
	if len(findings) != 1 || findings[0].Cols["ranks"] != "1" || findings[0].InputSeq != 0 {
		t.Fatalf("findings %+v", findings)
	}
}
