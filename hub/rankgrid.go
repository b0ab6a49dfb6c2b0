package hub

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/profilemate/profilemate/proto"
)

// RankGrid is a session's workers laid out as one vLLM instance (docs/multinode.md): the parallel
// sizes, the global ranks on each host with the TP, PP and DP ranks each worker reported, and the
// ranks that never joined. Sizes come from the launching command line of a process of the session
// (-tp/--tensor-parallel-size, -pp/--pipeline-parallel-size, -dp/--data-parallel-size; vLLM's
// default 1 for a size it leaves out) when one shows them and the workers' reported ranks fit
// them, else from the largest group ranks seen ("ranks": a missing highest rank cannot be told
// then). When the command line's sizes disagree with the ranks seen, CommandLine says so and the
// grid uses the ranks seen: a worker's ranks are never recomputed from sizes that do not hold.
type RankGrid struct {
	TP     int64              `json:"tp"`
	PP     int64              `json:"pp"`
	DP     int64              `json:"dp"`
	Source string             `json:"source"` // "argv" or "ranks"
	Hosts  map[string][]int64 `json:"hosts"`  // host -> global ranks of its workers, ascending
	// Missing are the global ranks 0..TP*PP*DP-1 no worker of the session reported.
	Missing []int64 `json:"missing,omitempty"`
	// Nodes is each host's node rank in the instance, for hosts whose processes agree on one
	// (ProcMeta.NodeRank).
	Nodes map[string]int64 `json:"node_ranks,omitempty"`
	// CommandLine is the sizes the command line gave ([tp, pp, dp]) when the workers' reported
	// ranks do not fit them (Source is then "ranks"); nil when they fit or no command line gave any.
	CommandLine *[3]int64 `json:"command_line_sizes,omitempty"`
	// Groups of each global rank as its worker reported them ([tp, pp, dp]; -1 reads as 0).
	reported map[int64][3]int64
}

// NewRankGrid lays out procs' workers; nil when the session has no worker process and its command
// line names no TP x PP above 1 (the model runs inside EngineCore).
func NewRankGrid(procs []*ProcMeta) *RankGrid {
	g := &RankGrid{Hosts: map[string][]int64{}, Source: "ranks", Nodes: map[string]int64{}, reported: map[int64][3]int64{}}
	var tp, pp, dp int64
	fromArgv := false
	for _, p := range procs {
		t, q, d := ParallelFlags(p.Argv)
		if t > 0 || q > 0 || d > 0 {
			fromArgv = true
			tp, pp, dp = max(tp, t), max(pp, q), max(dp, d)
		}
	}
	// vLLM's default for a size the command line leaves out is 1.
	tp, pp, dp = max(tp, 1), max(pp, 1), max(dp, 1)
	seen := map[int64]bool{}
	var mtp, mpp, mdp, top int64
	for _, p := range procs {
		if p.Role != proto.RoleWorker || p.Rank < 0 {
			continue
		}
		g.Hosts[p.Host] = append(g.Hosts[p.Host], p.Rank)
		seen[p.Rank] = true
		grp := [3]int64{max(p.TP, 0), max(p.PP, 0), max(p.DP, 0)}
		g.reported[p.Rank] = grp
		mtp, mpp, mdp, top = max(mtp, grp[0]+1), max(mpp, grp[1]+1), max(mdp, grp[2]+1), max(top, p.Rank+1)
	}
	if fromArgv {
		g.Source = "argv"
		if mtp > tp || mpp > pp || mdp > dp || top > tp*pp*dp {
			g.CommandLine = &[3]int64{tp, pp, dp}
			g.Source = "ranks"
		}
	}
	if g.Source == "ranks" {
		tp, pp, dp = max(mtp, 1), max(mpp, 1), max(mdp, 1)
		if top > tp*pp*dp { // ranks beyond the group ranks seen: more engines than DP ranks reported
			dp = (top + tp*pp - 1) / (tp * pp)
		}
	}
	g.TP, g.PP, g.DP = tp, pp, dp
	if len(seen) == 0 && g.TP*g.PP == 1 {
		return nil
	}
	for h := range g.Hosts {
		sort.Slice(g.Hosts[h], func(i, j int) bool { return g.Hosts[h][i] < g.Hosts[h][j] })
	}
	conflict := map[string]bool{}
	for _, p := range procs {
		if p.NodeRank == nil || conflict[p.Host] {
			continue
		}
		if n, ok := g.Nodes[p.Host]; ok && n != *p.NodeRank {
			conflict[p.Host] = true
			delete(g.Nodes, p.Host)
			continue
		}
		g.Nodes[p.Host] = *p.NodeRank
	}
	if g.TP*g.PP > 1 { // with TP x PP = 1 there are no worker processes to miss
		for r := int64(0); r < g.TP*g.PP*g.DP; r++ {
			if !seen[r] {
				g.Missing = append(g.Missing, r)
			}
		}
	}
	return g
}

