package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/profilemate/profilemate/proto"
)

// Retention in shared mode (docs/SCALING.md "Retention"). An ended session lives in three places
// besides its owner's folder: its checkpoint in CheckpointBucket, its entry in IndexBucket, and
// fetched copies in <data>/cache/ of any hub that served it. Every retention pass (housekeep.go,
// once a minute) of every shared hub:
//   - removes the checkpoints of sessions that ended more than Retention ago, for the sessions it
//     ranks first on among the live hubs (rendezvous, cluster.go). It takes the session's lease
//     first, so no hub claims the session while it goes, and two hubs never remove it at once.
//     The index entry is replaced by a tombstone (status "removed", the checkpoint's sequence):
//     the stream may still hold the session's messages, and without the tombstone discovery would
//     find them and rebuild the session from the stream. A message newer than the tombstone
//     starts the session again from that message on;
//   - deletes the tombstones whose sequence the stream no longer holds (its first sequence is
//     past it), again for the sessions it ranks first on;
//   - bounds its fetch cache: copies of sessions the index no longer lists, copies unused for
//     CacheMaxAge, and the least recently used copies while the cache holds more than
//     CacheMaxBytes are removed (a copy used in the last minute is kept).

// StatusRemoved is the status of an index tombstone: the session's checkpoint was removed by
// retention (only the index holds it; listings skip it).
const StatusRemoved = "removed"

// Fetch cache defaults (<data>/cache/).
const (
	DefaultCacheMaxAge   = 24 * time.Hour
	DefaultCacheMaxBytes = 4 << 30
	cacheMinIdle         = time.Minute
)

// finished reports whether an index entry needs no owner: ended with its final checkpoint
// stored, or removed by retention, and nothing newer than seq seen for it.
func finished(e IndexEntry, seq uint64) bool {
	return (e.Status == StatusEnded || e.Status == StatusRemoved) && e.Owner == "" && seq <= e.CheckpointSeq
}

// startSharedRetention runs applySharedRetention in the background unless a pass still runs:
// its NATS round trips must not hold up the loop that renews the leases.
func (c *cluster) startSharedRetention(now time.Time) {
	if !c.retaining.CompareAndSwap(false, true) {
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer c.retaining.Store(false)
		c.applySharedRetention(c.ctx, now)
	}()
}

// applySharedRetention is the shared part of a retention pass at now.
func (c *cluster) applySharedRetention(ctx context.Context, now time.Time) {
	s := c.s
	if s.cfg.Retention > 0 {
		c.removeExpired(ctx, now)
	}
	c.dropTombstones(ctx)
	s.trimCache(now)
}

// mine returns the index entries this hub ranks first on, by session.
func (c *cluster) mine() []IndexEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []IndexEntry
	for _, id := range sortedKeys(c.idx) {
		if firstChoice(c.live, id) == c.s.cfg.HubID {
			out = append(out, c.idx[id])
		}
	}
	return out
}

// removeExpired removes the checkpoints of the sessions this hub ranks first on that ended more
// than Retention before now, leaving a tombstone in the index.
func (c *cluster) removeExpired(ctx context.Context, now time.Time) {
	for _, e := range c.mine() {
		if ctx.Err() != nil {
			return
		}
		if e.Status != StatusEnded || e.Owner != "" || e.EndNS == 0 || now.Sub(time.Unix(0, e.EndNS)) <= c.s.cfg.Retention {
			continue
		}
		if err := c.removeSession(ctx, e.Session, now); err != nil {
			c.s.log.Warn("retention: checkpoint not removed", "session", e.Session, "err", err)
		}
	}
}

// removeSession removes session's checkpoint under its lease and leaves a tombstone in the index
// (checked again there: still ended, unowned and past retention). A lease held by another hub is
// not an error: the session is busy, the next pass looks again.
func (c *cluster) removeSession(ctx context.Context, id string, now time.Time) error {
	ctx, cancel := context.WithTimeout(ctx, c.ttl)
	defer cancel()
	rev, ok, err := c.ls.claim(ctx, id)
	if err != nil || !ok {
		return err
	}
	defer func() {
		rctx, rcancel := context.WithTimeout(context.Background(), c.ttl/3)
		defer rcancel()
		_ = c.ls.release(rctx, id, rev)
	}()
	ent, err := c.index.Get(ctx, proto.Escape(id))
	if err != nil {
		return fmt.Errorf("session index: %w", err)
	}
	var e IndexEntry
	if err := json.Unmarshal(ent.Value(), &e); err != nil {
		return fmt.Errorf("session index entry: %w", err)
	}
	if e.Status != StatusEnded || e.Owner != "" || e.EndNS == 0 || now.Sub(time.Unix(0, e.EndNS)) <= c.s.cfg.Retention {
		return nil
	}
	m, err := readManifest(ctx, c.obs, id)
	if err != nil {
		return err
	}
	if m != nil {
		// Parts first, the manifest last: a pass cut short leaves a manifest, and the next
		// pass deletes what it still names.
		for _, f := range m.Files {
			for _, p := range f.Parts {
				if err := c.obs.Delete(ctx, p.Object); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
					return fmt.Errorf("delete %s: %w", p.Object, err)
				}
			}
		}
		if err := c.obs.Delete(ctx, manifestObject(id)); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
			return fmt.Errorf("delete %s: %w", manifestObject(id), err)
		}
	}
	t := IndexEntry{Session: id, Status: StatusRemoved, EndReason: e.EndReason, Hosts: []string{}, Rows: map[string]int64{},
		StartNS: e.StartNS, EndNS: e.EndNS, CheckpointSeq: e.CheckpointSeq, UpdatedNS: now.UnixNano()}
	b, _ := json.Marshal(t)
	if _, err := c.index.Update(ctx, proto.Escape(id), b, ent.Revision()); err != nil {
		return fmt.Errorf("session index tombstone: %w", err)
	}
	c.mu.Lock()
	c.idx[id] = t
	c.mu.Unlock()
	c.s.log.Info("retention: session checkpoint removed", "session", id, "ended", time.Unix(0, e.EndNS).UTC())
	return nil
}

