// Package export writes a hub session folder as a timeline for trace viewers — Perfetto's protobuf
// trace format and the Chrome trace-event JSON format — and as Parquet files with the column types
// of proto/tables. Timelines use the session's aligned clock (ts_aligned_ns), so every rank of every
// host lines up.
package export

import (
	"fmt"
	"hash/fnv"
	"sort"
	"strconv"
	"strings"

	"github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/report"
)

// Process is one (host, process) of the session: one process track in the viewer. PseudoPID is
// the viewer's process id (1, 2, …): real pids repeat across hosts and viewers merge equal pids.
type Process struct {
	Key       string // "host/proc", e.g. hostA/w3
	Host      string
	PID       int64
	Role      string
	PseudoPID int32
	UUID      uint64
}

// Track is a row of slices, instants or counter values inside a process.
type Track struct {
	UUID    uint64
	Name    string
	Process *Process
	Counter bool
	Unit    string // counters: unit of the values (fraction, percent)
	// Lane is the track's number among its process's tracks (the Chrome JSON tid).
	Lane int
}

// Event kinds of a timeline.
const (
	Slice   = "slice"
	Instant = "instant"
	Counter = "counter"
)

// Event is one slice (StartNS..EndNS), instant (StartNS) or counter value (StartNS, Value) on a
// track. Args are the row's values shown with it, packed as "name=value" joined by \x1f (one
// allocation per event: a timeline of millions of events stays compact); see ArgList.
type Event struct {
	Kind           string
	Track          *Track
	Name           string
	Table          string
	StartNS, EndNS int64
	Value          float64
	Args           string
}

const argSep = "\x1f"

// packArgs packs name, value pairs for Event.Args, leaving out empty values.
func packArgs(kv ...string) string {
	var b strings.Builder
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == "" {
			continue
		}
		if b.Len() > 0 {
			b.WriteString(argSep)
		}
		b.WriteString(kv[i])
		b.WriteByte('=')
		b.WriteString(kv[i+1])
	}
	return b.String()
}

// ArgList returns the event's arguments as name, value pairs in the order they were recorded.
func (e *Event) ArgList() [][2]string {
	if e.Args == "" {
		return nil
	}
	var out [][2]string
	for _, kv := range strings.Split(e.Args, argSep) {
		k, v, _ := strings.Cut(kv, "=")
		out = append(out, [2]string{k, v})
	}
	return out
}

// Timeline is a session laid out for a trace viewer: tracks and their events, each track's events
// sorted by time and its slices never overlapping partially (a slice that would is moved to a new
// lane track, "forward passes #2").
type Timeline struct {
	Session   string
	Processes []*Process
	Tracks    []*Track
	Events    []Event
	// Counts per kind and per source table.
	Counts map[string]map[string]int
}

// What goes where. Slices: forward_pass_timing (a worker's execute_model, ending at ts and lasting
// cpu_ms), cpu_operations_timing (one track per operation), engine steps (one per
// batch_utilization row: from the start of the step's schedule call to the end of its
// update_from_output call, from the engine's cpu_operations_timing rows of that step; the row's own
// time stands in for a missing end). Instants: preemption_events, cuda_graph_captures. Counters:
// kv_cache_usage.usage per engine, gpu_metrics.util_gpu per GPU.
type builder struct {
	s      *report.Session
	tl     *Timeline
	procs  map[string]*Process
	tracks map[string][]*Track // process key + name -> lanes
	lanes  map[*Process]int
	names  map[string]string // interned event names
}

// intern returns one shared copy of an event name: names repeat across millions of events.
func (b *builder) intern(s string) string {
	if v, ok := b.names[s]; ok {
		return v
	}
	if len(b.names) < 1<<16 {
		b.names[s] = s
	}
	return s
}

func uuidOf(parts ...string) uint64 {
	h := fnv.New64a()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return h.Sum64() | 1 // never 0: uuid 0 is the trace-global track
}

func (b *builder) process(r *report.Rows) *Process {
	key := b.s.ProcKey(r)
	if p := b.procs[key]; p != nil {
		return p
	}
	pid, _ := r.Int("pid")
	p := &Process{Key: key, Host: r.Str("host"), PID: pid, Role: r.Str("role"), PseudoPID: int32(len(b.tl.Processes) + 1), UUID: uuidOf("process", key)}
	b.procs[key] = p
	b.tl.Processes = append(b.tl.Processes, p)
	return p
}