// Groups returns the TP, PP and DP ranks of global rank r: the ones its worker reported, else
// those of vLLM's [dp][pp][tp] layout of the grid's sizes (a rank that never joined).
func (g *RankGrid) Groups(r int64) (tp, pp, dp int64) {
	if x, ok := g.reported[r]; ok {
		return x[0], x[1], x[2]
	}
	return r % g.TP, (r / g.TP) % g.PP, r / (g.TP * g.PP)
}

// HostNames is the grid's hosts, sorted.
func (g *RankGrid) HostNames() []string {
	out := make([]string, 0, len(g.Hosts))
	for h := range g.Hosts {
		out = append(out, h)
	}
	sort.Strings(out)
	return out
}

// Cell is global rank r as the grid names it: "w5(tp1 pp0 dp1)".
func (g *RankGrid) Cell(r int64) string {
	tp, pp, dp := g.Groups(r)
	return fmt.Sprintf("w%d(tp%d pp%d dp%d)", r, tp, pp, dp)
}

// Lines is the grid as `pmhub show` prints it: the sizes, one line per host ("hostB (node 1):
// w2(tp0 pp1 dp0)"; the node rank when known) and one per rank that never joined.
func (g *RankGrid) Lines() []string {
	out := []string{fmt.Sprintf("rank grid: TP %d x PP %d x DP %d = %d ranks (%s)", g.TP, g.PP, g.DP, g.TP*g.PP*g.DP, g.SourceText())}
	for _, h := range g.HostNames() {
		var cells []string
		for _, r := range g.Hosts[h] {
			cells = append(cells, g.Cell(r))
		}
		name := h
		if n, ok := g.Nodes[h]; ok {
			name = fmt.Sprintf("%s (node %d)", h, n)
		}
		out = append(out, fmt.Sprintf("  %s: %s", name, strings.Join(cells, " ")))
	}
	for _, r := range g.Missing {
		tp, pp, dp := g.Groups(r)
		out = append(out, fmt.Sprintf("  never joined: w%d (tp %d, pp %d, dp %d)", r, tp, pp, dp))
	}
	return out
}

// SourceText says where the sizes came from: "sizes from the command line", "sizes from the ranks
// seen", or with CommandLine set "sizes from the ranks seen; the command line says TP 1 x PP 1 x
// DP 4 = 4 ranks".
func (g *RankGrid) SourceText() string {
	if g.CommandLine != nil {
		c := g.CommandLine
		return fmt.Sprintf("sizes from the ranks seen; the command line says TP %d x PP %d x DP %d = %d ranks", c[0], c[1], c[2], c[0]*c[1]*c[2])
	}
	if g.Source == "argv" {
		return "sizes from the command line"
	}
	return "sizes from the ranks seen"
}

// ParallelFlags reads vLLM's parallel sizes from a command line (0: not given).
func ParallelFlags(argv []string) (tp, pp, dp int64) {
	for i, a := range argv {
		name, val, ok := strings.Cut(a, "=")
		if !ok && i+1 < len(argv) {
			val = argv[i+1]
		}
		n, err := strconv.ParseInt(val, 10, 64)
		if err != nil || n < 1 {
			continue
		}
		switch name {
		case "-tp", "--tensor-parallel-size", "--tensor_parallel_size":
			tp = n
		case "-pp", "--pipeline-parallel-size", "--pipeline_parallel_size":
			pp = n
		case "-dp", "--data-parallel-size", "--data_parallel_size":
			dp = n
		}
	}
	return tp, pp, dp
}
