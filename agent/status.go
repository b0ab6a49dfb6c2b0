package agent

import (
	"bytes"
	"encoding/json"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	pmproto "github.com/profilemate/profilemate/proto"
)

// Status is the agent's answer to an admin status request.
type Status struct {
	Host      string          `json:"host"`
	Version   string          `json:"version"`
	UptimeS   float64         `json:"uptime_s"`
	Processes []ProcStatus    `json:"processes"`
	Sessions  []SessionStatus `json:"sessions"`
	NATS      NATSStatus      `json:"nats"`
	Spool     SpoolStatus     `json:"spool"`
	Events    int64           `json:"events"`
	Dupes     int64           `json:"duplicates"`
	BadLines  int64           `json:"bad_lines"`
	// RejectedEvents counts events refused by the contract's checks (proto.Reason*: unknown_kind,
	// unknown_table, unknown_column, bad_value, bad_cols); their batches' other events were kept.
	RejectedEvents map[string]int64 `json:"rejected_events,omitempty"`
	// Dropped counts messages the agent lost (memory queue and spool full).
	Dropped int64        `json:"dropped"`
	Socket  SocketStatus `json:"socket"`
	Memory  MemoryStatus `json:"memory"`
	// Clock is the measured offset to the hub's clock (nil until measured).
	Clock *ClockStatus `json:"clock,omitempty"`
	// Extra holds what status providers add (GPUs, clock offset); its keys appear at the top level.
	Extra map[string]any `json:"-"`
}

// SocketStatus is the socket's use against its limits.
type SocketStatus struct {
	Connections        int   `json:"connections"`
	MaxConnections     int   `json:"max_connections"`
	RefusedConnections int64 `json:"refused_connections"` // closed at accept: over max_connections
	MaxLineBytes       int   `json:"max_line_bytes"`
	BufferedBytes      int64 `json:"buffered_bytes"` // held by incomplete long lines, all connections
	MaxBufferedBytes   int64 `json:"max_buffered_bytes"`
	OverBudgetLines    int64 `json:"over_budget_lines"` // discarded: max_buffered_bytes reached
	ReadBytes          int64 `json:"read_bytes"`        // read from every connection since start
}

// MemoryStatus is the agent's own memory (Go runtime and /proc/self/statm), in bytes.
type MemoryStatus struct {
	HeapInuseBytes int64 `json:"heap_inuse_bytes"`
	RSSBytes       int64 `json:"rss_bytes"`
}

// ClockStatus is hub clock − agent clock.
type ClockStatus struct {
	OffsetNS      int64 `json:"offset_ns"`
	UncertaintyNS int64 `json:"uncertainty_ns"`
}

// ProcStatus is one shim process as the agent sees it.
type ProcStatus struct {
	Pid       int    `json:"pid"`
	Role      string `json:"role"`
	Session   string `json:"session"`
	Proc      string `json:"proc"`
	DP        int    `json:"dp"`
	PP        int    `json:"pp"`
	TP        int    `json:"tp"`
	EP        int    `json:"ep"`
	Rank      int    `json:"rank"`
	Events    int64  `json:"events"`
	Dropped   uint64 `json:"dropped"`
	VLLM      string `json:"vllm"`
	GPUUUID   string `json:"gpu_uuid"`
	Connected bool   `json:"connected"`
	Gone      bool   `json:"gone"`
	// PeerPID is the pid of the process bound to this entry, in the agent's pid namespace
	// (SO_PEERCRED of the connection that said hello); 0 when unknown.
	PeerPID int `json:"peer_pid"`
	PeerUID int `json:"peer_uid"`
	// EndState is how it ended once gone: clean, lost or killed (EndSignal: the signal).
	EndState  string `json:"end_state,omitempty"`
	EndSignal string `json:"end_signal,omitempty"`
	// Profilers is the per-kind profiler state of this process that differs from "on since start":
	// every kind switched at run time (pmhub profilers on|off, forwarded on pm.v1.ctl) and every
	// kind its last status line reported switched off; sorted by kind, absent when none.
	Profilers []ProfilerState `json:"profilers,omitempty"`
}

