package agent

import (
	"time"

	pmproto "github.com/profilemate/profilemate/proto"
)

// Adaptive batching. A busy shim connection brings many batch lines per socket read; the events
// of the lines already read wait in the connection's pending set and leave together, as one
// stream message per process and kind (split at MaxBatchData), with one acknowledgement per
// process. The set is flushed when no whole line is left in the read buffer (so an idle or
// lightly loaded shim sees no added delay: its line is queued before the agent waits for the
// next), before any line that is not a batch (hello, status, bye and admin lines stay in order
// with the events before them), when the connection ends, and at pendMaxBytes or pendMaxAge,
// which bound the delay and the memory under a continuous stream. Message size thus follows the
// load: one line per message when lines arrive one at a time, up to pendMaxBytes when the
// socket is full.

// Bounds of one connection's pending events.
const (
	pendMaxBytes = 256 << 10             // encoded event bytes
	pendMaxAge   = 20 * time.Millisecond // since the first pending event was accepted
)

// pending holds a connection's accepted events that are not queued yet.
type pending struct {
	procs []pendProc
	bytes int
	since time.Time
}

// pendProc is one process's part: its events in order, the seq to acknowledge once they are
// queued, and the head their messages carry.
type pendProc struct {
	head BatchHead
	evs  []pmproto.EncodedEvent
	ack  uint64
}

// full reports whether the pending events reached a bound and must leave now.
func (p *pending) full() bool {
	return p.bytes >= pendMaxBytes || (len(p.procs) > 0 && time.Since(p.since) >= pendMaxAge)
}

// add puts a line's checked events for head's process into c's pending set, with the line's
// last seq to acknowledge. A process whose head changed since its pending events were accepted
// (another session, token or ranks) has them queued first, so every message keeps the head its
// events were accepted under; only the cumulative drop count is taken from the newest line.
func (a *Agent) add(c *conn, head *BatchHead, evs []pmproto.EncodedEvent, ack uint64) {
	p := &c.pend
	var pp *pendProc
	for i := range p.procs {
		if p.procs[i].head.PID == head.PID {
			pp = &p.procs[i]
			break
		}
	}
	if pp != nil {
		old := pp.head
		old.Dropped = head.Dropped
		if old != *head {
			a.flush(c)
			pp = nil
		}
	}
	if pp == nil {
		if len(p.procs) == 0 {
			p.since = time.Now()
		}
		p.procs = append(p.procs, pendProc{evs: p.spare()})
		pp = &p.procs[len(p.procs)-1]
	}
	pp.head = *head
	pp.evs = append(pp.evs, evs...)
	pp.ack = max(pp.ack, ack)
	for i := range evs {
		p.bytes += len(evs[i].Data)
	}
}

// spare returns an empty event slice, reusing the backing array a flushed process left behind.
func (p *pending) spare() []pmproto.EncodedEvent {
	if n := len(p.procs); n < cap(p.procs) {
		if s := p.procs[:n+1][n].evs; s != nil {
			return s[:0]
		}
	}
	return nil
}

// flush queues c's pending events, one message per process and kind, and acknowledges each
// process's lines when all its messages were queued.
func (a *Agent) flush(c *conn) {
	p := &c.pend
	for i := range p.procs {
		pp := &p.procs[i]
		queued := true
		for _, m := range splitBatch(&pp.head, pp.evs) {
			queued = a.q.push(m) && queued
		}
		if queued {
			a.ackSeq(c, pp.head.PID, pp.ack)
		}
		// Counted once queued: status events == N means all N are in memory or in the spool.
		a.events.Add(int64(len(pp.evs)))
		clear(pp.evs) // let go of the encoded events (their bytes belong to each line's encoding)
		pp.evs, pp.ack = pp.evs[:0], 0
	}
	p.procs = p.procs[:0]
	p.bytes = 0
}
