package hub

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Run consumes the stream until ctx ends. Messages are acknowledged only after the rows they
// carried are written and synced, so a crash at any point leads to redelivery, and redelivered
// events already on disk are recognised by (host, pid, seq) and skipped.
func (s *Server) Run(ctx context.Context) error {
	if s.cl != nil {
		return s.runShared(ctx)
	}
	hk := time.NewTicker(time.Second)
	defer hk.Stop()
	lastRetention := time.Time{}
	for ctx.Err() == nil {
		// Take what is there at once; when nothing is, wait for one message so an idle hub
		// neither spins nor delays the first message of a burst.
		msgs, err := s.fetch(s.cfg.Fetch, true)
		if err == nil && len(msgs) == 0 {
			msgs, err = s.fetch(1, false)
		}
		if len(msgs) > 0 {
			s.process(msgs)
		}
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			s.log.Warn("fetch failed", "err", err)
			s.checkConsumer(ctx, true)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		// A consumer deleted by another client can leave fetches empty without an error.
		s.checkConsumer(ctx, false)
		select {
		case <-hk.C:
			s.housekeep(&lastRetention)
			s.persistIngest()
		default:
		}
	}
	s.mu.Lock()
	for id, ss := range s.sessions {
		if err := ss.commit(); err != nil {
			s.log.Error("final commit failed", "session", id, "err", err)
		}
	}
	s.mu.Unlock()
	s.persistIngest()
	return nil
}

func (s *Server) fetch(n int, noWait bool) ([]jetstream.Msg, error) {
	var b jetstream.MessageBatch
	var err error
	if noWait {
		b, err = s.ing.consumer().FetchNoWait(n)
	} else {
		b, err = s.ing.consumer().Fetch(n, jetstream.FetchMaxWait(500*time.Millisecond))
	}
	if err != nil {
		return nil, err
	}
	var msgs []jetstream.Msg
	for m := range b.Messages() {
		msgs = append(msgs, m)
	}
	if err := b.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, jetstream.ErrNoMessages) {
		s.log.Debug("fetch ended", "err", err)
		if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) {
			return msgs, err
		}
	}
	return msgs, nil
}

type decoded struct {
	v         any
	err       error
	oversized bool
}

// decodeAll decodes a fetch round's messages on every core: decoding is the costly, independent
// part; applying them stays sequential, in stream order.
func (s *Server) decodeAll(msgs []jetstream.Msg) []decoded {
	out := make([]decoded, len(msgs))
	workers := min(runtime.GOMAXPROCS(0), (len(msgs)+15)/16)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < len(msgs); i += workers {
				data := msgs[i].Data()
				if len(data) > s.cfg.MaxMsgBytes {
					out[i].oversized = true
					continue
				}
				out[i].v, out[i].err = s.cfg.Decoder.Decode(msgs[i].Subject(), data)
			}
		}(w)
	}
	wg.Wait()
	return out
}

type outcome struct {
	msg     jetstream.Msg
	session *session // commit of this session decides the ack; nil: ack at once
	err     error    // decided failure (term or nak)
}

// process handles one fetch round: decode and write every message, commit every touched session,
// then acknowledge.
func (s *Server) process(msgs []jetstream.Msg) {
	s.mu.Lock()
	now := s.cfg.Now()
	outs := make([]outcome, len(msgs))
	touched := map[*session]bool{}
	broken := map[*session]error{}
	var rows int64
	decoded := s.decodeAll(msgs)
	for i, m := range msgs {
		outs[i].msg = m
		ss, n, err := s.handle(m, decoded[i], now)
		rows += int64(n)
		if ss != nil {
			outs[i].session = ss
			touched[ss] = true
			if err != nil {
				broken[ss] = err
			}
		} else if err != nil {
			outs[i].err = err
		}
	}
	for ss := range touched {
		if broken[ss] != nil {
			continue
		}
		if err := ss.commit(); err != nil {
			broken[ss] = err
		}
	}
	// A session whose writes failed is dropped from memory: its seen-state may name rows that
	// never reached the disk. It is rebuilt from the files when its messages come again.
	for ss, err := range broken {
		s.cnt.bad(s.log, ReasonWrite, ss.id, err)
		ss.closeFiles()
		if s.sessions[ss.id] == ss {
			delete(s.sessions, ss.id)
		}
	}
	var ended []*session
	for ss := range touched {
		if broken[ss] == nil && ss.meta.Status == StatusEnded && len(ss.files) > 0 {
			ended = append(ended, ss)
		}
	}
	s.mu.Unlock()
	s.cnt.add(func(c *Counters) { c.Messages += int64(len(msgs)); c.Rows += rows })

	seqs, nakked := make([]uint64, len(outs)), make([]bool, len(outs))
	for i, o := range outs {
		if md, err := o.msg.Metadata(); err == nil {
			seqs[i] = md.Sequence.Stream
		}
		switch {
		case o.session != nil && broken[o.session] != nil:
			nakked[i] = s.retryOrTerm(o.msg)
		case o.err != nil && reasonOf(o.err) == ReasonWrite:
			nakked[i] = s.retryOrTerm(o.msg)
		default:
			_ = o.msg.Ack()
		}
	}
	s.ing.noteRound(seqs, nakked, s.cfg.Now())
	for _, ss := range ended {
		s.log.Info("session ended", "session", ss.id, "reason", ss.meta.EndReason)
	}
}

