package agent

import (
	"sync"
	"time"
)

// queue holds what waits for the stream, oldest first: a bounded memory queue and behind it the
// disk spool. Every message in memory is older than every spooled one: a message goes to memory
// only while the spool is empty, and the sender reads the spool only once memory is empty.
// While the stream is unreachable (down), messages go straight to the spool and what memory held
// is spilled in front of it, so a killed agent loses at most what arrived since the last sync.
type queue struct {
	mu       sync.Mutex
	mem      []Msg
	memBytes int64
	memMax   int64
	spool    *spool // nil: no disk, drops once memory is full
	fromMem  bool   // where the last peek came from
	wake     chan struct{}
	down     bool // the stream is unreachable: keep everything on disk

	dropped      int64 // messages lost because memory and spool were full
	droppedBytes int64
	spoolErr     error
	closed       bool
}

func newQueue(memMax int64, sp *spool) *queue {
	return &queue{memMax: memMax, spool: sp, wake: make(chan struct{}, 1)}
}

// push enqueues m; it never blocks: when memory and spool are full, m is counted as dropped.
func (q *queue) push(m Msg) (ok bool) {
	q.mu.Lock()
	defer func() {
		q.mu.Unlock()
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}()
	sz := m.size()
	spoolEmpty := q.spool == nil || q.spool.empty()
	if !q.closed && (!q.down || q.spool == nil) && spoolEmpty && q.memBytes+sz <= q.memMax {
		q.mem = append(q.mem, m)
		q.memBytes += sz
		return true
	}
	if q.spool != nil && q.spoolErr == nil {
		ok, err := q.spool.push(&m)
		if err != nil {
			q.spoolErr = err
		}
		if ok {
			return true
		}
	}
	q.dropped++
	q.droppedBytes += sz
	return false
}

// setDown says whether the stream is unreachable; while it is, push writes to the spool.
func (q *queue) setDown(down bool) {
	q.mu.Lock()
	q.down = down
	q.mu.Unlock()
}

// spill moves what memory holds in front of the spool (it is older than anything spooled) and
// fsyncs it. It is called by the sender between two sends, never while a peek from memory is in
// flight. When it does not all fit under the spool's limit, memory is left as it is so the order
// holds.
func (q *queue) spill() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.spool == nil || q.spoolErr != nil || len(q.mem) == 0 || q.spool.rseg >= 0 {
		return
	}
	var size int64
	for i := range q.mem {
		size += int64(len(appendRecord(nil, &q.mem[i])))
	}
	if q.spool.bytes+size+int64(spoolHdrSize) > q.spool.max {
		return
	}
	n, err := q.spool.pushFront(q.mem)
	if err != nil {
		q.spoolErr = err
		return
	}
	if n == len(q.mem) {
		q.mem, q.memBytes = nil, 0
	}
}

// syncEvery fsyncs what push appended to the spool every interval until stop is closed: a
// kill -9 loses at most one interval of what went to the spool.
func (q *queue) syncEvery(interval time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		q.mu.Lock()
		if q.spool != nil && q.spoolErr == nil && !q.closed {
			if err := q.spool.sync(); err != nil {
				q.spoolErr = err
			}
		}
		q.mu.Unlock()
	}
}

// peek returns up to n of the oldest messages, leaving them queued.
func (q *queue) peek(n int) []Msg {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.mem) > 0 {
		q.fromMem = true
		if n > len(q.mem) {
			n = len(q.mem)
		}
		return q.mem[:n:n]
	}
	q.fromMem = false
	if q.spool == nil || q.spoolErr != nil {
		return nil
	}
	msgs, err := q.spool.peek(n)
	if err != nil {
		q.spoolErr = err
	}
	return msgs
}

// pop removes the k oldest messages, which the last peek returned.
func (q *queue) pop(k int) {
	if k == 0 {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.fromMem {
		for i := 0; i < k; i++ {
			q.memBytes -= q.mem[i].size()
			q.mem[i] = Msg{}
		}
		q.mem = q.mem[k:]
		if len(q.mem) == 0 {
			q.mem = nil // let the backing array go
		}
		return
	}
	q.spool.pop(k)
}

type queueStats struct {
	MemMsgs, SpoolMsgs    int64
	MemBytes, SpoolBytes  int64
	SpoolLimit            int64
	SpoolUnsynced         int64
	Dropped, DroppedBytes int64
	Down                  bool
	SpoolErr              string
}

func (q *queue) stats() queueStats {
	q.mu.Lock()
	defer q.mu.Unlock()
	st := queueStats{MemMsgs: int64(len(q.mem)), MemBytes: q.memBytes, Dropped: q.dropped, DroppedBytes: q.droppedBytes, Down: q.down}
	if q.spool != nil {
		st.SpoolMsgs, st.SpoolBytes, st.SpoolLimit = q.spool.count, q.spool.bytes, q.spool.max
		st.SpoolUnsynced = q.spool.unsynced
	}
	if q.spoolErr != nil {
		st.SpoolErr = q.spoolErr.Error()
	}
	return st
}

func (q *queue) pending() int64 {
	st := q.stats()
	return st.MemMsgs + st.SpoolMsgs
}

// close stops taking messages into memory and persists what is left; it returns how many
// messages remain for a later run and how many could not be kept.
func (q *queue) close() (kept, lost int64, err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	if q.spool == nil {
		lost = int64(len(q.mem))
		q.dropped += lost
		q.mem = nil
		return 0, lost, nil
	}
	n, err := q.spool.close(q.mem)
	lost = int64(len(q.mem) - n)
	q.dropped += lost
	q.mem, q.memBytes = nil, 0
	return q.spool.count, lost, err
}
