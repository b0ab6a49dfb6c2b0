package hub

import (
	"context"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/profilemate/profilemate/proto"
)

// ownedSession is a session this hub holds the lease of (shared mode).
type ownedSession struct {
	id     string
	cancel context.CancelFunc
	done   chan struct{}
	lost   atomic.Bool
	moving atomic.Bool // handed over to another hub (rebalance): stops like a hub stopping

	mu  sync.Mutex // guards rev
	rev uint64     // lease revision last written
	// commit is held while the session's files are made durable outside the hub-wide lock
	// (applyOwned); taken after s.mu, never before it.
	commit sync.Mutex

	// Owned by runOwned's goroutine.
	applied uint64 // stream sequence through which the session's messages are in its files
	ck      *checkpointer
	ckSeq   uint64
	lastCk  time.Time
}

// renew renews the lease (bounded by timeout).
func (o *ownedSession) renew(ctx context.Context, ls *leases, timeout time.Duration) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	rev, err := ls.renew(ctx, o.id, o.rev)
	if err != nil {
		return err
	}
	o.rev = rev
	return nil
}

// lose marks the lease lost and stops the session's goroutine.
func (o *ownedSession) lose() {
	o.lost.Store(true)
	o.cancel()
}

// sessionFollower reads session's event and lifecycle subjects after stream sequence applied
// (from the first message still in the stream when that one is gone).
func (c *cluster) sessionFollower(session string, applied uint64) *follower {
	tok := proto.Escape(session)
	f := &follower{js: c.s.js, buffer: c.s.cfg.Fetch, cfg: jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{proto.EventPrefix + "." + tok + ".>", proto.LifePrefix + "." + tok + ".>"},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy, OptStartSeq: applied + 1,
	}}
	f.last = applied
	return f
}

