package hub

import "github.com/profilemate/profilemate/proto"

// The hub's own view of what arrives on the stream, independent of the wire encoding: wire.go (and
// its fast path fastwire.go) turns protobuf messages into these, the session writer consumes only
// these.

// Ident is who a process is inside the deployment. Unknown ranks are -1.
type Ident struct {
	Role string `json:"role"`
	DP   int64  `json:"dp"`
	PP   int64  `json:"pp"`
	TP   int64  `json:"tp"`
	EP   int64  `json:"ep"`
	Rank int64  `json:"rank"`
}

// Event is one row: its table, its place in the process's sequence and its own columns already
// formatted as CSV field text in the table's column order.
type Event struct {
	Table string
	Seq   uint64
	Step  int64
	TsNS  int64
	Cols  []string
}

// Batch is one published EventBatch: events of one process and one kind.
type Batch struct {
	Session string
	Host    string
	Proc    string
	PID     int64
	// Instance is the shim's per-start id (empty from older shims): with Host and PID it names
	// the process whose seen-state dedupes these events.
	Instance string
	Kind     string
	Ident    Ident
	Events   []Event
	Dropped  uint64 // events the process dropped so far (cumulative)
	// Rejected are the message's events the contract refused (wrong kind or table, a value of the
	// wrong type), each with its proto.Reason*; Events holds the others. The consumer counts them
	// by reason (Counters.Bad) and may dead-letter them.
	Rejected []*proto.EventError
	// InstanceKey and NodeRank (decimal) are the process's place in its multi-node instance as the
	// session's metadata knows it when the batch is written ("" when unknown); set by the hub for
	// Config.Observe, not on the wire.
	InstanceKey, NodeRank string
}

// Target is the patch status of one vLLM target inside a process.
type Target struct {
	Target string `json:"target"`
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"`
}

// TableStatus is one CSV table's status in a process, as its shim reports it: recorded, no
// events, disabled, "unavailable: needs CUDA events", "not in this vLLM era", "not in this
// process" or "failed: <reason>".
type TableStatus struct {
	Table  string `json:"table"`
	Status string `json:"status"`
}

// Life is a process lifecycle record: hello (start), status (patch results), bye/end (exit).
type Life struct {
	Session string
	Host    string
	Proc    string
	PID     int64
	// Instance is the shim's per-start id (empty from older shims and agent records).
	Instance string
	Type     string // LifeHello, LifeStatus, LifeBye
	Ident    Ident
	PPID     int64
	Python   string
	VLLM     string
	GPUUUID  string
	Title    string
	Argv     []string
	StartNS  int64
	Targets  []Target
	Tables   []TableStatus // LifeStatus: why each table has rows or not in the process
	Dropped  uint64        // bye: the process's drops; end: all shims' drops on the host
	LastSeq  uint64
	EndNS    int64
	Clean    bool // bye: the shim said goodbye (false: its connection just ended)
	// EndState (bye): clean, lost or killed — an older agent's empty value reads as clean when
	// Clean is set, else lost; EndSignal: the signal of a killed process.
	EndState  string
	EndSignal string

	AgentVersion string // start
	AgentDropped uint64 // end: messages the agent could not keep
	Reason       string // end

	// InstanceKey and NodeRank place the process in its multi-node instance (docs/multinode.md);
	// "" and -1 when the agent did not say (single-host instances, older agents).
	InstanceKey string
	NodeRank    int64
}

// Lifecycle record types.
const (
	LifeStart  = "start" // a host's agent opened the session
	LifeHello  = "hello"
	LifeStatus = "status"
	LifeBye    = "bye"
	LifeEnd    = "end" // a host's agent closed the session
)

// Heartbeat is an agent's periodic sign of life with its host's measured clock offset to the hub
// (hub time ≈ host time + OffsetNS).
type Heartbeat struct {
	Host          string
	TsNS          int64
	OffsetNS      int64
	UncertaintyNS int64
	Measured      bool
	AgentVersion  string
	AgentDropped  uint64
	ShimDropped   uint64
}

// learn takes every field src knows (a role, a rank >= 0) into id, so ranks a process learns after
// its hello (vLLM sets them in Worker.__init__) reach the metadata, and an unknown value never
// overwrites a known one. It reports whether id changed.
func (id *Ident) learn(src Ident) bool {
	before := *id
	if src.Role != "" {
		id.Role = src.Role
	}
	for _, f := range []struct {
		dst *int64
		v   int64
	}{{&id.DP, src.DP}, {&id.PP, src.PP}, {&id.TP, src.TP}, {&id.EP, src.EP}, {&id.Rank, src.Rank}} {
		if f.v >= 0 {
			*f.dst = f.v
		}
	}
	return *id != before
}
