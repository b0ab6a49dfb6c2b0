package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/profilemate/profilemate/hub"
)

func worker(host string, rank, tp, pp, dp int64) *hub.ProcMeta {
	return &hub.ProcMeta{Host: host, Proc: "w", Ident: hub.Ident{Role: "worker", Rank: rank, TP: tp, PP: pp, DP: dp}}
}

// TestRankGridNamesMissingRank: -tp 2 -pp 2 --nnodes 2 with the follower's rank 3 never joining:
// the grid takes the sizes from the head's command line, puts ranks 0-1 on hostA and 2 on hostB,
// and names rank 3 with its group ranks.
func TestRankGridNamesMissingRank(t *testing.T) {
	procs := []*hub.ProcMeta{
		{Host: "hostA", Proc: "api0", Ident: hub.Ident{Role: "api_server", Rank: -1},
			Argv: strings.Fields("python3 vllm serve m -tp 2 -pp 2 --nnodes 2 --node-rank 0 --master-port 29600")},
		worker("hostA", 0, 0, 0, -1), worker("hostA", 1, 1, 0, -1), worker("hostB", 2, 0, 1, -1),
	}
	g := rankGrid(procs)
	if g == nil || g.TP != 2 || g.PP != 2 || g.DP != 1 || g.Source != "argv" {
		t.Fatalf("grid %+v, want TP 2 x PP 2 x DP 1 from argv", g)
	}
	if want := map[string][]int64{"hostA": {0, 1}, "hostB": {2}}; !reflect.DeepEqual(g.Hosts, want) {
		t.Errorf("hosts %v, want %v", g.Hosts, want)
	}
	if !reflect.DeepEqual(g.Missing, []int64{3}) {
		t.Errorf("missing %v, want [3]", g.Missing)
	}
	text := strings.Join(g.Lines(), "\n")
	for _, want := range []string{"TP 2 x PP 2 x DP 1 = 4 ranks", "hostB: w2(tp0 pp1 dp0)", "never joined: w3 (tp 1, pp 1, dp 0)"} {
		if !strings.Contains(text, want) {
			t.Errorf("grid lacks %q:\n%s", want, text)
		}
	}
}

// TestRankGridFromRanks: without a command line the sizes come from the ranks seen; a gap below
// the highest rank is still named.
func TestRankGridFromRanks(t *testing.T) {
	g := rankGrid([]*hub.ProcMeta{worker("a", 0, 0, 0, 0), worker("b", 2, 2, 0, 0), worker("b", 3, 3, 0, 0)})
	if g == nil || g.Source != "ranks" || g.TP != 4 || !reflect.DeepEqual(g.Missing, []int64{1}) {
		t.Fatalf("grid %+v, want TP 4 from ranks, rank 1 missing", g)
	}
	// DP with the model inside EngineCore: no worker processes, no grid.
	if g := rankGrid([]*hub.ProcMeta{{Host: "a", Ident: hub.Ident{Role: "engine_core", Rank: -1},
		Argv: strings.Fields("vllm serve m --data-parallel-size 4")}}); g != nil {
		t.Errorf("grid %+v for a session without workers", g)
	}
}

// demoInstance is one TP=8 instance over two hosts as `pmhub demo` runs it: API server,
// EngineCore and ranks 0-3 on hostA (node rank 0), ranks 4-7 on hostB (the headless follower).
func demoInstance() []*hub.ProcMeta {
	procs := []*hub.ProcMeta{
		{Host: "hostA", Proc: "api0", Ident: hub.Ident{Role: "api_server", Rank: 0, DP: -1, TP: -1, PP: -1, EP: -1},
			Argv: strings.Fields("python3 vllm serve m -tp 8 --nnodes 2 --node-rank 0 --master-port 29600")},
		{Host: "hostA", Proc: "eng0", Ident: hub.Ident{Role: "engine_core", Rank: -1, DP: -1, TP: -1, PP: -1, EP: -1}},
		{Host: "hostB", Proc: "api0", Ident: hub.Ident{Role: "api_server", Rank: 0, DP: -1, TP: -1, PP: -1, EP: -1},
			Argv: strings.Fields("python3 vllm serve m -tp 8 --nnodes 2 --node-rank 1 --master-port 29600 --headless")},
	}
	for r := int64(0); r < 8; r++ {
		h := "hostA"
		if r >= 4 {
			h = "hostB"
		}
		w := worker(h, r, r, 0, -1)
		w.Proc = "w" + strconv.FormatInt(r, 10)
		w.PID = 100 + r
		procs = append(procs, w)
	}
	return procs
}

