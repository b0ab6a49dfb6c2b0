// Package report turns a hub session folder (<data>/sessions/<id>/: one CSV per table of
// proto/tables plus metadata.json) into one self-contained HTML page: plots rendered server-side as
// SVG with gonum.org/v1/plot, the session's findings and its metadata. Tables are streamed, so a
// session of any size renders in memory bounded by the number of series times Options.MaxPoints.
// Compare renders two sessions side by side with a table of deltas.
package report

import (
	"fmt"
	"os"
	"strconv"

	"github.com/profilemate/profilemate/hub"
)

// Session is one session folder opened for reading.
type Session struct {
	Dir  string
	Meta *hub.Metadata
	// Origin is the time plots count seconds from (ns, aligned clock): metadata's start_ns.
	Origin int64
	procs  map[string]*hub.ProcMeta // "host/pid" -> process
}

// Open reads dir's metadata.json. Errors: the folder or its metadata is missing or unreadable.
func Open(dir string) (*Session, error) {
	if st, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("session folder: %w", err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("session folder %s is not a folder", dir)
	}
	m, err := hub.ReadMetadata(dir)
	if err != nil {
		return nil, err
	}
	s := &Session{Dir: dir, Meta: m, Origin: m.StartNS, procs: map[string]*hub.ProcMeta{}}
	for _, p := range m.Processes {
		s.procs[p.Host+"/"+strconv.FormatInt(p.PID, 10)] = p
	}
	return s, nil
}

// ProcKey names the row's process as "host/proc" (proc token from metadata, e.g. hostA/w3); the
// agent's own rows are "host/agent", another process metadata does not know "host/pid<N>".
func (s *Session) ProcKey(r *Rows) string {
	host, pid := r.Str("host"), r.Str("pid")
	if p := s.procs[host+"/"+pid]; p != nil && p.Proc != "" {
		return host + "/" + p.Proc
	}
	if r.Str("role") == "agent" { // the agent's own rows (GPU samples without an owner)
		return host + "/agent"
	}
	return host + "/pid" + pid
}

// Proc returns the metadata of the row's process, nil when unknown.
func (s *Session) Proc(r *Rows) *hub.ProcMeta { return s.procs[r.Str("host")+"/"+r.Str("pid")] }