// retryOrTerm gives a message that could not be written a few more tries, then gives up on it
// (counted under ReasonWrite) so one bad folder cannot stall the stream. It reports whether the
// message was handed back for redelivery.
func (s *Server) retryOrTerm(m jetstream.Msg) bool {
	if md, err := m.Metadata(); err == nil && md.NumDelivered >= 5 {
		_ = m.Term()
		return false
	}
	_ = m.NakWithDelay(2 * time.Second)
	return true
}

// handle decodes and applies one message. It returns the session it wrote to (whose commit
// decides the ack) and the rows written.
func (s *Server) handle(m jetstream.Msg, d decoded, now time.Time) (*session, int, error) {
	subj := m.Subject()
	if d.oversized {
		s.cnt.bad(s.log, ReasonOversized, subj, fmt.Errorf("%d bytes", len(m.Data())))
		return nil, 0, nil
	}
	v, err := d.v, d.err
	if err != nil {
		if errors.Is(err, ErrNewerMajor) {
			kept, derr := s.deadLetter(m, ReasonNewerMajor, err)
			if derr != nil {
				s.cnt.bad(s.log, ReasonWrite, subj, derr)
				return nil, 0, bad(ReasonWrite, derr)
			}
			s.cnt.add(func(c *Counters) {
				if kept {
					c.DeadLettered++
				} else {
					c.DeadLetterSkipped++
				}
				c.Bad[ReasonNewerMajor]++
			})
			return nil, 0, nil
		}
		s.cnt.bad(s.log, reasonOf(err), subj, err)
		return nil, 0, nil
	}
	switch v := v.(type) {
	case *Batch:
		// Events the contract refused cost only themselves (counted by reason); a message with no
		// good event left writes nothing.
		for _, r := range v.Rejected {
			s.cnt.bad(s.log, r.Reason, subj, r)
		}
		if len(v.Rejected) > 0 {
			// Kept with each refused event's reason for a person or a newer hub (within the caps).
			kept, derr := s.deadLetterRejected(m, v.Rejected)
			if derr != nil {
				s.log.Warn("dead letter of refused events not written", "subject", subj, "err", derr)
			}
			s.cnt.add(func(c *Counters) {
				if kept {
					c.DeadLettered++
				} else {
					c.DeadLetterSkipped++
				}
			})
		}
		if len(v.Events) == 0 && len(v.Rejected) > 0 {
			return nil, 0, nil
		}
		// Checked once per run of one table (a batch is mostly one table), not per event.
		for i, last := 0, ""; i < len(v.Events); i++ {
			if t := v.Events[i].Table; i == 0 || t != last {
				if _, ok := s.cfg.Schema.Header(t); !ok {
					s.cnt.bad(s.log, ReasonUnknownTable, subj, fmt.Errorf("table %q", t))
					return nil, 0, nil
				}
				last = t
			}
		}
		ss, err := s.openSession(v.Session)
		if err != nil {
			s.cnt.bad(s.log, reasonOf(err), subj, err)
			return nil, 0, err
		}
		if why := s.rotationDue(ss, now); why != "" && hasNew(ss, v) {
			if err := s.rotate(ss, now, why); err != nil {
				return ss, 0, err
			}
		}
		dupBefore, capBefore, clampBefore := ss.meta.Duplicates, ss.meta.DroppedByCap, ss.meta.AlignedClamped
		if ss.meta.Status == StatusEnded && hasNew(ss, v) {
			ss.reopen()
		}
		n, err := ss.writeBatch(v, now)
		if err == nil && s.cfg.Observe != nil {
			ss.layoutOf(v) // layout.go: instance and node rank labels
			s.cfg.Observe(v)
		}
		s.cnt.add(func(c *Counters) {
			c.Duplicates += ss.meta.Duplicates - dupBefore
			c.DroppedByCap += ss.meta.DroppedByCap - capBefore
			c.AlignedClamped += ss.meta.AlignedClamped - clampBefore
		})
		return ss, n, err
	case *Life:
		ss, err := s.openSession(v.Session)
		if err != nil {
			s.cnt.bad(s.log, reasonOf(err), subj, err)
			return nil, 0, err
		}
		if v.Type == LifeStart || v.Type == LifeHello {
			if _, known := ss.procs[procKey{v.Host, v.PID, v.Instance}]; v.Type == LifeStart || !known {
				ss.reopen()
			}
		}
		if ss.applyLife(v, now) && ss.meta.Status == StatusActive {
			ss.meta.Status, ss.meta.EndReason, ss.meta.EndNS = StatusEnded, EndAllProcessesEnded, now.UnixNano()
		}
		return ss, 0, nil
	case *Heartbeat:
		if v.Measured {
			s.hosts[v.Host] = HostMeta{OffsetNS: v.OffsetNS, UncertaintyNS: v.UncertaintyNS, Measured: true, LastSeenNS: now.UnixNano()}
		}
		// A heartbeat belongs to a host, not a session: every open session with that host gets it.
		// Their metadata is committed with the next round that touches them.
		for _, ss := range s.sessions {
			if _, ok := ss.meta.Hosts[v.Host]; ok && ss.meta.Status == StatusActive {
				ss.applyHeartbeat(v, now)
			}
		}
		return nil, 0, nil
	}
	s.cnt.bad(s.log, ReasonDecode, subj, fmt.Errorf("decoder returned %T", v))
	return nil, 0, nil
}

// hasNew reports whether b holds an event not yet written: only new data reopens an ended session
// (a redelivered duplicate must not).
func hasNew(ss *session, b *Batch) bool {
	p := ss.procs[procKey{b.Host, b.PID, b.Instance}]
	if p == nil {
		return len(b.Events) > 0
	}
	for i := range b.Events {
		if !p.seen.has(b.Events[i].Seq) {
			return true
		}
	}
	return false
}
