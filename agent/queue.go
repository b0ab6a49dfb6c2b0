package agent

import (
	"sync"
)

// queue holds what waits for the stream, oldest first: a bounded memory queue and behind it the
// disk spool. Every message in memory is older than every spooled one: a message goes to memory
// only while the spool is empty, and the sender reads the spool only once memory is empty.
type queue struct {
	mu       sync.Mutex
	mem      []Msg
	memBytes int64
	memMax   int64
	spool    *spool // nil: no disk, drops once memory is full
	fromMem  bool   // where the last peek came from
	wake     chan struct{}

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
	if !q.closed && spoolEmpty && q.memBytes+sz <= q.memMax {
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
	Dropped, DroppedBytes int64
	SpoolErr              string
}

func (q *queue) stats() queueStats {
	q.mu.Lock()
	defer q.mu.Unlock()
	st := queueStats{MemMsgs: int64(len(q.mem)), MemBytes: q.memBytes, Dropped: q.dropped, DroppedBytes: q.droppedBytes}
	if q.spool != nil {
		st.SpoolMsgs, st.SpoolBytes, st.SpoolLimit = q.spool.count, q.spool.bytes, q.spool.max
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