func (b *builder) track(p *Process, name string, counter bool, unit string) *Track {
	k := p.Key + "\x00" + name
	if l := b.tracks[k]; len(l) > 0 {
		return l[0]
	}
	b.lanes[p]++
	t := &Track{UUID: uuidOf("track", p.Key, name), Name: name, Process: p, Counter: counter, Unit: unit, Lane: b.lanes[p]}
	b.tracks[k] = []*Track{t}
	b.tl.Tracks = append(b.tl.Tracks, t)
	return t
}

func (b *builder) add(e Event) {
	b.tl.Events = append(b.tl.Events, e)
	if b.tl.Counts[e.Kind] == nil {
		b.tl.Counts[e.Kind] = map[string]int{}
	}
	b.tl.Counts[e.Kind][e.Table]++
}

func ms(v float64) int64 { return int64(v * 1e6) }

// Build reads the session folder dir into a Timeline. Errors: unreadable metadata or a malformed
// CSV file.
func Build(dir string) (*Timeline, error) {
	s, err := report.Open(dir)
	if err != nil {
		return nil, err
	}
	b := &builder{s: s, tl: &Timeline{Session: s.Meta.Session, Counts: map[string]map[string]int{}},
		procs: map[string]*Process{}, tracks: map[string][]*Track{}, lanes: map[*Process]int{}, names: map[string]string{}}

	type stepKey struct {
		proc string
		step int64
	}
	begin, end := map[stepKey]int64{}, map[stepKey]int64{}
	err = s.Scan("cpu_operations_timing", func(r *report.Rows) error {
		ts, ok := r.TS()
		if !ok {
			return nil
		}
		p := b.process(r)
		d, _ := r.Float("cpu_ms")
		op := r.Str("operation")
		b.add(Event{Kind: Slice, Track: b.track(p, "cpu: "+op, false, ""), Name: b.intern(op), Table: "cpu_operations_timing",
			StartNS: ts - ms(d), EndNS: ts, Args: packArgs("cpu_ms", r.Str("cpu_ms"), "step", r.Str("step"))})
		if step, ok := r.Int("step"); ok && step >= 0 {
			k := stepKey{p.Key, step}
			switch op {
			case "schedule":
				begin[k] = ts - ms(d)
			case "update_from_output":
				end[k] = ts
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = s.Scan("batch_utilization", func(r *report.Rows) error {
		ts, ok := r.TS()
		if !ok {
			return nil
		}
		p := b.process(r)
		step, _ := r.Int("step")
		k := stepKey{p.Key, step}
		st, en := ts, ts
		if v, ok := begin[k]; ok && v < st {
			st = v
		}
		if v, ok := end[k]; ok && v > en {
			en = v
		}
		b.add(Event{Kind: Slice, Track: b.track(p, "engine steps", false, ""), Name: "step " + strconv.FormatInt(step, 10), Table: "batch_utilization",
			StartNS: st, EndNS: en, Args: packArgs("scheduled_tokens", r.Str("scheduled_tokens"), "running_reqs", r.Str("running_reqs"), "waiting", r.Str("waiting"))})
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = s.Scan("forward_pass_timing", func(r *report.Rows) error {
		ts, ok := r.TS()
		if !ok {
			return nil
		}
		p := b.process(r)
		d, _ := r.Float("cpu_ms")
		args := packArgs("cpu_ms", r.Str("cpu_ms"), "gpu_ms", r.Str("gpu_ms"), "gpu_status", r.Str("gpu_status"), "tokens", r.Str("tokens"),
			"runtime_mode", r.Str("runtime_mode"), "step", r.Str("step"))
		b.add(Event{Kind: Slice, Track: b.track(p, "forward passes", false, ""), Name: b.intern("forward " + r.Str("runtime_mode")), Table: "forward_pass_timing",
			StartNS: ts - ms(d), EndNS: ts, Args: args})
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = s.Scan("preemption_events", func(r *report.Rows) error {
		ts, ok := r.TS()
		if !ok {
			return nil
		}
		p := b.process(r)
		b.add(Event{Kind: Instant, Track: b.track(p, "preemptions", false, ""), Name: "preempt " + r.Str("request_id"), Table: "preemption_events", StartNS: ts,
			Args: packArgs("tokens_lost", r.Str("tokens_lost"), "kv_usage", r.Str("kv_usage"), "source", r.Str("source"))})
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = s.Scan("cuda_graph_captures", func(r *report.Rows) error {
		ts, ok := r.TS()
		if !ok {
			return nil
		}
		p := b.process(r)
		b.add(Event{Kind: Instant, Track: b.track(p, "CUDA graph captures", false, ""), Name: b.intern(fmt.Sprintf("capture %s %s tokens", r.Str("mode"), r.Str("num_tokens"))),
			Table: "cuda_graph_captures", StartNS: ts, Args: packArgs("cpu_ms", r.Str("cpu_ms"), "graph_bytes", r.Str("graph_bytes"))})
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = s.Scan("kv_cache_usage", func(r *report.Rows) error {
		ts, ok1 := r.TS()
		u, ok2 := r.Float("usage")
		if !ok1 || !ok2 {
			return nil
		}
		p := b.process(r)
		b.add(Event{Kind: Counter, Track: b.track(p, "KV cache usage", true, "fraction"), Name: "KV cache usage", Table: "kv_cache_usage", StartNS: ts, Value: u})
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = s.Scan("gpu_metrics", func(r *report.Rows) error {
		ts, ok1 := r.TS()
		u, ok2 := r.Float("util_gpu")
		if !ok1 || !ok2 {
			return nil
		}
		p := b.process(r)
		name := "GPU " + r.Str("gpu_index") + " utilisation"
		b.add(Event{Kind: Counter, Track: b.track(p, name, true, "percent"), Name: b.intern(name), Table: "gpu_metrics", StartNS: ts, Value: u})
		return nil
	})
	if err != nil {
		return nil, err
	}
	b.settle()
	return b.tl, nil
}

// settle sorts every track's events by time and moves slices that would overlap an earlier slice
// of their track only partly onto lane tracks, so each track's slices nest or follow each other.
func (b *builder) settle() {
	sort.SliceStable(b.tl.Events, func(i, j int) bool {
		a, c := b.tl.Events[i], b.tl.Events[j]
		if a.StartNS != c.StartNS {
			return a.StartNS < c.StartNS
		}
		return a.EndNS > c.EndNS // the enclosing slice first
	})
	open := map[*Track][]int64{} // per lane track: ends of the slices still open, outermost first
	for i := range b.tl.Events {
		e := &b.tl.Events[i]
		if e.Kind != Slice {
			continue
		}
		base := e.Track
		k := base.Process.Key + "\x00" + base.Name
		for i := 0; ; i++ {
			if i == len(b.tracks[k]) {
				b.lanes[base.Process]++
				t := &Track{UUID: uuidOf("track", base.Process.Key, base.Name, strconv.Itoa(i)), Name: fmt.Sprintf("%s #%d", base.Name, i+1),
					Process: base.Process, Lane: b.lanes[base.Process]}
				b.tracks[k] = append(b.tracks[k], t)
				b.tl.Tracks = append(b.tl.Tracks, t)
			}
			t := b.tracks[k][i]
			st := open[t]
			for len(st) > 0 && st[len(st)-1] <= e.StartNS {
				st = st[:len(st)-1]
			}
			if len(st) == 0 || e.EndNS <= st[len(st)-1] {
				open[t] = append(st, e.EndNS)
				e.Track = t
				break
			}
			open[t] = st
		}
	}
}

// ColumnType returns the proto/tables type of a session CSV column ("int", "float", "string",
// "bool"); ts_aligned_ns is an int. ok is false for a column the schema does not know.
func ColumnType(table, col string) (string, bool) {
	if col == "ts_aligned_ns" {
		return proto.TypeInt, true
	}
	for _, c := range proto.Default().Common {
		if c.Name == col {
			return c.Type, true
		}
	}
	sc, ok := proto.Default().Table(table)
	if !ok {
		return "", false
	}
	c, ok := sc.Col(col)
	return c.Type, ok
}