// Who switched a profiler kind (ProfilerState.By).
const (
	SwitchedByHub     = "pmhub"                 // a Control on pm.v1.ctl (pmhub profilers, or a plugin's need)
	SwitchedByStartup = "PROFILEMATE_PROFILERS" // off from the process's start (its environment)
)

// ProfilerState is one profiler kind's state in one process.
type ProfilerState struct {
	Kind    string `json:"kind"`
	Enabled bool   `json:"enabled"`
	By      string `json:"by"`              // SwitchedByHub or SwitchedByStartup
	AtNS    int64  `json:"at_ns,omitempty"` // when the agent forwarded the switch (agent clock, Unix ns); 0 at start-up
}

// profilerStates merges the switches forwarded to a process with the kinds its status line
// reported off: a forwarded switch wins (the status line after it may still be on its way).
func profilerStates(switches map[string]ProfilerState, reportedOff []string) []ProfilerState {
	var out []ProfilerState
	for _, s := range switches {
		out = append(out, s)
	}
	for _, k := range reportedOff {
		if _, ok := switches[k]; !ok {
			out = append(out, ProfilerState{Kind: k, By: SwitchedByStartup})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Kind < out[j].Kind })
	return out
}

// switchedOffKinds are the kinds a status line's targets report switched off (status "disabled",
// reason "profiler switched off: k1,k2", as the shim's runtime writes it), sorted and unique.
func switchedOffKinds(ts []pmproto.Target) []string {
	seen := map[string]bool{}
	var out []string
	for _, t := range ts {
		if t.Status != "disabled" {
			continue
		}
		_, list, ok := strings.Cut(t.Reason, "switched off:")
		if !ok {
			continue
		}
		for _, k := range strings.Split(list, ",") {
			if k = strings.TrimSpace(k); k != "" && !seen[k] {
				seen[k] = true
				out = append(out, k)
			}
		}
	}
	sort.Strings(out)
	return out
}

// SessionStatus is one session the agent assigned.
type SessionStatus struct {
	ID    string `json:"id"`
	Live  int    `json:"live"`
	Ended bool   `json:"ended"`
}

// NATSStatus is the agent's link to the stream.
type NATSStatus struct {
	URL       string `json:"url"`
	Connected bool   `json:"connected"`
	Stream    string `json:"stream"`
	StreamOK  bool   `json:"stream_ok"`
	Published int64  `json:"published"`
	Error     string `json:"error"`
}

// SpoolStatus is what waits for the stream.
type SpoolStatus struct {
	Dir          string `json:"dir"`
	Bytes        int64  `json:"bytes"`
	LimitBytes   int64  `json:"limit_bytes"`
	Batches      int64  `json:"batches"`
	MemBatches   int64  `json:"mem_batches"`
	MemBytes     int64  `json:"mem_bytes"`
	DroppedBytes int64  `json:"dropped_bytes"`
	// UnsyncedBytes were appended to the spool but not yet fsynced (at most one sync interval).
	UnsyncedBytes int64 `json:"unsynced_bytes"`
	// StreamDown: the stream is unreachable, so new messages go straight to disk.
	StreamDown bool             `json:"stream_down"`
	DeadLetter DeadLetterStatus `json:"dead_letters"`
	Error      string           `json:"error,omitempty"`
}

