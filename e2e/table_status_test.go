package e2e

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/profilemate/profilemate/hub"
)

// TestTableStatusReachesShow: each table's status travels from the shims' status lines through
// pmagent and the hub into metadata.json and `pmhub show`. Without a GPU, moe_expert_timing is
// "unavailable: needs CUDA events" in both; forward_pass_timing is recorded.
func TestTableStatusReachesShow(t *testing.T) {
	data := t.TempDir()
	h := startHub(t, data, freeAddr(t))
	py, env, _ := agSim(t, "PMSIM_REQUESTS=4", "PMSIM_TP=1")
	args := append([]string{"run", "--nats", h.url, "--host", "e2e-host", "--session", "tables", "--spool-dir", t.TempDir(),
		"--gpu-interval", "0"}, agSimArgs(py)...)
	p := agStart(t, env, args...)
	if err := p.wait(t, 4*time.Minute); err != nil {
		t.Fatalf("pmagent run: %v", err)
	}
	status := func(m *hub.Metadata, table string) map[string]bool {
		out := map[string]bool{}
		for _, pm := range m.Processes {
			for _, ts := range pm.Tables {
				if ts.Table == table {
					out[ts.Status] = true
				}
			}
		}
		return out
	}
	var m *hub.Metadata
	agWaitFor(t, 2*time.Minute, "table statuses in the hub's metadata", func() bool {
		var err error
		m, err = hub.ReadMetadata(hub.SessionDir(data, "tables"))
		return err == nil && m.Status == hub.StatusEnded && status(m, "forward_pass_timing")["recorded"]
	})
	if got := status(m, "moe_expert_timing"); !got["unavailable: needs CUDA events"] {
		t.Errorf("moe_expert_timing statuses %v, want one \"unavailable: needs CUDA events\"", got)
	}
	out, err := exec.Command(bin(t, "pmhub"), "show", "--data", data, "tables").CombinedOutput()
	if err != nil {
		t.Fatalf("pmhub show: %v\n%s", err, out)
	}
	for _, want := range []string{"table status:", "forward_pass_timing", "recorded", "moe_expert_timing", "unavailable: needs CUDA events"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("pmhub show lacks %q:\n%s", want, out)
		}
	}
}