// runOwned materialises one owned session until it ends (final checkpoint, lease released), the
// lease is lost (dropped here, nothing written after), or ctx ends (hub stopping: checkpoint and
// release, so another hub takes over at once).
func (c *cluster) runOwned(ctx context.Context, o *ownedSession) {
	s := c.s
	defer close(o.done)
	defer c.forget(o)
	dir := SessionDir(s.cfg.DataDir, o.id)
	log := s.log.With("session", o.id)

	// Whatever this folder held may be stale (another hub owned the session since): the latest
	// checkpoint is the truth, and the stream after it. Without a checkpoint the folder stays and
	// the whole stream is read again (its rows are recognised).
	s.mu.Lock()
	if old := s.sessions[o.id]; old != nil {
		old.closeFiles()
		delete(s.sessions, o.id)
	}
	s.mu.Unlock()
	m, err := restoreCheckpoint(ctx, c.obs, o.id, sessionsDir(s.cfg.DataDir))
	if err != nil {
		log.Error("session not restored; lease released", "err", err)
		c.release(o)
		return
	}
	o.mu.Lock()
	epoch := o.rev
	o.mu.Unlock()
	o.ck = &checkpointer{obs: c.obs, session: o.id, root: sessionsDir(s.cfg.DataDir), hub: s.cfg.HubID, epoch: epoch, prev: m}
	if m != nil {
		o.applied, o.ckSeq = m.Seq, m.Seq
		writeMarker(s.cfg.DataDir, o.id, m)
		log.Info("session restored from checkpoint", "seq", m.Seq, "files", len(m.Files))
	} else if e, err := lookupIndex(ctx, s.js, o.id); err == nil && e.Status == StatusRemoved {
		// Retention removed the session (retention.go) and a newer message brought it back: it
		// starts again after the removed part; a copy still in this folder is past retention too.
		if dirs, err := segmentsIn(sessionsDir(s.cfg.DataDir), o.id); err == nil {
			for _, d := range dirs {
				_ = os.RemoveAll(d)
			}
		}
		o.applied, o.ckSeq = e.CheckpointSeq, e.CheckpointSeq
		log.Info("session removed by retention comes back", "after_seq", e.CheckpointSeq)
	}
	o.lastCk = time.Now()
	if _, err := os.Stat(dir); err == nil {
		s.mu.Lock()
		_, err := s.openSession(o.id)
		s.mu.Unlock()
		if err != nil {
			log.Error("restored session not loaded; lease released", "err", err)
			c.release(o)
			return
		}
	}
	_ = c.putIndex(ctx, o, m) // written again with every checkpoint

	f := c.sessionFollower(o.id, o.applied)
	defer f.reset()
	for ctx.Err() == nil {
		msgs, err := f.next(ctx, s.cfg.Fetch, 500*time.Millisecond)
		if len(msgs) > 0 && !s.applyOwned(o, msgs) {
			// A write failed: the session was dropped from memory; read again from what is
			// applied, after a pause, with the seen-state rebuilt from the files.
			f.restart(o.applied)
			sleepCtx(ctx, 2*time.Second)
			continue
		}
		if err != nil {
			log.Debug("session consumer", "err", err)
			sleepCtx(ctx, 200*time.Millisecond)
		}
		if ctx.Err() != nil {
			break
		}
		if time.Since(o.lastCk) >= s.cfg.CheckpointEvery {
			if err := c.checkpoint(ctx, o, false); err != nil {
				if errors.Is(err, ErrLeaseLost) {
					o.lose()
					break
				}
				log.Warn("checkpoint failed", "err", err)
			}
		}
		if len(msgs) == 0 && err == nil && c.ended(o.id) && f.caughtUp(ctx) {
			// The lease is released only once the final checkpoint and the index entry saying
			// so are both stored: until then the session keeps its owner and this is retried.
			if err := c.checkpoint(ctx, o, true); err != nil {
				if errors.Is(err, ErrLeaseLost) {
					o.lose()
					break
				}
				log.Warn("final checkpoint failed", "err", err)
				continue
			}
			log.Info("session ended; final checkpoint stored, lease released", "seq", o.applied)
			c.release(o)
			return
		}
	}
	s.mu.Lock()
	ss := s.sessions[o.id]
	if ss != nil {
		delete(s.sessions, o.id)
	}
	s.mu.Unlock()
	if o.lost.Load() {
		// Another hub owns it now; this folder is stale: its mark goes, so it is never served
		// as current again (index.go).
		if ss != nil {
			ss.closeFiles()
		}
		_ = os.Remove(markPath(s.cfg.DataDir, o.id))
		log.Warn("session dropped: lease lost")
		return
	}
	// The hub stops, or hands the session to its first choice (rebalance): store what is applied
	// and hand the session over at once.
	if ss != nil {
		s.mu.Lock()
		if err := ss.commit(); err != nil {
			log.Error("final commit failed", "err", err)
		}
		ss.closeFiles()
		s.mu.Unlock()
	}
	dctx, cancel := context.WithTimeout(context.Background(), c.ttl)
	defer cancel()
	if err := c.checkpoint(dctx, o, false); err != nil {
		log.Warn("checkpoint at stop failed", "err", err)
		return // the lease expires; the next owner replays from the last checkpoint
	}
	c.release(o)
}

// ended reports whether an owned session was ended and evicted by housekeeping.
func (c *cluster) ended(id string) bool {
	s := c.s
	s.mu.Lock()
	open := s.sessions[id] != nil
	s.mu.Unlock()
	if open {
		return false
	}
	m, err := ReadMetadata(SessionDir(s.cfg.DataDir, id))
	return err == nil && m.Status == StatusEnded
}

// release deletes the lease and forgets the session.
func (c *cluster) release(o *ownedSession) {
	ctx, cancel := context.WithTimeout(context.Background(), c.ttl/3)
	defer cancel()
	o.mu.Lock()
	rev := o.rev
	o.mu.Unlock()
	if err := c.ls.release(ctx, o.id, rev); err != nil {
		c.s.log.Warn("lease not released (it expires)", "session", o.id, "err", err)
	}
	c.forget(o)
}

