package e2e

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/profilemate/profilemate/hub"
)

// TestHubRotationUnionIsGroundTruth runs the real pmhub with rotation by size (a small
// --rotate-bytes, so the boundaries fall deterministically by bytes written, not by time) and a
// real `pmagent run` over the simulator with 4 workers. The session crosses several boundaries
// while workers publish concurrently; then:
//   - the segments form one chain (index, previous, closed by rotation, the live one last);
//   - across all segments every event (host, pid, seq) is written exactly once and each process's
//     rows equal what its shim said it emitted (seq 1..last_seq), nothing dropped, no gap;
//   - the union of the segments' MoE rows equals the simulator's per-step ground truth exactly;
//   - `pmhub show` over all segments counts each worker's steps as the simulator ran them, and
//     `pmhub sessions` lists the session once with its segment count.
func TestHubRotationUnionIsGroundTruth(t *testing.T) {
	bin(t, "pmagent")
	data := t.TempDir()
	h := startHub(t, data, freeAddr(t), "--plugins=false", "--rotate-bytes", "49152")
	session := "20261130_080000_0a0b0d"
	py, env, truthPath := agSim(t, "PMSIM_REQUESTS=12", "PROFILEMATE_MOE_INTERVAL_STEPS=1")
	args := append([]string{"run", "--nats", h.url, "--host", "rot-host", "--session", session, "--spool-dir", t.TempDir()}, agSimArgs(py)...)
	p := agStart(t, env, args...)
	if err := p.wait(t, 4*time.Minute); err != nil {
		t.Fatalf("pmagent run: %v\n%s", err, p.output())
	}
	live := hub.SessionDir(data, session)
	var m *hub.Metadata
	agWaitFor(t, 2*time.Minute, "the session to end", func() bool {
		mm, err := hub.ReadMetadata(live)
		m = mm
		return err == nil && mm.Status == hub.StatusEnded && mm.EndReason == hub.EndAllProcessesEnded
	})
	dirs, err := hub.Segments(data, session)
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) < 3 {
		t.Fatalf("%d segments, want the run to cross several boundaries (lower --rotate-bytes)", len(dirs))
	}
	t.Logf("%d segments", len(dirs))

	// The chain.
	for i, d := range dirs {
		sm, err := hub.ReadMetadata(d)
		if err != nil {
			t.Fatal(err)
		}
		g := sm.Segment
		if g == nil || g.Index != i || sm.Session != session {
			t.Fatalf("segment %d (%s): %+v of session %q", i, d, g, sm.Session)
		}
		if i > 0 && g.Previous != filepath.Base(dirs[i-1]) {
			t.Errorf("segment %d: previous %q, want %q", i, g.Previous, filepath.Base(dirs[i-1]))
		}
		if closed := i < len(dirs)-1; closed && (sm.EndReason != hub.EndRotated || g.Rotated != "bytes") {
			t.Errorf("segment %d closed by %q/%q, want a rotation by bytes", i, sm.EndReason, g.Rotated)
		}
	}

	// Every event exactly once across the segments; per process all its shim emitted, ended with no
	// drop or gap; the union equals the simulator's ground truth.
	for _, pm := range m.Processes {
		if pm.Role != "agent" && pm.Role != "" && (!pm.Ended || pm.Dropped != 0 || len(pm.Gaps) != 0) {
			t.Errorf("%s/%d: ended %v dropped %d gaps %v", pm.Host, pm.PID, pm.Ended, pm.Dropped, pm.Gaps)
		}
	}
	checkSegmentUnion(t, dirs, m, truthPath)

	// show over all segments: each worker's steps as the simulator ran them.
	var sum struct {
		Steps    map[string]int `json:"steps"`
		Segments int            `json:"segments"`
		Ranks    []struct {
			Proc string `json:"proc"`
			PID  int64  `json:"pid"`
		} `json:"ranks"`
	}
	if err := json.Unmarshal(pmhubOut(t, "show", "--data", data, "--json", session), &sum); err != nil {
		t.Fatal(err)
	}
	if sum.Segments != len(dirs) {
		t.Errorf("show: %d segments, want %d", sum.Segments, len(dirs))
	}
	procOf := map[int64]string{}
	for _, r := range sum.Ranks {
		procOf[r.PID] = r.Proc
	}
	for _, tp := range agReadTruth(t, truthPath).Processes {
		if tp.Role != "worker" {
			continue
		}
		if got, want := sum.Steps["rot-host/"+procOf[tp.PID]], len(tp.ExpertCountsByStep); got != want {
			t.Errorf("show: worker rank %d (pid %d) %d steps over all segments, the simulator ran %d", tp.Rank, tp.PID, got, want)
		}
	}
	var list []struct {
		Session  string `json:"session"`
		Segments int    `json:"segments"`
	}
	if err := json.Unmarshal(pmhubOut(t, "sessions", "--data", data, "--json"), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Session != session || list[0].Segments != len(dirs) {
		t.Errorf("sessions: %+v, want %s once with %d segments", list, session, len(dirs))
	}
}

// checkSegmentUnion checks a rotated session's segment folders (oldest first) against m, the live
// segment's metadata: every event (host, pid, seq) is written once across them, each process's rows
// number its shim's last_seq, at least agWorkers() processes took part, and the segments' MoE
// counts together equal the simulator's ground truth at truthPath.
func checkSegmentUnion(t *testing.T, dirs []string, m *hub.Metadata, truthPath string) {
	t.Helper()
	type key struct {
		host string
		pid  int64
	}
	rows := map[key]uint64{}
	seen := map[string]string{}
	for _, d := range dirs {
		files, _ := filepath.Glob(filepath.Join(d, "*.csv"))
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			recs, err := csv.NewReader(bytes.NewReader(b)).ReadAll()
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			col := map[string]int{}
			for j, c := range recs[0] {
				col[c] = j
			}
			for _, r := range recs[1:] {
				pid, _ := strconv.ParseInt(r[col["pid"]], 10, 64)
				id := fmt.Sprintf("%s/%d/%s", r[col["host"]], pid, r[col["seq"]])
				if other, dup := seen[id]; dup {
					t.Fatalf("event %s written twice: %s and %s", id, other, filepath.Base(d))
				}
				seen[id] = filepath.Base(d)
				rows[key{r[col["host"]], pid}]++
			}
		}
	}
	checked := 0
	for _, pm := range m.Processes {
		if pm.Role == "agent" || pm.Role == "" {
			continue
		}
		checked++
		if got := rows[key{pm.Host, pm.PID}]; got != pm.LastSeq {
			t.Errorf("%s/%d (%s rank %d): %d rows over all segments, its shim emitted %d", pm.Host, pm.PID, pm.Role, pm.Rank, got, pm.LastSeq)
		}
	}
	if checked < agWorkers() {
		t.Fatalf("%d processes in the live segment's metadata, want at least the %d workers", checked, agWorkers())
	}
	merged := filepath.Join(t.TempDir(), m.Session)
	if _, err := hub.CopyWindow(dirs, hub.Window{}, merged); err != nil {
		t.Fatal(err)
	}
	checkMoEAfterOn(t, filepath.Join(merged, "moe_expert_selection.csv"), truthPath, 0, agWorkers())
}
