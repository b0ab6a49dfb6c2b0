package hub

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// MetadataFile is the name of a session's summary inside its folder.
const MetadataFile = "metadata.json"

// Session statuses and end reasons written to metadata.json.
const (
	StatusActive = "active"
	StatusEnded  = "ended"

	EndAllProcessesEnded = "all-processes-ended"
	EndIdle              = "idle"
	// EndRotated ends one segment of a session that goes on in the next (segments.go).
	EndRotated = "rotated"
)

// Metadata is a session's metadata.json: what the session is, who took part and how complete it
// is. pmhub sessions/show read it with ReadMetadata.
type Metadata struct {
	SchemaVersion string `json:"schema_version"`
	Session       string `json:"session"`
	Status        string `json:"status"`
	EndReason     string `json:"end_reason,omitempty"`
	StartNS       int64  `json:"start_ns"`
	EndNS         int64  `json:"end_ns,omitempty"`
	// TimeAlignment says how ts_aligned_ns was derived from ts_ns.
	TimeAlignment string               `json:"time_alignment"`
	Hosts         map[string]*HostMeta `json:"hosts"`
	Processes     []*ProcMeta          `json:"processes"`
	Rows          map[string]int64     `json:"rows"`
	Bytes         int64                `json:"bytes"`
	// MaxBytes is the per-session size cap in force; rows beyond it are counted in DroppedByCap.
	MaxBytes     int64 `json:"max_bytes"`
	DroppedByCap int64 `json:"dropped_by_cap"`
	// Duplicates counts rows that arrived again (redelivery, republish) and were written once.
	Duplicates int64 `json:"duplicates"`
	// AlignedClamped counts rows whose ts_aligned_ns left [0, 2^63-1] (a wild clock offset or a
	// ts near the int64 limit) and was clamped to that range.
	AlignedClamped int64 `json:"aligned_clamped,omitempty"`
	// Segment is set when the hub rotates sessions (Config.RotateEvery, RotateBytes): this folder
	// is one segment of the logical session Session, and Rows, Bytes, DroppedByCap, Duplicates,
	// AlignedClamped and each process's Rows count this segment alone (segments.go).
	Segment *SegmentMeta `json:"segment,omitempty"`
	// Window is set only in a folder that CopyWindow assembled from several segments or a time
	// range: which segments and which range of ts_aligned_ns it holds.
	Window *WindowMeta `json:"window,omitempty"`
	// Instances are the multi-node instance keys of the session's processes, sorted
	// (docs/multinode.md: "mp:<addr>:<port>", "dp:<addr>:<port>", "ray:<session>"); empty when no
	// agent named one (single-host instances).
	Instances []string `json:"instances,omitempty"`
}

// SegmentMeta is one segment of a rotated session. Rows go to the segment that is live when they
// arrive, so a step's rows from several processes may straddle a boundary; each process's
// EarlierSeqs records exactly where its boundary lies.
type SegmentMeta struct {
	// Index counts the logical session's segments from 0.
	Index int `json:"index"`
	// Previous is the folder name (under <data>/sessions/) of segment Index-1; empty for the first.
	Previous string `json:"previous,omitempty"`
	// StartNS and EndNS are the hub's clock (Unix ns) when the segment was opened and closed
	// (EndNS 0 while it is live).
	StartNS int64 `json:"start_ns"`
	EndNS   int64 `json:"end_ns,omitempty"`
	// FirstAlignedNS and LastAlignedNS are the smallest and largest ts_aligned_ns of its rows (both
	// 0 while it has none): what a time range across segments selects segments by.
	FirstAlignedNS int64 `json:"first_ts_aligned_ns"`
	LastAlignedNS  int64 `json:"last_ts_aligned_ns"`
	// Rotated says what closed it: "age" (Config.RotateEvery) or "bytes" (Config.RotateBytes).
	Rotated string `json:"rotated,omitempty"`
}

// WindowMeta describes a folder CopyWindow assembled: the segment folders read (oldest first) and
// the ts_aligned_ns range kept, [SinceNS, UntilNS) (0: open on that side).
type WindowMeta struct {
	Segments []string `json:"segments"`
	SinceNS  int64    `json:"since_ns,omitempty"`
	UntilNS  int64    `json:"until_ns,omitempty"`
}

