package hub

import (
	"fmt"
	"os"
	"regexp"
)

// Sessions lists every session folder under the data folder and every open session, open ones
// from memory (a session whose first round is being applied has no folder yet), the others from
// their metadata.json.
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
			Hosts: sortedKeys(m.Hosts), Processes: len(m.Processes), Rows: rows, Bytes: m.Bytes})
	}
	listed := map[string]bool{}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		dir := SessionDir(s.cfg.DataDir, e.Name())
		if ss := s.sessions[e.Name()]; ss != nil {
			listed[e.Name()] = true
			add(dir, &ss.meta)
		} else if mm, err := ReadMetadata(dir); err == nil {
			add(dir, mm)
		}
	}
	for _, id := range sortedKeys(s.sessions) {
		if !listed[id] {
			add(SessionDir(s.cfg.DataDir, id), &s.sessions[id].meta)
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
		ss, err := loadSession(dir, e.Name(), s.cfg.Schema, s.cfg.SessionMaxBytes, now)
		if err != nil {
			s.log.Error("session not reloaded", "session", e.Name(), "err", err)
			continue
		}
		ss.known = s.hosts
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
	dir := SessionDir(s.cfg.DataDir, id)
	now := s.cfg.Now()
	var ss *session
	if _, err := os.Stat(dir); err == nil {
		ss, err = loadSession(dir, id, s.cfg.Schema, s.cfg.SessionMaxBytes, now)
		if err != nil {
			return nil, bad(ReasonWrite, err)
		}
	} else {
		ss = newSession(dir, id, s.cfg.Schema, s.cfg.SessionMaxBytes, now)
	}
	ss.known = s.hosts
	s.sessions[id] = ss
	return ss, nil
}
