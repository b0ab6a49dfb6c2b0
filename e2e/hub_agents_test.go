package e2e

import (
	"bytes"
	"encoding/csv"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/profilemate/profilemate/hub"
)

// TestHubTwoAgentsOneSession runs the embedded hub and two agents (hostA, hostB), each over the
// simulator with 4 workers, in one session, and checks the merged folder against what the shims
// say they emitted and the simulators' ground truth.
func TestHubTwoAgentsOneSession(t *testing.T) {
	bin(t, "pmagent")
	data := t.TempDir()
	h := startHub(t, data, freeAddr(t))
	session := "20261126_130000_0a0b0c"
	hosts := []string{"hostA", "hostB"}
	truths := map[string]string{}
	var procs []*agProc
	for _, host := range hosts {
		py, env, truth := agSim(t, "PMSIM_REQUESTS=8")
		truths[host] = truth
		args := append([]string{"run", "--nats", h.url, "--host", host, "--session", session, "--spool-dir", t.TempDir()}, agSimArgs(py)...)
		procs = append(procs, agStart(t, env, args...))
	}
	for i, p := range procs {
		if err := p.wait(t, 4*time.Minute); err != nil {
			t.Fatalf("pmagent on %s: %v", hosts[i], err)
		}
	}
	dir := hub.SessionDir(data, session)
	var m *hub.Metadata
	deadline := time.Now().Add(2 * time.Minute)
	for {
		mm, err := hub.ReadMetadata(dir)
		if err == nil && mm.Status == hub.StatusEnded && mm.Hosts[hosts[0]] != nil && mm.Hosts[hosts[0]].Ended &&
			mm.Hosts[hosts[1]] != nil && mm.Hosts[hosts[1]].Ended {
			m = mm
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("session not ended: %v %+v", err, mm)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if m.EndReason != hub.EndAllProcessesEnded {
		t.Errorf("end reason %q, want %q", m.EndReason, hub.EndAllProcessesEnded)
	}
	for _, host := range hosts {
		if _, ok := m.Hosts[host]; !ok {
			t.Errorf("metadata lacks host %s: %v", host, m.Hosts)
		}
	}

	// Every process of the ground truth is in metadata with its role and rank.
	type key struct {
		host string
		pid  int64
	}
	meta := map[key]*hub.ProcMeta{}
	for _, p := range m.Processes {
		meta[key{p.Host, p.PID}] = p
	}
	rankOf := map[key]int{}
	for _, host := range hosts {
		workers := 0
		for _, tp := range agReadTruth(t, truths[host]).Processes {
			pm := meta[key{host, tp.PID}]
			if tp.Role != "worker" && pm == nil {
				continue // api server / engine may record nothing in a short run
			}
			if pm == nil {
				t.Errorf("%s worker rank %d (pid %d) missing from metadata", host, tp.Rank, tp.PID)
				continue
			}
			if pm.Role != tp.Role || (tp.Role == "worker" && int(pm.Rank) != tp.Rank) {
				t.Errorf("%s pid %d: metadata %s rank %d, ground truth %s rank %d", host, tp.PID, pm.Role, pm.Rank, tp.Role, tp.Rank)
			}
			if tp.Role == "worker" {
				workers++
				rankOf[key{host, tp.PID}] = tp.Rank
			}
		}
		if workers != 4 {
			t.Errorf("%s: %d workers in ground truth and metadata, want 4", host, workers)
		}
	}

	// Rows per process = what its shim said it emitted (seq 1..last_seq, nothing dropped).
	rows := map[key]uint64{}
	seen := map[string]bool{}
	for _, table := range tableFiles(t, dir) {
		b, err := os.ReadFile(filepath.Join(dir, table))
		if err != nil {
			t.Fatal(err)
		}
		recs, err := csv.NewReader(bytes.NewReader(b)).ReadAll()
		if err != nil {
			t.Fatalf("%s: %v", table, err)
		}
		col := map[string]int{}
		for i, c := range recs[0] {
			col[c] = i
		}
		for _, r := range recs[1:] {
			pid, _ := strconv.ParseInt(r[col["pid"]], 10, 64)
			k := key{r[col["host"]], pid}
			if r[col["session"]] != session {
				t.Fatalf("%s: row of session %q", table, r[col["session"]])
			}
			id := fmt.Sprintf("%s/%d/%s", k.host, pid, r[col["seq"]])
			if seen[id] {
				t.Fatalf("%s: event %s twice", table, id)
			}
			seen[id] = true
			if rk, ok := rankOf[k]; ok && r[col["role"]] == "worker" && r[col["tp"]] != strconv.Itoa(rk) {
				t.Fatalf("%s: %s worker rank %d written with tp %s", table, id, rk, r[col["tp"]])
			}
			if k.host != hosts[0] && k.host != hosts[1] && r[col["role"]] != "agent" {
				t.Fatalf("%s: row of unknown host %q", table, k.host)
			}
			rows[k]++
		}
	}
	for k, pm := range meta {
		if pm.Role == "agent" || pm.Role == "" {
			continue
		}
		if !pm.Ended || pm.Dropped != 0 || len(pm.Gaps) != 0 {
			t.Errorf("%s/%d: ended %v dropped %d gaps %v", k.host, k.pid, pm.Ended, pm.Dropped, pm.Gaps)
		}
		if rows[k] != pm.LastSeq {
			t.Errorf("%s/%d (%s rank %d): %d rows, its shim emitted %d", k.host, k.pid, pm.Role, pm.Rank, rows[k], pm.LastSeq)
		}
	}
	if len(rows) == 0 {
		t.Fatal("no rows written")
	}
}

func tableFiles(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := filepath.Glob(filepath.Join(dir, "*.csv"))
	if err != nil || len(ents) == 0 {
		t.Fatalf("no CSV files in %s: %v", dir, err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, filepath.Base(e))
	}
	return out
}