// HostMeta is one host of a session with its clock offset to the hub (hub ≈ host + offset).
type HostMeta struct {
	OffsetNS      int64 `json:"offset_ns"`
	UncertaintyNS int64 `json:"uncertainty_ns"`
	// Measured is false while no heartbeat with a measured offset arrived: ts_aligned_ns = ts_ns.
	Measured     bool   `json:"measured"`
	LastSeenNS   int64  `json:"last_seen_ns"`
	Heartbeats   int64  `json:"heartbeats"`
	AgentVersion string `json:"agent_version,omitempty"`
	// AgentDropped: messages the host's agent could not keep; ShimDropped: events all its
	// processes dropped (both as the agent last reported them).
	AgentDropped uint64 `json:"agent_dropped"`
	ShimDropped  uint64 `json:"shim_dropped"`
	// Started and Ended are set when the host's agent opened and closed the session.
	Started   bool   `json:"started"`
	Ended     bool   `json:"ended"`
	EndReason string `json:"end_reason,omitempty"`
	// NodeRank is the host's node rank in the session's multi-node instance, when every process
	// of the host that has one agrees (ProcMeta.NodeRank); absent otherwise.
	NodeRank *int64 `json:"node_rank,omitempty"`
}

// ProcMeta is one process of a session.
type ProcMeta struct {
	Host string `json:"host"`
	PID  int64  `json:"pid"`
	// Instance is the shim's per-start id (16 hex digits; empty from older shims).
	Instance string `json:"instance,omitempty"`
	Proc     string `json:"proc"`
	Ident           // role and ranks: rank is the global rank of a worker (the w<rank> token)
	// InstanceKey is the multi-node vLLM instance the process belongs to and NodeRank the node of
	// that instance its host is (docs/multinode.md); absent when its agent did not say.
	InstanceKey string   `json:"instance_key,omitempty"`
	NodeRank    *int64   `json:"node_rank,omitempty"`
	PPID        int64    `json:"ppid,omitempty"`
	GPUUUID     string   `json:"gpu_uuid,omitempty"`
	Python      string   `json:"python,omitempty"`
	VLLM        string   `json:"vllm,omitempty"`
	Title       string   `json:"title,omitempty"`
	Argv        []string `json:"argv,omitempty"`
	StartNS     int64    `json:"start_ns,omitempty"`
	Ended       bool     `json:"ended"`
	EndNS       int64    `json:"end_ns,omitempty"`
	// EndState is how the process ended: clean (it said goodbye), lost (its connection or pid went
	// away without one, or its host's agent closed the session first), killed (its parent saw a
	// signal end it: EndSignal, e.g. "SIGKILL"). Empty while it runs.
	EndState  string   `json:"end_state,omitempty"`
	EndSignal string   `json:"end_signal,omitempty"`
	Targets   []Target `json:"targets,omitempty"`
	// Tables says why each CSV table has rows or not in this process (from its shim's status).
	Tables []TableStatus `json:"tables,omitempty"`
	// Dropped is the number of events the process itself dropped (full buffer), as it reported.
	Dropped uint64 `json:"dropped"`
	// LastSeq is the last sequence number the process reported at exit (0 while running).
	LastSeq uint64 `json:"last_seq,omitempty"`
	// Gaps are sequence ranges never received: dropped in the process or lost on the way.
	Gaps [][2]uint64 `json:"gaps"`
	// EarlierSeqs are the sequence ranges (closed, ascending) of this process written in earlier
	// segments of a rotated session: the process's boundary, and what keeps a redelivered event
	// from being written again in a later segment. Absent in sessions that never rotated.
	EarlierSeqs [][2]uint64 `json:"earlier_seqs,omitempty"`
	// Rows per table written for this process.
	Rows map[string]int64 `json:"rows"`
}

// ReadMetadata reads <dir>/metadata.json.
func ReadMetadata(dir string) (*Metadata, error) {
	b, err := os.ReadFile(filepath.Join(dir, MetadataFile))
	if err != nil {
		return nil, fmt.Errorf("read session metadata: %w", err)
	}
	var m Metadata
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("parse %s: %w", filepath.Join(dir, MetadataFile), err)
	}
	return &m, nil
}

// writeFileAtomic writes b to path through a synced temporary file and a rename, so a crash leaves
// either the old or the new content.
func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s: %w", path, err)
	}
	return nil
}

func sortProcs(p []*ProcMeta) {
	sort.Slice(p, func(i, j int) bool {
		if p[i].Host != p[j].Host {
			return p[i].Host < p[j].Host
		}
		return p[i].PID < p[j].PID
	})
}
