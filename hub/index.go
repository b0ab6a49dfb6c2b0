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

// The session index: one key per session (proto.Escape of its id) in IndexBucket, written by the
// owning hub when it claims the session and with every checkpoint, so any hub (and any pmhub
// command given --nats) lists every session and knows where its newest state is: the owner's
// folder while it runs, the Object Store's checkpoint (checkpoint.go) always.
//
// Each folder that holds a copy of a session records which checkpoint it is at least as new as,
// in <root>/checkpoints/<escaped id>.json; a copy older than the index's checkpoint (a hub that
// lost the session) is not served: the checkpoint is fetched into <data>/cache/ instead.

// IndexEntry is one session in the index.
type IndexEntry struct {
	Session   string           `json:"session"`
	Owner     string           `json:"owner"` // hub holding the lease; "" after the final checkpoint
	Status    string           `json:"status"`
	EndReason string           `json:"end_reason,omitempty"`
	Hosts     []string         `json:"hosts"`
	Processes int              `json:"processes"`
	Rows      map[string]int64 `json:"rows"`
	Bytes     int64            `json:"bytes"`
	StartNS   int64            `json:"start_ns"`
	EndNS     int64            `json:"end_ns,omitempty"`
	// CheckpointSeq and CheckpointNS are the latest checkpoint's stream sequence and time (Unix
	// ns); 0 before the first.
	CheckpointSeq uint64 `json:"checkpoint_seq"`
	CheckpointNS  int64  `json:"checkpoint_ns"`
	UpdatedNS     int64  `json:"updated_ns"`
}

func (e IndexEntry) info(dir string) SessionInfo {
	return SessionInfo{Session: e.Session, Dir: dir, Status: e.Status, EndReason: e.EndReason, Hosts: e.Hosts,
		Processes: e.Processes, Rows: e.Rows, Bytes: e.Bytes, Owner: e.Owner}
}

// putIndex writes the owned session's index entry from its metadata and checkpoint m.
func (c *cluster) putIndex(ctx context.Context, o *ownedSession, m *CheckpointManifest) error {
	s := c.s
	e := IndexEntry{Session: o.id, Owner: s.cfg.HubID, Status: StatusActive, Rows: map[string]int64{}, UpdatedNS: s.cfg.Now().UnixNano()}
	fill := func(md *Metadata) {
		e.Status, e.EndReason, e.Hosts, e.Processes, e.Bytes = md.Status, md.EndReason, sortedKeys(md.Hosts), len(md.Processes), md.Bytes
		e.StartNS, e.EndNS = md.StartNS, md.EndNS
		for k, v := range md.Rows {
			e.Rows[k] = v
		}
	}
	s.mu.Lock()
	if ss := s.sessions[o.id]; ss != nil {
		fill(&ss.meta)
		s.mu.Unlock()
	} else {
		s.mu.Unlock()
		if md, err := ReadMetadata(SessionDir(s.cfg.DataDir, o.id)); err == nil {
			fill(md)
		}
	}
	if e.Hosts == nil {
		e.Hosts = []string{}
	}
	if m != nil {
		e.CheckpointSeq, e.CheckpointNS = m.Seq, m.NS
		if m.Final {
			e.Owner = ""
		}
	}
	b, _ := json.Marshal(e)
	if _, err := c.index.Put(ctx, proto.Escape(o.id), b); err != nil {
		s.log.Warn("session index not updated", "session", o.id, "err", err)
		return fmt.Errorf("session index: %w", err)
	}
	c.mu.Lock()
	c.idx[o.id] = e
	c.mu.Unlock()
	return nil
}

