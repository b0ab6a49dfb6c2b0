package agent

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	pmproto "github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

// The messages the agent publishes: event batches (one per process and kind, encoded by proto's
// shim-line codec from the events it checked) and lifecycle records. Subjects and message ids
// come from proto/ (docs/ARCHITECTURE.md "NATS").

// BatchHead is what an event batch says about its process and kind.
type BatchHead struct {
	Session string
	Host    string
	Proc    string
	PID     int
	// Instance is the shim's per-start id (empty from older shims); part of every message id.
	Instance string
	Kind     string
	Ident    pmproto.Ident
	Dropped  uint64 // events the process dropped so far (cumulative)
}

// batchMsgs groups checked events by kind (keeping their order) into one EventBatch message per
// kind, with its subject and Nats-Msg-Id.
func batchMsgs(head *BatchHead, evs []pmproto.EncodedEvent) []Msg {
	var msgs []Msg
	for len(evs) > 0 {
		kind := evs[0].Kind
		same := evs[:0:0]
		rest := evs[:0:0]
		size := 0
		for i := range evs {
			if evs[i].Kind == kind {
				same = append(same, evs[i])
				size += len(evs[i].Data) + 4
			} else {
				rest = append(rest, evs[i])
			}
		}
		id := pmproto.MsgID(head.Session, head.Host, int64(head.PID), head.Instance, kind, same[0].Seq, same[len(same)-1].Seq)
		h := pmproto.BatchHead{Session: head.Session, Host: head.Host, PID: int64(head.PID), Instance: head.Instance, Ident: head.Ident,
			Dropped: head.Dropped, BatchID: id}
		msgs = append(msgs, Msg{
			Subject: pmproto.EventSubject(head.Session, head.Host, head.Proc, kind),
			ID:      id,
			Data:    pmproto.AppendEventBatch(make([]byte, 0, size+192), &h, same),
		})
		evs = rest
	}
	return msgs
}

// Life is one lifecycle record of a process or a session.
type Life struct {
	Type         string // start, hello, status, bye, end
	Session      string
	Host         string
	Proc         string
	PID          int
	Instance     string // the shim's per-start id; empty from older shims and for agent records
	Ident        pmproto.Ident
	Hello        *pmproto.Hello
	Targets      []pmproto.Target
	Tables       []pmproto.TableStatus // status: why each table has rows or not
	Dropped      uint64                // shim drops (cumulative); for end: all drops of the session
	LastSeq      uint64
	EndNS        int64
	Clean        bool   // bye: the shim said bye (false: its connection just ended)
	EndState     string // bye: EndClean, EndLost or EndKilled
	EndSignal    string // bye, EndKilled: the signal's name (SIGKILL)
	Reason       string // end: why the session ended
	AgentVersion string // start
	// AgentDropped counts messages of this session the agent could not keep (queue and spool full).
	AgentDropped int64
	// InstanceKey and NodeRank place the process in its multi-node instance (instance.go:
	// layouts.fill); "" and nil when unknown.
	InstanceKey string
	NodeRank    *int32
}

func lifeProcess(l *Life) *pmpb.Process {
	id := l.Ident
	p := &pmpb.Process{Session: l.Session, Host: l.Host, Pid: int64(l.PID), Role: id.Role,
		Dp: int32(id.DP), Pp: int32(id.PP), Tp: int32(id.TP), Ep: int32(id.EP), Rank: int32(id.Rank),
		Instance: l.Instance, InstanceKey: l.InstanceKey, NodeRank: l.NodeRank}
	if h := l.Hello; h != nil {
		p.Ppid, p.Python, p.Vllm, p.GpuUuid, p.Title, p.StartNs, p.Argv = int64(h.PPID), h.Python, h.VLLM, h.GPUUUID, h.Title, h.StartNS, h.Argv
	}
	return p
}

// encodeLife encodes a Lifecycle message. Errors: an unknown record type.
func encodeLife(l *Life) ([]byte, error) {
	m := pmproto.Stamp(&pmpb.Lifecycle{Process: lifeProcess(l), TsNs: time.Now().UnixNano()})
	switch l.Type {
	case "start":
		m.Record = &pmpb.Lifecycle_Start{Start: &pmpb.Lifecycle_SessionStart{AgentVersion: l.AgentVersion, StartNs: l.EndNS}}
	case "hello":
		m.Record = &pmpb.Lifecycle_Hello_{Hello: &pmpb.Lifecycle_Hello{}}
	case "status":
		st := &pmpb.Lifecycle_Status{}
		for _, t := range l.Targets {
			st.Targets = append(st.Targets, &pmpb.TargetStatus{Target: t.Target, Status: t.Status, Reason: t.Reason})
		}
		for _, t := range l.Tables {
			st.Tables = append(st.Tables, &pmpb.TableStatus{Table: t.Table, Status: t.Status})
		}
		m.Record = &pmpb.Lifecycle_Status_{Status: st}
	case "bye":
		m.Record = &pmpb.Lifecycle_Bye_{Bye: &pmpb.Lifecycle_Bye{Dropped: l.Dropped, LastSeq: l.LastSeq, EndNs: l.EndNS, Clean: l.Clean,
			EndState: l.EndState, EndSignal: l.EndSignal}}
	case "end":
		m.Record = &pmpb.Lifecycle_End{End: &pmpb.Lifecycle_SessionEnd{EndNs: l.EndNS, ShimDropped: l.Dropped,
			AgentDropped: uint64(l.AgentDropped), Reason: l.Reason}}
	default:
		return nil, fmt.Errorf("unknown lifecycle record %q", l.Type)
	}
	return proto.Marshal(m)
}

// rejectCounts counts events refused by proto's checks, by reason (pmproto.Reason*).
type rejectCounts struct {
	mu sync.Mutex
	n  map[string]int64
}

// add counts refused events and logs them (rate-limited by lg).
func (r *rejectCounts) add(bad []*pmproto.EventError, log *slog.Logger, lg *rateLog) {
	if len(bad) == 0 {
		return
	}
	r.mu.Lock()
	if r.n == nil {
		r.n = map[string]int64{}
	}
	for _, e := range bad {
		r.n[e.Reason]++
	}
	r.mu.Unlock()
	lg.log(log, "refused events", "count", len(bad), "first", bad[0].Error())
}

// snapshot returns the counts by reason (nil when none).
func (r *rejectCounts) snapshot() map[string]int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.n) == 0 {
		return nil
	}
	out := make(map[string]int64, len(r.n))
	for k, v := range r.n {
		out[k] = v
	}
	return out
}
