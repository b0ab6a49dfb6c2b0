package main

import (
	"reflect"
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
	text := strings.Join(g.lines(), "\n")
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