// watchIndex loads the index and keeps c.idx current; sessions it names as active (or owned) are
// watched for an owner (evaluate), so one whose hub died is taken over even without new messages.
func (c *cluster) watchIndex(ctx context.Context) error {
	w, err := c.index.WatchAll(c.ctx)
	if err != nil {
		return fmt.Errorf("hub: watch %s: %w", IndexBucket, err)
	}
	apply := func(ent jetstream.KeyValueEntry) {
		id, err := proto.Unescape(ent.Key())
		if err != nil {
			return
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if ent.Operation() != jetstream.KeyValuePut {
			delete(c.idx, id)
			return
		}
		var e IndexEntry
		if json.Unmarshal(ent.Value(), &e) != nil {
			return
		}
		c.idx[id] = e
		if !finished(e, 0) && c.owned[id] == nil && c.known[id] == nil {
			c.known[id] = &knownSession{lastSeq: e.CheckpointSeq}
		}
	}
	for {
		select {
		case <-ctx.Done():
			w.Stop()
			return fmt.Errorf("hub: load %s: %w", IndexBucket, ctx.Err())
		case ent := <-w.Updates():
			if ent == nil {
				go func() {
					defer w.Stop()
					for ent := range w.Updates() {
						if ent != nil {
							apply(ent)
						}
					}
				}()
				return nil
			}
			apply(ent)
		}
	}
}

// checkpointMark is what <root>/checkpoints/<id>.json says of a folder's copy of a session.
type checkpointMark struct {
	Seq uint64 `json:"seq"`
	NS  int64  `json:"ns"`
}

func markPath(root, id string) string {
	return filepath.Join(root, "checkpoints", proto.Escape(id)+".json")
}

func writeMarker(root, id string, m *CheckpointManifest) {
	if m == nil {
		return
	}
	b, _ := json.Marshal(checkpointMark{Seq: m.Seq, NS: m.NS})
	if err := os.MkdirAll(filepath.Join(root, "checkpoints"), 0o750); err == nil {
		_ = writeFileAtomic(markPath(root, id), b)
	}
}

func readMarker(root, id string) checkpointMark {
	var m checkpointMark
	if b, err := os.ReadFile(markPath(root, id)); err == nil {
		_ = json.Unmarshal(b, &m)
	}
	return m
}

// current reports whether root's copy of id is as new as the index's checkpoint or newer (its
// owner writes the mark with every checkpoint it stores or restores; a hub that loses the lease
// removes it).
func current(root, id string, e IndexEntry) bool {
	if _, err := os.Stat(SessionDir(root, id)); err != nil {
		return false
	}
	return readMarker(root, id).NS >= e.CheckpointNS
}

// sharedSessions merges the index into the local list: copies this hub does not own and that are
// older than the index's checkpoint are listed from the index with no folder (SessionFolder
// fetches one).
func (s *Server) sharedSessions(local []SessionInfo) []SessionInfo {
	c := s.cl
	c.mu.Lock()
	idx := make(map[string]IndexEntry, len(c.idx))
	for k, v := range c.idx {
		idx[k] = v
	}
	owned := make(map[string]bool, len(c.owned))
	for k := range c.owned {
		owned[k] = true
	}
	c.mu.Unlock()
	out := make([]SessionInfo, 0, len(local)+len(idx))
	for _, l := range local {
		e, ok := idx[l.Session]
		delete(idx, l.Session)
		switch {
		case !ok || e.Status == StatusRemoved:
			out = append(out, l)
		case owned[l.Session] || readMarker(s.cfg.DataDir, l.Session).NS >= e.CheckpointNS:
			l.Owner = e.Owner
			out = append(out, l)
		default:
			out = append(out, e.info(""))
		}
	}
	for _, id := range sortedKeys(idx) {
		if idx[id].Status != StatusRemoved {
			out = append(out, idx[id].info(""))
		}
	}
	return out
}

// ErrNoSession is returned by SessionFolder for a session neither the folder nor the index has.
var ErrNoSession = errors.New("no such session")

// SessionFolder makes session id available as a local folder and returns it: the hub's own copy
// when it is current, else the latest checkpoint fetched into <data>/cache/sessions/<id>.
func (s *Server) SessionFolder(ctx context.Context, id string) (string, error) {
	if s.cl == nil {
		dir := SessionDir(s.cfg.DataDir, id)
		if _, err := os.Stat(dir); err != nil {
			return "", fmt.Errorf("%w: %q", ErrNoSession, id)
		}
		return dir, nil
	}
	return SessionFolder(ctx, s.js, s.cfg.DataDir, id)
}

// SessionFolder makes session id available as a local folder under the hub data folder data, and
// returns it: <data>/sessions/<id> when it exists and is current (no index entry says otherwise:
// js nil, no index, or the copy is as new as the index's checkpoint), else the session's latest
// checkpoint from the Object Store, fetched into <data>/cache/sessions/<id> (kept, and fetched
// again only when the index names a newer checkpoint). Errors wrap ErrNoSession when neither has
// it.
func SessionFolder(ctx context.Context, js jetstream.JetStream, data, id string) (string, error) {
	local := SessionDir(data, id)
	_, lerr := os.Stat(local)
	localOr := func(err error) (string, error) {
		if lerr == nil {
			return local, nil
		}
		if err != nil {
			return "", err
		}
		return "", fmt.Errorf("%w: %q", ErrNoSession, id)
	}
	if js == nil || !sessionRE.MatchString(id) {
		return localOr(nil)
	}
	e, err := LookupIndex(ctx, js, id)
	if errors.Is(err, ErrNoSession) {
		return localOr(nil)
	}
	if err != nil {
		return localOr(err)
	}
	if current(data, id, e) {
		return local, nil
	}
	cache := filepath.Join(data, "cache")
	if current(cache, id, e) {
		now := time.Now()
		_ = os.Chtimes(markPath(cache, id), now, now) // its last use, for the cache's bounds (retention.go)
		return SessionDir(cache, id), nil
	}
	obs, err := js.ObjectStore(ctx, CheckpointBucket)
	if err != nil {
		return localOr(fmt.Errorf("object store %s: %w", CheckpointBucket, err))
	}
	m, err := restoreCheckpoint(ctx, obs, id, sessionsDir(cache))
	if err != nil {
		return localOr(err)
	}
	if m == nil {
		return localOr(fmt.Errorf("%w: %q has no checkpoint yet (owner %s)", ErrNoSession, id, e.Owner))
	}
	writeMarker(cache, id, m)
	return SessionDir(cache, id), nil
}

// LookupIndex returns session id's index entry; errors wrap ErrNoSession when the index (or the
// session in it) does not exist, or retention removed the session (its tombstone).
func LookupIndex(ctx context.Context, js jetstream.JetStream, id string) (IndexEntry, error) {
	e, err := lookupIndex(ctx, js, id)
	if err == nil && e.Status == StatusRemoved {
		return IndexEntry{}, fmt.Errorf("%w: %q (removed by retention)", ErrNoSession, id)
	}
	return e, err
}

// lookupIndex is LookupIndex with tombstones.
func lookupIndex(ctx context.Context, js jetstream.JetStream, id string) (IndexEntry, error) {
	var e IndexEntry
	kv, err := js.KeyValue(ctx, IndexBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return e, fmt.Errorf("%w: %q (no session index)", ErrNoSession, id)
	}
	if err != nil {
		return e, fmt.Errorf("session index: %w", err)
	}
	ent, err := kv.Get(ctx, proto.Escape(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return e, fmt.Errorf("%w: %q", ErrNoSession, id)
	}
	if err != nil {
		return e, fmt.Errorf("session index: %w", err)
	}
	if err := json.Unmarshal(ent.Value(), &e); err != nil {
		return e, fmt.Errorf("session index entry %s: %w", id, err)
	}
	return e, nil
}

// ListIndex returns every session of the index (tombstones left out), by start time (nil, no error, without an index).
func ListIndex(ctx context.Context, js jetstream.JetStream) ([]IndexEntry, error) {
	kv, err := js.KeyValue(ctx, IndexBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("session index: %w", err)
	}
	keys, err := kv.Keys(ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("session index: %w", err)
	}
	var out []IndexEntry
	for _, k := range keys {
		ent, err := kv.Get(ctx, k)
		if err != nil {
			continue
		}
		var e IndexEntry
		if json.Unmarshal(ent.Value(), &e) == nil && e.Status != StatusRemoved {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].StartNS < out[j].StartNS })
	return out, nil
}

// CopyIsCurrent reports whether the data folder's own copy of e's session is as new as the
// index says the session is (so listing it from the folder is right).
func CopyIsCurrent(data string, e IndexEntry) bool {
	return current(data, e.Session, e)
}