// writeMeta writes a session folder holding only metadata.json with procs.
func writeMeta(t *testing.T, procs []*hub.ProcMeta) string {
	t.Helper()
	dir := t.TempDir()
	m := &hub.Metadata{Session: "20260101_000000_abcdef", Status: hub.StatusEnded, Processes: procs, Hosts: map[string]*hub.HostMeta{}}
	for _, p := range procs {
		m.Hosts[p.Host] = &hub.HostMeta{}
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, hub.MetadataFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestShowLayoutOneInstanceOverHosts: the per-host layout of one TP=8 instance spanning two hosts
// names each host's global ranks within the instance's sizes (it once said "TP 4" for hostA, from
// that host's own ranks, and nothing for hostB).
func TestShowLayoutOneInstanceOverHosts(t *testing.T) {
	s, err := summarize(writeMeta(t, demoInstance()))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"hostA": "4 workers: ranks 0-3 of TP 8 x PP 1 x DP 1", "hostB": "4 workers: ranks 4-7 of TP 8 x PP 1 x DP 1"}
	if !reflect.DeepEqual(s.Layout, want) {
		t.Fatalf("layout %q, want %q", s.Layout, want)
	}
	var out strings.Builder
	s.print(&out)
	if !strings.Contains(out.String(), "host hostB: api0 w4 w5 w6 w7 (4 workers: ranks 4-7 of TP 8 x PP 1 x DP 1)") {
		t.Errorf("show lacks hostB's layout:\n%s", out.String())
	}
}

func TestRankRanges(t *testing.T) {
	if got := rankRanges([]int64{0, 1, 2, 5, 7, 8}); got != "0-2,5,7-8" {
		t.Errorf("rankRanges = %q", got)
	}
}

// TestRankGridKeepsReportedRanks: DP=4 over two hosts whose command lines give no -tp while each
// EngineCore ran 4 workers (TP 4): the grid shows each worker's reported TP and DP ranks (w1 is
// tp1 dp0, not tp0 dp1), takes its sizes from the ranks seen and says what the command line gave.
func TestRankGridKeepsReportedRanks(t *testing.T) {
	procs := []*hub.ProcMeta{
		{Host: "hostA", Proc: "api0", Ident: hub.Ident{Role: "api_server", Rank: -1},
			Argv: strings.Fields("python3 vllm serve m --data-parallel-size 4 --data-parallel-size-local 2 --data-parallel-rpc-port 13400")},
	}
	for r := int64(0); r < 16; r++ {
		h := "hostA"
		if r >= 8 {
			h = "hostB"
		}
		procs = append(procs, worker(h, r, r%4, 0, r/4))
	}
	g := rankGrid(procs)
	if g == nil || g.TP != 4 || g.PP != 1 || g.DP != 4 || g.Source != "ranks" || g.CommandLine == nil || *g.CommandLine != [3]int64{1, 1, 4} {
		t.Fatalf("grid %+v, want TP 4 x PP 1 x DP 4 from the ranks seen, command line 1 x 1 x 4", g)
	}
	if len(g.Missing) != 0 {
		t.Errorf("missing %v, want none", g.Missing)
	}
	text := strings.Join(g.Lines(), "\n")
	for _, want := range []string{"TP 4 x PP 1 x DP 4 = 16 ranks (sizes from the ranks seen; the command line says TP 1 x PP 1 x DP 4 = 4 ranks)",
		"hostA: w0(tp0 pp0 dp0) w1(tp1 pp0 dp0)", "w9(tp1 pp0 dp2)"} {
		if !strings.Contains(text, want) {
			t.Errorf("grid lacks %q:\n%s", want, text)
		}
	}
	// A worker's reported ranks win over the layout of sizes that do fit (-tp 2 -pp 2, ranks as reported).
	g = rankGrid([]*hub.ProcMeta{{Host: "a", Ident: hub.Ident{Role: "api_server", Rank: -1}, Argv: strings.Fields("vllm serve m -tp 2 -pp 2")},
		worker("a", 0, 0, 0, -1), worker("a", 1, 1, 0, -1), worker("b", 2, 0, 1, -1), worker("b", 3, 1, 1, -1)})
	if g.Source != "argv" || g.CommandLine != nil || g.Cell(2) != "w2(tp0 pp1 dp0)" {
		t.Errorf("grid %+v cell %s, want sizes from argv, w2(tp0 pp1 dp0)", g, g.Cell(2))
	}
}
