package hub

import (
	"os"
	"time"
)

// housekeep ends idle sessions, evicts ended ones and removes sessions and closed segments past
// retention (segments.go).
func (s *Server) housekeep(lastRetention *time.Time) {
	now := s.cfg.Now()
	s.mu.Lock()
	for id, ss := range s.sessions {
		idle := now.Sub(ss.last) >= s.cfg.SessionIdle
		switch {
		case ss.meta.Status == StatusEnded:
			unlock := s.lockOwned(id) // not while its owner commits outside s.mu (owned.go)
			if err := ss.end(ss.meta.EndReason, now); err != nil {
				s.cnt.bad(s.log, ReasonWrite, id, err)
			}
			unlock()
			delete(s.sessions, id)
		case idle:
			unlock := s.lockOwned(id)
			if err := ss.end(EndIdle, now); err != nil {
				s.cnt.bad(s.log, ReasonWrite, id, err)
			}
			unlock()
			s.log.Info("session ended", "session", id, "reason", EndIdle)
			delete(s.sessions, id)
		}
	}
	// A rotation may have pushed a session past its segment limits: check at once, not in a minute.
	rotated := s.rotated
	s.rotated = false
	s.mu.Unlock()
	if now.Sub(*lastRetention) >= time.Minute || rotated {
		*lastRetention = now
		if s.cfg.Retention > 0 {
			s.applyRetention(now)
		}
		s.applySegmentRetention(now)
		if s.cl != nil {
			s.cl.startSharedRetention(now)
		}
	}
}

func (s *Server) applyRetention(now time.Time) {
	ents, err := os.ReadDir(sessionsDir(s.cfg.DataDir))
	if err != nil {
		return
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		s.mu.Lock()
		open := s.sessions[e.Name()] != nil
		s.mu.Unlock()
		if open {
			continue
		}
		dir := SessionDir(s.cfg.DataDir, e.Name())
		m, err := ReadMetadata(dir)
		if err != nil || m.Status != StatusEnded || m.EndNS == 0 {
			continue
		}
		if now.Sub(time.Unix(0, m.EndNS)) > s.cfg.Retention {
			if err := os.RemoveAll(dir); err != nil {
				s.log.Warn("retention: remove failed", "session", e.Name(), "err", err)
				continue
			}
			_ = os.Remove(markPath(s.cfg.DataDir, e.Name()))
			s.log.Info("retention: session removed", "session", e.Name())
		}
	}
}