// dropTombstones deletes the tombstones (of sessions this hub ranks first on) whose sequence the
// stream no longer holds: no stream message can bring those sessions back.
func (c *cluster) dropTombstones(ctx context.Context) {
	var first uint64
	for _, e := range c.mine() {
		if e.Status != StatusRemoved || e.Owner != "" {
			continue
		}
		if first == 0 {
			st, err := c.s.js.Stream(ctx, proto.StreamName)
			if err != nil {
				return
			}
			info, err := st.Info(ctx)
			if err != nil {
				return
			}
			first = max(info.State.FirstSeq, 1)
		}
		if e.CheckpointSeq >= first {
			continue
		}
		ent, err := c.index.Get(ctx, proto.Escape(e.Session))
		if err != nil {
			continue
		}
		var cur IndexEntry
		if json.Unmarshal(ent.Value(), &cur) != nil || cur.Status != StatusRemoved || cur.CheckpointSeq >= first {
			continue
		}
		if err := c.index.Purge(ctx, proto.Escape(e.Session), jetstream.LastRevision(ent.Revision())); err != nil {
			c.s.log.Debug("retention: tombstone not deleted", "session", e.Session, "err", err)
			continue
		}
		c.mu.Lock()
		delete(c.idx, e.Session)
		c.mu.Unlock()
	}
}

// trimCache bounds <data>/cache/: copies the index no longer lists, copies unused for
// CacheMaxAge, then the least recently used while the cache is over CacheMaxBytes. A copy's
// last use is its mark's time (SessionFolder touches it); one used in the last minute stays.
func (s *Server) trimCache(now time.Time) {
	cache := filepath.Join(s.cfg.DataDir, "cache")
	ents, err := os.ReadDir(sessionsDir(cache))
	if err != nil {
		return
	}
	type copyInfo struct {
		id    string
		used  time.Time
		bytes int64
	}
	var copies []copyInfo
	var total int64
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		id, _, isSeg := SplitSegmentFolder(e.Name())
		if isSeg {
			continue // counted with its session
		}
		ci := copyInfo{id: id}
		if fi, err := os.Stat(markPath(cache, id)); err == nil {
			ci.used = fi.ModTime()
		}
		if dirs, err := segmentsIn(sessionsDir(cache), id); err == nil {
			for _, d := range dirs {
				ci.bytes += dirSize(d)
			}
		}
		total += ci.bytes
		copies = append(copies, ci)
	}
	remove := func(ci copyInfo, why string) {
		if dirs, err := segmentsIn(sessionsDir(cache), ci.id); err == nil {
			for _, d := range dirs {
				if err := os.RemoveAll(d); err != nil {
					s.log.Warn("cache: remove failed", "session", ci.id, "err", err)
					return
				}
			}
		}
		_ = os.Remove(markPath(cache, ci.id))
		total -= ci.bytes
		s.log.Info("cache: copy removed", "session", ci.id, "reason", why)
	}
	sort.Slice(copies, func(i, j int) bool { return copies[i].used.Before(copies[j].used) })
	c := s.cl
	kept := copies[:0]
	for _, ci := range copies {
		idle := now.Sub(ci.used)
		if idle < cacheMinIdle {
			kept = append(kept, ci)
			continue
		}
		listed := true
		if c != nil {
			c.mu.Lock()
			e, ok := c.idx[ci.id]
			c.mu.Unlock()
			listed = ok && e.Status != StatusRemoved
		}
		switch {
		case !listed:
			remove(ci, "no longer in the session index")
		case s.cfg.CacheMaxAge > 0 && idle > s.cfg.CacheMaxAge:
			remove(ci, "unused")
		default:
			kept = append(kept, ci)
		}
	}
	for _, ci := range kept {
		if s.cfg.CacheMaxBytes <= 0 || total <= s.cfg.CacheMaxBytes {
			break
		}
		if now.Sub(ci.used) >= cacheMinIdle {
			remove(ci, "cache over its size")
		}
	}
}
