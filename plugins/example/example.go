package main

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"github.com/profilemate/profilemate/plugins/sdk"
)

// Example counts forward passes per process and finds the slowest worker.
type Example struct {
	mu       sync.Mutex
	sessions map[string]map[procKey]*procStats
	inputOff map[string]string // session → why forward_pass was switched off
}

type procKey struct {
	host string
	pid  int64
}

type procStats struct {
	proc    sdk.Process
	batches int64
	events  int64
	cpuMS   float64 // sum of cpu_ms
}

var (
	_ sdk.Profiler     = (*Example)(nil)
	_ sdk.InputWatcher = (*Example)(nil)
)

// InputChanged remembers that forward passes stopped coming, for a finding at the end.
func (e *Example) InputChanged(_ context.Context, session, kind string, enabled bool, reason string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.inputOff == nil {
		e.inputOff = map[string]string{}
	}
	if enabled {
		delete(e.inputOff, session)
	} else {
		e.inputOff[session] = kind + " " + reason
	}
}

// Describe names the plugin, what it reads and the two tables it writes.
func (e *Example) Describe() sdk.Info {
	return sdk.Info{
		Name:        "example",
		Version:     "1.0.0",
		Description: "forward passes per process and the slowest worker",
		Components:  []string{"worker"},
		Kinds:       []string{"forward_pass"},
		Tables: []sdk.Table{
			{Table: "example_batches", Kind: "example_batch", Since: "1.0.0", Columns: []sdk.Column{
				{Name: "proc_host", Type: sdk.TypeString, Meaning: "host of the process the batch came from"},
				{Name: "proc_pid", Type: sdk.TypeInt, Meaning: "pid of the process the batch came from"},
				{Name: "rank", Type: sdk.TypeInt, Unit: "rank", Meaning: "global worker rank; -1 when unknown"},
				{Name: "events", Type: sdk.TypeInt, Unit: "count", Meaning: "events in the batch"},
				{Name: "first_seq", Type: sdk.TypeInt, Meaning: "seq of the batch's first event"},
				{Name: "last_seq", Type: sdk.TypeInt, Meaning: "seq of the batch's last event"},
				{Name: "cpu_ms", Type: sdk.TypeFloat, Unit: "ms", Meaning: "sum of the batch's cpu_ms"},
			}},
			{Table: "example_totals", Kind: "example_total", Since: "1.0.0", Columns: []sdk.Column{
				{Name: "proc_host", Type: sdk.TypeString, Meaning: "host of the process"},
				{Name: "proc_pid", Type: sdk.TypeInt, Meaning: "pid of the process"},
				{Name: "rank", Type: sdk.TypeInt, Unit: "rank", Meaning: "global worker rank; -1 when unknown"},
				{Name: "batches", Type: sdk.TypeInt, Unit: "count", Meaning: "event batches seen"},
				{Name: "events", Type: sdk.TypeInt, Unit: "count", Meaning: "forward passes seen"},
				{Name: "mean_cpu_ms", Type: sdk.TypeFloat, Unit: "ms", Meaning: "mean cpu_ms of a forward pass"},
			}},
		},
	}
}

// OpenSession starts empty counters for the session.
func (e *Example) OpenSession(_ context.Context, s sdk.Session) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.sessions == nil {
		e.sessions = map[string]map[procKey]*procStats{}
	}
	e.sessions[s.ID] = map[procKey]*procStats{}
	return nil
}

// Consume adds one batch to its process's counters and returns one example_batches row.
func (e *Example) Consume(_ context.Context, b sdk.Batch) ([]sdk.Row, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	procs := e.sessions[b.Session]
	if procs == nil {
		return nil, fmt.Errorf("session %s was not opened", b.Session)
	}
	k := procKey{b.Process.Host, b.Process.PID}
	st := procs[k]
	if st == nil {
		st = &procStats{proc: b.Process}
		procs[k] = st
	}
	var cpu float64
	for _, ev := range b.Events {
		if v, ok := ev.Float("cpu_ms"); ok {
			cpu += v
		}
	}
	st.batches++
	st.events += int64(len(b.Events))
	st.cpuMS += cpu
	var first, last uint64
	if n := len(b.Events); n > 0 {
		first, last = b.Events[0].Seq, b.Events[n-1].Seq
	}
	row := sdk.NewRow("example_batches", map[string]any{
		"proc_host": b.Process.Host, "proc_pid": b.Process.PID, "rank": b.Process.Rank,
		"events": len(b.Events), "first_seq": first, "last_seq": last, "cpu_ms": cpu,
	})
	row.DP, row.PP, row.TP, row.EP = b.Process.DP, b.Process.PP, b.Process.TP, b.Process.EP
	if n := len(b.Events); n > 0 {
		row.Step = b.Events[n-1].Step
	}
	return []sdk.Row{row}, nil
}

// CloseSession returns one example_totals row per process and a finding on the slowest worker.
func (e *Example) CloseSession(_ context.Context, session string) ([]sdk.Row, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	procs := e.sessions[session]
	delete(e.sessions, session)
	off, wasOff := e.inputOff[session]
	delete(e.inputOff, session)
	all := make([]*procStats, 0, len(procs))
	for _, st := range procs {
		all = append(all, st)
	}
	// Map order is random; rows must come out the same on every run.
	sort.Slice(all, func(i, j int) bool {
		if all[i].proc.Host != all[j].proc.Host {
			return all[i].proc.Host < all[j].proc.Host
		}
		return all[i].proc.PID < all[j].proc.PID
	})
	var rows []sdk.Row
	var slowest *procStats
	var sum float64
	var n int64
	for _, st := range all {
		mean := 0.0
		if st.events > 0 {
			mean = st.cpuMS / float64(st.events)
		}
		r := sdk.NewRow("example_totals", map[string]any{
			"proc_host": st.proc.Host, "proc_pid": st.proc.PID, "rank": st.proc.Rank,
			"batches": st.batches, "events": st.events, "mean_cpu_ms": mean,
		})
		r.DP, r.PP, r.TP, r.EP = st.proc.DP, st.proc.PP, st.proc.TP, st.proc.EP
		rows = append(rows, r)
		if st.events > 0 && (slowest == nil || mean > slowest.cpuMS/float64(slowest.events)) {
			slowest = st
		}
		sum += st.cpuMS
		n += st.events
	}
	if slowest != nil && n > 0 {
		mean := slowest.cpuMS / float64(slowest.events)
		rows = append(rows, sdk.Finding{
			Severity: sdk.SeverityInfo,
			Title:    fmt.Sprintf("slowest forward passes on %s rank %d", slowest.proc.Host, slowest.proc.Rank),
			Numbers:  map[string]float64{"mean_cpu_ms": mean, "fleet_mean_cpu_ms": sum / float64(n), "events": float64(slowest.events)},
			Ranks:    []int{int(slowest.proc.Rank)},
			Detail:   "mean host time of execute_model on this process is the highest of the session",
		}.Row())
	}
	if wasOff {
		rows = append(rows, sdk.Finding{Severity: sdk.SeverityWarning, Title: "input off: " + off,
			Detail: "the totals cover only the forward passes recorded while the profiler was on"}.Row())
	}
	return rows, nil
}
