package e2e

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/plugins/host"
)

var (
	exampleOnce sync.Once
	exampleBin  string
	exampleErr  error
)

// examplePlugin builds plugins/example once.
func examplePlugin(t *testing.T) string {
	t.Helper()
	exampleOnce.Do(func() {
		exampleBin = filepath.Join(binDir, "example")
		b := exec.Command("go", "build", "-o", exampleBin, "./plugins/example")
		b.Dir = ".."
		if out, err := b.CombinedOutput(); err != nil {
			exampleErr = err
			t.Logf("%s", out)
		}
	})
	if exampleErr != nil {
		t.Fatalf("build plugins/example: %v", exampleErr)
	}
	return exampleBin
}

func pmhubOut(t *testing.T, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(bin(t, "pmhub"), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("pmhub %v: %v\n%s", args, err, out)
	}
	return out
}

func pluginsLs(t *testing.T, data string) map[string]host.Status {
	t.Helper()
	var st []host.Status
	if err := json.Unmarshal(pmhubOut(t, "plugins", "ls", "--data", data, "--json"), &st); err != nil {
		t.Fatal(err)
	}
	out := map[string]host.Status{}
	for _, s := range st {
		out[s.File] = s
	}
	return out
}

func csvRows(t *testing.T, path string) (map[string]int, [][]string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		t.Fatal(err)
	}
	// Files are read while they grow: take whole lines only.
	b = b[:bytes.LastIndexByte(b, '\n')+1]
	recs, err := csv.NewReader(bytes.NewReader(b)).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(recs) == 0 {
		return nil, nil
	}
	idx := map[string]int{}
	for i, c := range recs[0] {
		idx[c] = i
	}
	return idx, recs[1:]
}

// TestPluginHotAddKillRemove: pmhub serve with a plugins folder; a simulated vLLM run under
// pmagent pauses mid-session; the example plugin binary is copied into the folder (a plain,
// non-atomic copy) and back-fills the session so far; kill -9 of the plugin while the run goes on
// restarts it; at the end its rows count every forward-pass batch exactly once and add up to the
// hub's forward_pass_timing rows; pmhub plugins rm stops it.
func TestPluginHotAddKillRemove(t *testing.T) {
	bin(t, "pmagent")
	example := examplePlugin(t)
	data := t.TempDir()
	plugDir := filepath.Join(data, "plugins")
	h := startHub(t, data, freeAddr(t), "--plugin-timeout", "20s")
	session := "20261130_061000_0e0e0e"
	pause := filepath.Join(t.TempDir(), "continue")
	py, env, _ := agSim(t, "PMSIM_REQUESTS=12", "PMSIM_PAUSE_FILE="+pause)
	args := append([]string{"run", "--nats", h.url, "--host", "plug-host", "--session", session, "--spool-dir", t.TempDir()}, agSimArgs(py)...)
	p := agStart(t, env, args...)
	defer os.WriteFile(pause, nil, 0o644)

	dir := hub.SessionDir(data, session)
	fp := filepath.Join(dir, "forward_pass_timing.csv")
	agWaitFor(t, 3*time.Minute, "the simulator to pause mid-session", func() bool {
		_, err := os.Stat(pause + ".waiting")
		_, rows := csvRows(t, fp)
		return err == nil && len(rows) > 0
	})

	// A plain copy: the host waits until it is complete.
	b, err := os.ReadFile(example)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(plugDir, "example"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	eb := filepath.Join(dir, "example_batches.csv")
	agWaitFor(t, time.Minute, "back-filled rows while the run is paused", func() bool {
		_, rows := csvRows(t, eb)
		return len(rows) > 0 && pluginsLs(t, data)["example"].Lag == 0 && pluginsLs(t, data)["example"].State == host.StateRunning
	})
	st := pluginsLs(t, data)["example"]
	if st.Name != "example" || st.Version != "1.0.0" || st.Kinds[0] != "forward_pass" || st.PID == 0 {
		t.Fatalf("plugins ls: %+v", st)
	}
	if err := syscall.Kill(int(st.PID), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pause, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := p.wait(t, 4*time.Minute); err != nil {
		t.Fatalf("pmagent run: %v\n%s", err, p.output())
	}
	agWaitFor(t, 2*time.Minute, "the session to end and the plugin to close it", func() bool {
		m, err := hub.ReadMetadata(dir)
		sp, _ := host.ReadSessionPlugins(dir)
		return err == nil && m.Status == hub.StatusEnded && sp["example"].Closed
	})
	agWaitFor(t, time.Minute, "plugins ls to show the restart and the plugin running", func() bool {
		st := pluginsLs(t, data)["example"]
		return st.Restarts >= 1 && st.State == host.StateRunning && st.PID > 0
	})

	// Counted against the input: the hub's forward-pass rows, one example row per stream message.
	fidx, fprows := csvRows(t, fp)
	idx, rows := csvRows(t, eb)
	seen := map[string]bool{}
	events := 0
	for _, r := range rows {
		if seen[r[idx["input_seq"]]] {
			t.Errorf("input_seq %s written twice", r[idx["input_seq"]])
		}
		seen[r[idx["input_seq"]]] = true
		n, _ := strconv.Atoi(r[idx["events"]])
		events += n
	}
	if events != len(fprows) {
		t.Errorf("example_batches covers %d forward passes, the hub wrote %d", events, len(fprows))
	}
	// The hub's own rows: every worker's seq runs without a gap.
	perPID := map[string]map[int]bool{}
	for _, r := range fprows {
		pid := r[fidx["pid"]]
		if perPID[pid] == nil {
			perPID[pid] = map[int]bool{}
		}
		s, _ := strconv.Atoi(r[fidx["seq"]])
		perPID[pid][s] = true
	}
	_, totals := csvRows(t, filepath.Join(dir, "example_totals.csv"))
	if len(totals) != len(perPID) {
		t.Errorf("%d totals rows, want one per worker: %d", len(totals), len(perPID))
	}
	_, findings := csvRows(t, filepath.Join(dir, "findings.csv"))
	if len(findings) != 1 {
		t.Errorf("%d findings, want 1", len(findings))
	}
	out := pmhubOut(t, "show", "--data", data, session)
	if !bytes.Contains(out, []byte("slowest forward passes")) || !bytes.Contains(out, []byte("plugin example 1.0.0 (closed): example_batches")) {
		t.Errorf("pmhub show does not print the plugin's work and finding:\n%s", out)
	}

	pid := pluginsLs(t, data)["example"].PID
	if pid <= 0 {
		t.Fatalf("no plugin pid in plugins ls")
	}
	pmhubOut(t, "plugins", "rm", "--data", data, "example")
	agWaitFor(t, time.Minute, "the plugin to stop", func() bool {
		_, listed := pluginsLs(t, data)["example"]
		return !listed && syscall.Kill(int(pid), 0) != nil
	})
}
