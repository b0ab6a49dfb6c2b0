package hub

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"
)

// Sessions lists every session under the data folder and every open session, open ones from
// memory (a session whose first round is being applied has no folder yet), the others from their
// metadata.json. A rotated session is listed once: its live segment's status, hosts and processes,
// with Segments, Rows and Bytes over all its segments still on disk.
func (s *Server) Sessions() []SessionInfo {
	if s.cl != nil {
		return s.sharedSessions(s.localSessions())
	}
	return s.localSessions()
}

// localSessions is Sessions from the data folder and memory alone.
func (s *Server) localSessions() []SessionInfo {
	// The folder is listed under the lock and open sessions come from memory: a session whose
	// first round is being applied has no folder yet but is active (metrics pruning relies on it).
	s.mu.Lock()
	defer s.mu.Unlock()
	ents, _ := os.ReadDir(sessionsDir(s.cfg.DataDir))
	out := []SessionInfo{}
	add := func(dir string, m *Metadata) {
		rows := make(map[string]int64, len(m.Rows))
		for k, v := range m.Rows {
			rows[k] = v
		}
		out = append(out, SessionInfo{Session: m.Session, Dir: dir, Status: m.Status, EndReason: m.EndReason,
			Hosts: sortedKeys(m.Hosts), Processes: len(m.Processes), Rows: rows, Bytes: m.Bytes, Segments: 1})
	}
	// Closed segments of rotated sessions are counted into their session, not listed: their
	// totals come from a cache, as a closed segment never changes.
	closed := map[string][]archiveTotals{}
	lastClosed := map[string]string{}
	present := map[string]bool{}
	listed := map[string]bool{}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		dir := SessionDir(s.cfg.DataDir, e.Name())
		if id, _, ok := SplitSegmentFolder(e.Name()); ok {
			present[e.Name()] = true
			t, cached := s.archived[e.Name()]
			if !cached {
				mm, err := ReadMetadata(dir)
				if err != nil {
					continue
				}
				t = archiveTotals{session: mm.Session, rows: mm.Rows, bytes: mm.Bytes}
				s.archived[e.Name()] = t
			}
			closed[id] = append(closed[id], t)
			lastClosed[id] = e.Name() // listed in name order: the newest is last
			continue
		}
		if ss := s.sessions[e.Name()]; ss != nil {
			listed[e.Name()] = true
			add(dir, &ss.meta)
		} else if mm, err := ReadMetadata(dir); err == nil {
			listed[e.Name()] = true
			add(dir, mm)
		}
	}
	for name := range s.archived {
		if !present[name] {
			delete(s.archived, name)
		}
	}
	for _, id := range sortedKeys(s.sessions) {
		if !listed[id] {
			listed[id] = true
			add(SessionDir(s.cfg.DataDir, id), &s.sessions[id].meta)
		}
	}
	// A session whose live folder is missing (a rotation that has not finished) is listed by its
	// newest closed segment.
	for _, id := range sortedKeys(lastClosed) {
		if !listed[id] {
			if mm, err := ReadMetadata(SessionDir(s.cfg.DataDir, lastClosed[id])); err == nil {
				add(SessionDir(s.cfg.DataDir, lastClosed[id]), mm)
				out[len(out)-1].Segments, out[len(out)-1].Rows, out[len(out)-1].Bytes = 0, map[string]int64{}, 0
			}
		}
	}
	for i := range out {
		for _, t := range closed[out[i].Session] {
			out[i].Segments++
			out[i].Bytes += t.bytes
			for k, v := range t.rows {
				out[i].Rows[k] += v
			}
		}
	}
	return out
}

var sessionRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// loadSessions reopens every session not marked ended, so their idle timers run again and their
// seen-state is ready before the first redelivered message.
func (s *Server) loadSessions() error {
	ents, err := os.ReadDir(sessionsDir(s.cfg.DataDir))
	if err != nil {
		return fmt.Errorf("hub: list sessions: %w", err)
	}
	now := s.cfg.Now()
	s.markClosedSegments(now)
	for _, e := range ents {
		if !e.IsDir() || !sessionRE.MatchString(e.Name()) {
			continue
		}
		dir := SessionDir(s.cfg.DataDir, e.Name())
		if m, err := ReadMetadata(dir); err == nil {
			for h, hm := range m.Hosts {
				if hm.Measured && hm.LastSeenNS >= s.hosts[h].LastSeenNS {
					s.hosts[h] = *hm
				}
			}
			if m.Status == StatusEnded {
				continue
			}
		}
		ss, err := s.reloadSession(e.Name(), now)
		if err != nil || ss == nil {
			s.log.Error("session not reloaded", "session", e.Name(), "err", err)
			continue
		}
		s.sessions[e.Name()] = ss
		s.log.Info("session reloaded", "session", e.Name(), "rows", ss.meta.Rows)
	}
	return nil
}

// openSession returns the in-memory session, reloading it from disk or creating it.
func (s *Server) openSession(id string) (*session, error) {
	if ss := s.sessions[id]; ss != nil {
		return ss, nil
	}
	if !sessionRE.MatchString(id) {
		return nil, bad(ReasonSession, fmt.Errorf("session id %q is not a folder name", id))
	}
	now := s.cfg.Now()
	ss, err := s.reloadSession(id, now)
	if err != nil {
		return nil, bad(ReasonWrite, err)
	}
	if ss == nil {
		ss = newSession(SessionDir(s.cfg.DataDir, id), id, s.cfg.Schema, s.cfg.SessionMaxBytes, now)
		ss.known = s.hosts
		s.initSegment(ss, now)
	}
	s.sessions[id] = ss
	return ss, nil
}

// reloadSession rebuilds session id from disk (nil, nil when nothing of it is there): from its own
// folder; or, when a rotation stopped before the next segment's metadata was written there (no
// folder, or one without metadata.json), from its newest closed segment, continued into a new
// live segment. A rotation that stopped after its closed segment was recorded but before the
// folder moved is finished too.
func (s *Server) reloadSession(id string, now time.Time) (*session, error) {
	dir := SessionDir(s.cfg.DataDir, id)
	_, statErr := os.Stat(dir)
	_, metaErr := ReadMetadata(dir)
	last := ""
	if statErr != nil || errors.Is(metaErr, os.ErrNotExist) {
		last = s.lastClosedSegment(id)
	}
	var ss *session
	var err error
	switch {
	case last != "":
		if ss, err = loadSession(last, id, s.cfg.Schema, s.cfg.SessionMaxBytes, now); err != nil {
			return nil, err
		}
		if ss.meta.Segment == nil {
			_, idx, _ := SplitSegmentFolder(filepath.Base(last))
			ss.meta.Segment = &SegmentMeta{Index: idx}
		}
	case statErr == nil:
		if ss, err = loadSession(dir, id, s.cfg.Schema, s.cfg.SessionMaxBytes, now); err != nil {
			return nil, err
		}
	default:
		return nil, nil
	}
	ss.known = s.hosts
	s.initSegment(ss, now)
	if ss.meta.Segment != nil && (ss.dir != dir || ss.meta.EndReason == EndRotated) {
		if err := s.closeSegment(ss, now); err != nil {
			return nil, err
		}
		// Rows a crash left in the new folder before its metadata (none are written before it).
		for _, t := range s.cfg.Schema.Tables() {
			if err := ss.scanTable(t); err != nil {
				return nil, err
			}
		}
	}
	return ss, nil
}