// checkpoint stores the owned session's folder and applied sequence, fenced by a lease renewal,
// then updates the index entry.
func (c *cluster) checkpoint(ctx context.Context, o *ownedSession, final bool) error {
	o.lastCk = time.Now()
	seq := o.applied
	fence := func() error { return o.renew(ctx, c.ls, c.ttl/3) }
	m, err := o.ck.checkpoint(ctx, seq, final, c.s.cfg.Now(), fence)
	if err != nil {
		return err
	}
	o.ckSeq = seq
	writeMarker(c.s.cfg.DataDir, o.id, m)
	c.s.cnt.add(func(cn *Counters) { cn.Checkpoints++ })
	return c.putIndex(ctx, o, m)
}

// applyOwned writes one fetch round of an owned session and commits it; false when a write
// failed (the session is then dropped from memory and its messages come again).
//
// The rows are written under the hub-wide lock, but made durable outside it: under the lock each
// touched session's buffers are flushed to its files and its metadata is encoded (prepareCommit);
// the fsyncs and the metadata file follow after the lock is released, under o.commit alone, so the
// owned sessions of a hub commit in parallel instead of one after another. o.commit is taken
// before the hub-wide lock is released: housekeeping, which ends and closes sessions under the
// hub-wide lock, takes it too (lockOwned), so it never closes a file being synced nor writes
// metadata older than what it replaces. o.applied moves only after the commit, so exactly-once
// and the checkpoints (which run after this returns, on the same goroutine) see durable files.
func (s *Server) applyOwned(o *ownedSession, msgs []jetstream.Msg) bool {
	dec := s.decodeAll(msgs)
	now := s.cfg.Now()
	var rows int64
	s.mu.Lock()
	touched := map[*session]bool{}
	var failed error
	for i, m := range msgs {
		ss, n, err := s.handle(m, dec[i], now)
		rows += int64(n)
		if ss != nil {
			touched[ss] = true
		}
		if err != nil && (ss != nil || reasonOf(err) == ReasonWrite) {
			failed = err
			break
		}
	}
	var pending []pendingCommit
	for ss := range touched {
		if failed == nil {
			pc, err := ss.prepareCommit()
			if err != nil {
				failed = err
			}
			pending = append(pending, pc)
		}
	}
	if failed == nil {
		o.commit.Lock()
	}
	s.mu.Unlock()
	if failed == nil {
		for _, pc := range pending {
			if commitHook != nil {
				commitHook(pc.ss.id)
			}
			if err := pc.finish(); err != nil {
				failed = err
				break
			}
		}
		o.commit.Unlock()
	}
	if failed != nil {
		s.mu.Lock()
		for ss := range touched {
			s.cnt.bad(s.log, ReasonWrite, ss.id, failed)
			ss.closeFiles()
			if s.sessions[ss.id] == ss {
				delete(s.sessions, ss.id)
			}
		}
		s.mu.Unlock()
	}
	s.cnt.add(func(c *Counters) { c.Messages += int64(len(msgs)); c.Rows += rows })
	if failed != nil {
		return false
	}
	if md, err := msgs[len(msgs)-1].Metadata(); err == nil {
		o.applied = md.Sequence.Stream
	}
	return true
}

// commitHook, when set (tests), is called with the session's id before finish syncs its files.
var commitHook func(session string)

// lockOwned takes the commit lock of session id when this hub owns it (shared mode) and returns
// its unlock; the caller holds the hub-wide lock (that order: s.mu, then o.commit).
func (s *Server) lockOwned(id string) func() {
	if s.cl == nil {
		return func() {}
	}
	s.cl.mu.Lock()
	o := s.cl.owned[id]
	s.cl.mu.Unlock()
	if o == nil {
		return func() {}
	}
	o.commit.Lock()
	return o.commit.Unlock
}