// MarshalJSON writes the fields and then every Extra key at the top level.
func (s Status) MarshalJSON() ([]byte, error) {
	type plain Status
	b, err := json.Marshal(plain(s))
	if err != nil || len(s.Extra) == 0 {
		return b, err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	for k, v := range s.Extra {
		raw, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		m[k] = raw
	}
	return json.Marshal(m)
}

// StatusProvider adds to a status answer (GPU list, clock offset, …).
type StatusProvider func(*Status)

var (
	providersMu sync.Mutex
	providers   []StatusProvider
)

// RegisterStatus adds a provider consulted for every status answer.
func RegisterStatus(p StatusProvider) {
	providersMu.Lock()
	providers = append(providers, p)
	providersMu.Unlock()
}

// Status returns what the agent sees now.
func (a *Agent) Status() Status {
	qs := a.q.stats()
	st := Status{
		Host: a.cfg.Host, Version: a.cfg.Version, UptimeS: time.Since(a.started).Seconds(),
		Events: a.events.Load(), Dupes: a.dupes.Load(), BadLines: a.badLines.Load(), Dropped: qs.Dropped,
		RejectedEvents: a.rejected.snapshot(),
		NATS: NATSStatus{URL: a.cfg.NATS.URL, Connected: a.pub.connected.Load(), Stream: StreamName,
			StreamOK: a.pub.streamOK.Load(), Published: a.pub.published.Load(), Error: a.pub.lastError()},
		Spool: SpoolStatus{Dir: a.cfg.SpoolDir, Bytes: qs.SpoolBytes, LimitBytes: qs.SpoolLimit, Batches: qs.SpoolMsgs,
			MemBatches: qs.MemMsgs, MemBytes: qs.MemBytes, DroppedBytes: qs.DroppedBytes, Error: qs.SpoolErr,
			UnsyncedBytes: qs.SpoolUnsynced, StreamDown: qs.Down, DeadLetter: a.dead.status()},
		Processes: []ProcStatus{}, Sessions: []SessionStatus{},
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	st.Memory = MemoryStatus{HeapInuseBytes: int64(ms.HeapInuse), RSSBytes: rssBytes()}
	st.Socket = SocketStatus{MaxConnections: a.cfg.MaxConns, RefusedConnections: a.refusedConns.Load(),
		MaxLineBytes: a.cfg.MaxLine, BufferedBytes: a.budget.used.Load(), MaxBufferedBytes: a.budget.max,
		OverBudgetLines: a.overBudget.Load(), ReadBytes: a.readBytes.Load()}
	if a.clock != nil {
		if off, unc, ok := a.clock.HeartbeatFields(); ok {
			st.Clock = &ClockStatus{OffsetNS: off, UncertaintyNS: unc}
		}
	}
	a.mu.Lock()
	for _, p := range a.procs {
		ps := ProcStatus{Pid: p.pid, Role: p.ident.Role, Session: p.sess.id, Proc: p.token, DP: p.ident.DP, PP: p.ident.PP,
			TP: p.ident.TP, EP: p.ident.EP, Rank: p.ident.Rank, Events: p.events, Dropped: p.dropped,
			Connected: p.conn != nil, Gone: p.bye, PeerPID: int(p.peer.Pid), PeerUID: int(p.peer.UID),
			EndState: p.endState, EndSignal: p.endSignal, Profilers: profilerStates(p.switches, p.reportedOff)}
		if p.hello != nil {
			ps.VLLM, ps.GPUUUID = p.hello.VLLM, p.hello.GPUUUID
		}
		st.Processes = append(st.Processes, ps)
	}
	st.Socket.Connections = len(a.conns)
	for _, s := range a.sessions {
		st.Sessions = append(st.Sessions, SessionStatus{ID: s.id, Live: s.live, Ended: s.ended})
	}
	a.mu.Unlock()
	sort.Slice(st.Processes, func(i, j int) bool { return st.Processes[i].Pid < st.Processes[j].Pid })
	sort.Slice(st.Sessions, func(i, j int) bool { return st.Sessions[i].ID < st.Sessions[j].ID })
	providersMu.Lock()
	ps := append([]StatusProvider(nil), providers...)
	providersMu.Unlock()
	for _, p := range ps {
		p(&st)
	}
	return st
}

// rssBytes is the resident set size from /proc/self/statm (0 where there is none).
func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := bytes.Fields(b)
	if len(f) < 2 {
		return 0
	}
	pages, err := strconv.ParseInt(string(f[1]), 10, 64)
	if err != nil {
		return 0
	}
	return pages * int64(os.Getpagesize())
}
