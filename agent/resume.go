package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	pmproto "github.com/profilemate/profilemate/proto"
)

// resumeFile holds, across a restart of `pmagent serve`, the processes that were still running
// when it stopped, so that when their shims reconnect (a new hello with the same session) they
// continue in the same session, under the same process token, and what they replay is not
// published again. It lives in the spool folder and is read once at start.
const resumeFile = "processes.json"

// resumeVersion is the format of resumeFile; a file of another version is ignored.
const resumeVersion = 1

type resumeState struct {
	Version   int           `json:"version"`
	SavedNS   int64         `json:"saved_ns"`
	Processes []resumeEntry `json:"processes"`
}

type resumeEntry struct {
	PID     int           `json:"pid"`      // the label the shim reports
	PeerPID int32         `json:"peer_pid"` // the process bound to it (SO_PEERCRED)
	PeerUID int32         `json:"peer_uid"`
	Session string        `json:"session"`
	Token   string        `json:"token"`
	Ident   pmproto.Ident `json:"ident"`
	MaxSeq  uint64        `json:"max_seq"` // highest sequence number published
	Seen    bool          `json:"seen"`
	Dropped uint64        `json:"dropped"`
	Events  int64         `json:"events"`
	// InstanceKey is the multi-node instance whose session this is (instance.go), so the next
	// agent keeps refreshing its registry entry and its processes' new hellos stay in it.
	InstanceKey string `json:"instance_key,omitempty"`
}

// alive reports whether the process bound to p still runs: its peer when known, else its label.
func (p *proc) alive() bool {
	if p.peer.OK {
		return pidAlive(int(p.peer.Pid))
	}
	return pidAlive(p.pid)
}

// saveResume writes the live processes (a.mu held) and returns the sessions they keep open.
func (a *Agent) saveResume() (map[string]bool, error) {
	keep := map[string]bool{}
	st := resumeState{Version: resumeVersion, SavedNS: time.Now().UnixNano()}
	for _, p := range a.procs {
		if p.bye || p.sess.ended || !p.peer.OK || !p.alive() {
			continue
		}
		keep[p.sess.id] = true
		st.Processes = append(st.Processes, resumeEntry{PID: p.pid, PeerPID: p.peer.Pid, PeerUID: p.peer.UID,
			Session: p.sess.id, Token: p.token, Ident: p.ident, MaxSeq: p.maxSeq, Seen: p.seen, Dropped: p.dropped, Events: p.events,
			InstanceKey: a.instanceOf[p.sess.id]})
	}
	if len(st.Processes) == 0 {
		return keep, nil
	}
	b, err := json.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("resume state: %w", err)
	}
	path := filepath.Join(a.cfg.SpoolDir, resumeFile)
	if err := writeFileSync(path+".tmp", b); err != nil {
		return nil, fmt.Errorf("resume state: %w", err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return nil, fmt.Errorf("resume state: %w", err)
	}
	return keep, nil
}

// loadResume restores the processes an earlier agent left running (before the socket opens) and
// removes the file; processes that have exited since are left out (the reaper never saw them,
// the hub ends them with their host's session).
func (a *Agent) loadResume() {
	path := filepath.Join(a.cfg.SpoolDir, resumeFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	defer os.Remove(path)
	var st resumeState
	if err == nil {
		err = json.Unmarshal(b, &st)
	}
	if err != nil || st.Version != resumeVersion {
		a.log.Warn("resume state ignored", "file", path, "err", err, "version", st.Version)
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, e := range st.Processes {
		peer := peerCred{Pid: e.PeerPID, UID: e.PeerUID, OK: true}
		if !pidAlive(int(e.PeerPID)) {
			continue
		}
		s, ok := a.sessions[e.Session]
		if !ok {
			s = &session{id: e.Session, procs: map[int]*proc{}}
			a.sessions[e.Session] = s
		}
		p := &proc{pid: e.PID, sess: s, ident: e.Ident, token: e.Token, peer: peer, maxSeq: e.MaxSeq, seen: e.Seen,
			dropped: e.Dropped, events: e.Events}
		a.procs[e.PID] = p
		s.procs[e.PID] = p
		s.live++
		n++
		if e.InstanceKey != "" {
			a.instances[e.InstanceKey], a.instanceOf[e.Session] = e.Session, e.InstanceKey
		}
	}
	if n > 0 {
		a.log.Info("resuming processes of the previous agent", "processes", n, "sessions", len(a.sessions))
	}
}
