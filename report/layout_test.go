package report_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/report"
	"github.com/profilemate/profilemate/report/reporttest"
)

// TestReportShowsLayout: a session of one `-tp 4 -pp 2 --nnodes 2` instance over two hosts whose
// last rank never joined: the report's metadata names the instance, each host's node rank and
// global ranks with their group ranks, and the rank that never joined.
func TestReportShowsLayout(t *testing.T) {
	dir := synthetic(t, reporttest.Small()) // 2 hosts x 4 workers
	m, err := hub.ReadMetadata(dir)
	if err != nil {
		t.Fatal(err)
	}
	const key = "mp:10.0.0.1:29500"
	m.Instances = []string{key}
	var kept []*hub.ProcMeta
	for _, p := range m.Processes {
		node := int64(0)
		if p.Host != m.Processes[0].Host {
			node = 1
		}
		p.InstanceKey, p.NodeRank = key, &node
		if p.Role == "engine_core" && node == 0 {
			p.Argv = strings.Fields("python3 -m vllm serve m -tp 4 -pp 2 --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 --master-port 29500")
		}
		if p.Role == "worker" {
			// global ranks 0-3 on the first host (node 0), 4-7 on the second; 7 never joined
			p.Rank = p.TP + 4*node
			p.PP = node
			if p.Rank == 7 {
				continue
			}
		}
		kept = append(kept, p)
	}
	m.Processes = kept
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, hub.MetadataFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := report.Build(dir, report.Options{SkipAnalysis: true})
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := r.WriteHTML(&out); err != nil {
		t.Fatal(err)
	}
	html := out.String()
	for _, want := range []string{
		"<h3>Layout</h3>", "Instance " + key, "rank grid TP 4 × PP 2 × DP 1 (sizes from the command line)",
		"<td>1</td><td>w4(tp0 pp1 dp0) w5(tp1 pp1 dp0) w6(tp2 pp1 dp0)</td>",
		"<td>0</td><td>w0(tp0 pp0 dp0) w1(tp1 pp0 dp0) w2(tp2 pp0 dp0) w3(tp3 pp0 dp0)</td>",
		"Never joined: w7(tp3 pp1 dp0)",
	} {
		if !strings.Contains(html, want) {
			i := strings.Index(html, "<h3>Layout")
			t.Errorf("report lacks %q; layout section:\n%s", want, html[max(i, 0):min(len(html), max(i, 0)+1500)])
		}
	}
}
