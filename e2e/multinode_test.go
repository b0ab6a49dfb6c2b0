package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/profilemate/profilemate/agent"
	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/internal/testkit"
	"github.com/profilemate/profilemate/shim"
	"github.com/profilemate/profilemate/testbed"
)

// mnHost is one simulated host: a `pmagent serve` of its own (socket, host name), with the shim
// and the test tree unpacked for the vLLM processes started on it.
type mnHost struct {
	name, sock, tree, shimDir, dir string
	agent                          *agProc
}

// mnStartHost starts host name's agent; extra are further `pmagent serve` flags (a later one
// wins over the default --session-linger 1s).
func mnStartHost(t *testing.T, natsURL, name string, extra ...string) *mnHost {
	t.Helper()
	h := &mnHost{name: name, sock: filepath.Join(agShortDir(t), "a.sock"), dir: t.TempDir()}
	h.tree, h.shimDir = filepath.Join(h.dir, "testbed"), filepath.Join(h.dir, "shim")
	if err := testbed.Unpack(h.tree); err != nil {
		t.Fatal(err)
	}
	if err := shim.Unpack(h.shimDir); err != nil {
		t.Fatal(err)
	}
	h.startAgent(t, natsURL, extra...)
	return h
}

// startAgent starts (again) the host's `pmagent serve` on its socket and waits for the socket.
func (h *mnHost) startAgent(t *testing.T, natsURL string, extra ...string) {
	t.Helper()
	// No --session anywhere: the instance key decides.
	args := append([]string{"serve", "--socket", h.sock, "--nats", natsURL, "--host", h.name,
		"--spool-dir", t.TempDir(), "--gpu-interval", "0", "--session-linger", "1s"}, extra...)
	h.agent = agStart(t, nil, args...)
	agWaitFor(t, time.Minute, h.name+"'s agent socket", func() bool { return agStatus(t, h.sock) != nil })
}

// killAgent ends the host's agent with SIGKILL (no session end, no registry update) and waits for
// it to be gone.
func (h *mnHost) killAgent(t *testing.T) {
	t.Helper()
	if err := h.agent.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	err := <-h.agent.done
	h.agent.done <- err // for the cleanup, which waits for it too
}

// mnServe starts `vllm serve` of the test tree on host h; truth is its ground-truth file.
func (h *mnHost) serve(t *testing.T, py, truth string, args ...string) *exec.Cmd {
	t.Helper()
	return h.launch(t, py, truth, nil, append([]string{filepath.Join(h.tree, "bin", "vllm"), "serve", "pm-e2e-model"}, args...)...)
}

// launch starts a script of the test tree on host h with the shim and the given extra variables.
func (h *mnHost) launch(t *testing.T, py, truth string, env []string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(py, args...)
	cmd.Env = append(os.Environ(),
		"PYTHONPATH="+strings.Join([]string{h.shimDir, filepath.Join(h.tree, "eras", "v0_16_0"), h.tree}, string(os.PathListSeparator)),
		"VLLM_ENABLE_PROFILING=1", "PROFILEMATE_SOCKET="+h.sock, "PROFILEMATE_SESSION=",
		"PROFILEMATE_OUTPUT_DIR="+filepath.Join(h.dir, "standalone"), "PROFILEMATE_CACHE="+filepath.Join(h.dir, "cache"),
		"PMSIM_GROUND_TRUTH="+truth, "PMSIM_STEP_WORK_MS=0", "PMSIM_REQUESTS=4", "PMSIM_MAX_TOKENS=6",
		"PMSIM_RPC_TIMEOUT_S=60", "PMSIM_START_TIMEOUT_S=120")
	cmd.Env = append(cmd.Env, env...)
	out, err := os.Create(truth + ".log")
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		out.Close()
	})
	return cmd
}

func mnWait(t *testing.T, cmds ...*exec.Cmd) {
	t.Helper()
	for _, c := range cmds {
		if err := c.Wait(); err != nil {
			b, _ := os.ReadFile(c.Stdout.(*os.File).Name())
			t.Fatalf("%s: %v\n%s", strings.Join(c.Args, " "), err, b)
		}
	}
}

func mnPort(t *testing.T) string {
	_, p, _ := net.SplitHostPort(freeAddr(t))
	return p
}

// mnProc is what the stream says about one process: the sessions of its batches and of its last
// lifecycle record (a Ray actor's first hello may come before it learnt its instance), and its
// last full identity.
type mnProc struct {
	host, role       string
	sessions         map[string]bool
	lastLife         string
	rank, tp, pp, dp int32
	// key and node: the instance key and node rank the agent's lifecycle records gave it ("" and
	// -1 when none did).
	key  string
	node int32
}

// mnProcs collects every process the stream names, by host and pid.
func mnProcs(s *agStream) map[string]*mnProc {
	out := map[string]*mnProc{}
	add := func(host string, pid int64, session, role string, rank, tp, pp, dp int32, life bool) *mnProc {
		if role == "" || role == "agent" {
			return nil
		}
		k := fmt.Sprintf("%s/%d", host, pid)
		p := out[k]
		if p == nil {
			p = &mnProc{host: host, sessions: map[string]bool{}, rank: -1, tp: -1, pp: -1, dp: -1, node: -1}
			out[k] = p
		}
		if life {
			p.lastLife = session
		} else {
			p.sessions[session] = true
		}
		p.role = role
		if rank >= 0 || p.rank < 0 {
			p.rank, p.tp, p.pp, p.dp = rank, tp, pp, dp
		}
		return p
	}
	for _, l := range s.life {
		p := l.GetProcess()
		if q := add(p.Host, p.Pid, p.Session, p.Role, p.Rank, p.Tp, p.Pp, p.Dp, true); q != nil {
			if p.GetInstanceKey() != "" {
				q.key = p.GetInstanceKey()
			}
			if p.NodeRank != nil {
				q.node = p.GetNodeRank()
			}
		}
	}
	for _, b := range s.batches {
		p := b.GetProcess()
		add(p.Host, p.Pid, p.Session, p.Role, p.Rank, p.Tp, p.Pp, p.Dp, false)
	}
	for _, p := range out {
		if p.lastLife != "" {
			p.sessions[p.lastLife] = true
		}
	}
	return out
}

// mnTruth is a node's ground truth (worker rank = global rank; engine_core rank = DP rank).
type mnTruth struct {
	Processes []struct {
		Role       string `json:"role"`
		Rank       int32  `json:"rank"`
		PID        int64  `json:"pid"`
		TPRank     *int32 `json:"tp_rank"`
		PPRank     *int32 `json:"pp_rank"`
		DPRank     *int32 `json:"dp_rank"`
		GlobalRank *int32 `json:"global_rank"`
	} `json:"processes"`
}

// mnCheck checks that every worker and EngineCore of the ground truth of each host is in the
// stream under that host, all in exactly one session, with the ground truth's global and group
// ranks; it returns that session.
func mnCheck(t *testing.T, procs map[string]*mnProc, truths map[string]string, wantWorkers, wantEngines int) string {
	t.Helper()
	sessions, instKeys := map[string]bool{}, map[string]bool{}
	workers, engines := map[int32]string{}, map[int32]string{}
	for host, path := range truths {
		var tr mnTruth
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%s ground truth: %v", host, err)
		}
		if err := json.Unmarshal(b, &tr); err != nil {
			t.Fatal(err)
		}
		for _, tp := range tr.Processes {
			if tp.Role != "worker" && tp.Role != "engine_core" {
				continue
			}
			p := procs[fmt.Sprintf("%s/%d", host, tp.PID)]
			if p == nil {
				t.Errorf("%s: %s rank %d (pid %d) never joined", host, tp.Role, tp.Rank, tp.PID)
				continue
			}
			for s := range p.sessions {
				sessions[s] = true
			}
			// The agents place every process in the instance (metadata's instance_key and
			// node_rank): hostA is node 0, hostB node 1; Ray has no node ranks.
			instKeys[p.key] = true
			wantNode := map[string]int32{"hostA": 0, "hostB": 1}[host]
			if strings.HasPrefix(p.key, "ray:") {
				wantNode = -1
			}
			if p.node != wantNode {
				t.Errorf("%s %s pid %d: node rank %d, want %d (instance %q)", host, tp.Role, tp.PID, p.node, wantNode, p.key)
			}
			switch tp.Role {
			case "worker":
				workers[tp.Rank] = host
				if p.rank != tp.Rank || p.tp != *tp.TPRank || p.pp != *tp.PPRank {
					t.Errorf("%s pid %d: global rank %d tp %d pp %d, ground truth %d tp %d pp %d",
						host, tp.PID, p.rank, p.tp, p.pp, tp.Rank, *tp.TPRank, *tp.PPRank)
				}
			case "engine_core":
				engines[tp.Rank] = host
				// Without data parallelism the shim says dp -1 (no DP group).
				if wantEngines > 1 && p.dp != *tp.DPRank {
					t.Errorf("%s EngineCore pid %d: dp %d, ground truth %d", host, tp.PID, p.dp, *tp.DPRank)
				}
			}
		}
	}
	if len(workers) != wantWorkers || len(engines) != wantEngines {
		t.Errorf("ground truth has workers %v and EngineCores %v, want %d and %d", workers, engines, wantWorkers, wantEngines)
	}
	if len(sessions) != 1 {
		t.Fatalf("the instance's processes are in sessions %v, want one", keys(sessions))
	}
	if len(instKeys) != 1 || instKeys[""] {
		t.Errorf("the instance's processes carry instance keys %q, want one", keys(instKeys))
	}
	return keys(sessions)[0]
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestMultiNodeInstancesJoinOneSession runs vLLM's multi-node shapes over two agents (hostA,
// hostB) without --session anywhere: every process of one instance lands in one session, with
// the global and group ranks of the simulator's ground truth; two instances side by side stay two
// sessions and a restart on the same port is a new session.
func TestMultiNodeInstancesJoinOneSession(t *testing.T) {
	bin(t, "pmagent")
	py := mnPython(t)
	ns := agStartNATS(t)
	ns.createStream()
	a, b := mnStartHost(t, ns.url(), "hostA"), mnStartHost(t, ns.url(), "hostB")
	dir := t.TempDir()
	seen := map[string]string{} // session -> case
	type launched struct {
		name   string
		cmds   []*exec.Cmd
		truths map[string]string
	}
	// start launches the head on hostA and the follower on hostB.
	start := func(t *testing.T, name string, head, follower []string) launched {
		truths := map[string]string{"hostA": filepath.Join(dir, name+"-a.json"), "hostB": filepath.Join(dir, name+"-b.json")}
		return launched{name, []*exec.Cmd{a.serve(t, py, truths["hostA"], head...), b.serve(t, py, truths["hostB"], follower...)}, truths}
	}
	// check waits for the instance to exit and returns its one session, which no earlier run had.
	check := func(t *testing.T, l launched, wantWorkers, wantEngines int) string {
		t.Helper()
		mnWait(t, l.cmds...)
		agWaitFor(t, time.Minute, l.name+"'s processes on the stream", func() bool { return mnAllJoined(mnProcs(ns.read()), l.truths) })
		sess := mnCheck(t, mnProcs(ns.read()), l.truths, wantWorkers, wantEngines)
		mnOnlyVLLM(t, mnProcs(ns.read()), l.truths, sess)
		if prev, ok := seen[sess]; ok {
			t.Fatalf("%s landed in session %s of %s", l.name, sess, prev)
		}
		seen[sess] = l.name
		return sess
	}
	run := func(t *testing.T, name string, wantWorkers, wantEngines int, head, follower []string) string {
		return check(t, start(t, name, head, follower), wantWorkers, wantEngines)
	}
	mp := func(port string, rank int, extra ...string) []string {
		args := append([]string{"--nnodes", "2", "--node-rank", strconv.Itoa(rank), "--master-addr", "127.0.0.1", "--master-port", port}, extra...)
		if rank > 0 {
			args = append(args, "--headless")
		}
		return args
	}
	port := mnPort(t)
	t.Run("tp4-nnodes2", func(t *testing.T) {
		run(t, "tp4", 4, 1, mp(port, 0, "-tp", "4"), mp(port, 1, "-tp", "4"))
	})
	t.Run("tp2-pp2-nnodes2", func(t *testing.T) {
		p := mnPort(t)
		run(t, "tp2pp2", 4, 1, mp(p, 0, "-tp", "2", "-pp", "2"), mp(p, 1, "-tp", "2", "-pp", "2"))
	})
	t.Run("dp4-two-nodes", func(t *testing.T) {
		p := mnPort(t)
		dp := []string{"--data-parallel-size", "4", "--data-parallel-size-local", "2", // no -tp, as docs/multinode.md: TP 1
			"--data-parallel-address", "127.0.0.1", "--data-parallel-rpc-port", p}
		run(t, "dp4", 0, 4, dp, append(append([]string{}, dp...), "--headless", "--data-parallel-start-rank", "2"))
	})
	t.Run("restart-same-port", func(t *testing.T) {
		// The tp4 instance again on its port: a new run, a new session (run checks it is unseen).
		run(t, "tp4-again", 4, 1, mp(port, 0, "-tp", "4"), mp(port, 1, "-tp", "4"))
	})
	t.Run("ray-tp4-two-hosts", func(t *testing.T) {
		// hostB's Ray node is started on its own (`ray start`), not by vLLM: its actors get the
		// instance only through the variables vLLM copies, after they started.
		p := mnPort(t)
		truths := map[string]string{"hostA": filepath.Join(dir, "ray-a.json"), "hostB": filepath.Join(dir, "ray-b.json")}
		head := a.launch(t, py, truths["hostA"], []string{"RAY_ADDRESS=127.0.0.1:" + p},
			filepath.Join(a.tree, "bin", "vllm"), "serve", "pm-e2e-model", "-tp", "4", "--distributed-executor-backend", "ray")
		node := b.launch(t, py, truths["hostB"], nil, filepath.Join(b.tree, "bin", "ray"), "start", "--address", "127.0.0.1:"+p, "--block")
		check(t, launched{"ray", []*exec.Cmd{head, node}, truths}, 4, 1)
	})
	t.Run("two-instances-side-by-side", func(t *testing.T) {
		p1, p2 := mnPort(t), mnPort(t)
		one := start(t, "side1", mp(p1, 0, "-tp", "2"), mp(p1, 1, "-tp", "2"))
		two := start(t, "side2", mp(p2, 0, "-tp", "2"), mp(p2, 1, "-tp", "2"))
		check(t, one, 2, 1)
		check(t, two, 2, 1)
	})
}

// mnOnlyVLLM checks the processes of one run against its ground truth: each vLLM process the
// stream names has the role of what it is (the `--headless` follower's main process is a
// launcher, not an API server), the run's session holds no process the ground truth does not
// know (Python's resource tracker), and processes that are not vLLM's (`ray start`) are not
// profiled at all, so they leave no session of their own.
func mnOnlyVLLM(t *testing.T, procs map[string]*mnProc, truths map[string]string, sess string) {
	t.Helper()
	want := map[string]string{"api_server": "api_server", "headless": "launcher", "engine_core": "engine_core", "worker": "worker", "ray_node": ""}
	known := map[string]bool{}
	for host, path := range truths {
		var tr mnTruth
		b, err := os.ReadFile(path)
		if err != nil || json.Unmarshal(b, &tr) != nil {
			t.Fatalf("%s ground truth: %v", host, err)
		}
		for _, tp := range tr.Processes {
			k := fmt.Sprintf("%s/%d", host, tp.PID)
			known[k] = true
			w, ok := want[tp.Role]
			if !ok {
				continue
			}
			p := procs[k]
			switch {
			case p == nil && w != "":
				t.Errorf("%s %s pid %d is not on the stream", host, tp.Role, tp.PID)
			case p != nil && p.role != w:
				t.Errorf("%s %s pid %d: role %q in sessions %v, want %q", host, tp.Role, tp.PID, p.role, keys(p.sessions), w)
			}
		}
	}
	for k, p := range procs {
		if p.sessions[sess] && !known[k] {
			t.Errorf("session %s holds %s (role %s), which is no process of the run", sess, k, p.role)
		}
	}
}

// mnAllJoined reports whether every worker and EngineCore of the ground truth is on the stream with
// its rank known.
func mnAllJoined(procs map[string]*mnProc, truths map[string]string) bool {
	for host, path := range truths {
		var tr mnTruth
		b, err := os.ReadFile(path)
		if err != nil || json.Unmarshal(b, &tr) != nil {
			return false
		}
		for _, tp := range tr.Processes {
			if tp.Role != "worker" && tp.Role != "engine_core" {
				continue
			}
			p := procs[fmt.Sprintf("%s/%d", host, tp.PID)]
			if p == nil || (tp.Role == "worker" && p.rank < 0) {
				return false
			}
		}
	}
	return true
}

// TestMultiNodeClockSkew gives hostB's agent a clock 2.5 s ahead (the hidden test flag
// --test-clock-skew) and recovers that offset between the two hosts from the agents' hub clock
// measurements, within the sum of their stated uncertainties.
func TestMultiNodeClockSkew(t *testing.T) {
	bin(t, "pmagent")
	h := startHub(t, t.TempDir(), freeAddr(t))
	const skew = 2500 * time.Millisecond
	socks := map[string]string{"hostA": filepath.Join(agShortDir(t), "a.sock"), "hostB": filepath.Join(agShortDir(t), "b.sock")}
	for host, sock := range socks {
		args := []string{"serve", "--socket", sock, "--nats", h.url, "--host", host, "--spool-dir", t.TempDir(), "--gpu-interval", "0"}
		if host == "hostB" {
			args = append(args, "--test-clock-skew", skew.String())
		}
		agStart(t, nil, args...)
	}
	clk := map[string][2]float64{}
	agWaitFor(t, time.Minute, "both agents' clock offsets", func() bool {
		for host, sock := range socks {
			st := agStatus(t, sock)
			c, ok := st["clock"].(map[string]any)
			if !ok {
				return false
			}
			clk[host] = [2]float64{c["offset_ns"].(float64), c["uncertainty_ns"].(float64)}
		}
		return true
	})
	// offset = hub − agent: hostB's clock reads 2.5 s ahead, so its offset is 2.5 s lower.
	got := time.Duration(clk["hostA"][0] - clk["hostB"][0])
	unc := time.Duration(clk["hostA"][1] + clk["hostB"][1])
	if d := got - skew; d < -unc || d > unc {
		t.Fatalf("recovered offset between the hosts %v ± %v, injected %v", got, unc, skew)
	}
	t.Logf("recovered %v ± %v (injected %v)", got, unc, skew)
}

// TestMultiNodeStaleInstanceEntry: both agents of a running `-tp 4 --nnodes 2` instance die with
// SIGKILL, so nobody marks its registry entry ended (their --session-linger is long, too). Agents
// started again on the same hosts must not put a restart of the instance on the same port into
// the dead run's session: the entry, no longer refreshed, goes stale after 3 --instance-refresh
// periods and the restart gets a new session.
func TestMultiNodeStaleInstanceEntry(t *testing.T) {
	bin(t, "pmagent")
	py := mnPython(t)
	ns := agStartNATS(t)
	ns.createStream()
	const refresh = 500 * time.Millisecond
	flags := []string{"--instance-refresh", refresh.String(), "--session-linger", "10m"}
	a, b := mnStartHost(t, ns.url(), "hostA", flags...), mnStartHost(t, ns.url(), "hostB", flags...)
	dir, port := t.TempDir(), mnPort(t)
	mp := func(rank int) []string {
		args := []string{"-tp", "4", "--nnodes", "2", "--node-rank", strconv.Itoa(rank), "--master-addr", "127.0.0.1", "--master-port", port}
		if rank > 0 {
			args = append(args, "--headless")
		}
		return args
	}
	run := func(name string) string {
		truths := map[string]string{"hostA": filepath.Join(dir, name+"-a.json"), "hostB": filepath.Join(dir, name+"-b.json")}
		cmds := []*exec.Cmd{a.serve(t, py, truths["hostA"], mp(0)...), b.serve(t, py, truths["hostB"], mp(1)...)}
		mnWait(t, cmds...)
		agWaitFor(t, time.Minute, name+"'s processes on the stream", func() bool { return mnAllJoined(mnProcs(ns.read()), truths) })
		return mnCheck(t, mnProcs(ns.read()), truths, 4, 1)
	}
	first := run("first")
	a.killAgent(t)
	b.killAgent(t)
	// The entry still says running: no agent ended the session.
	entry := func() map[string]any {
		e := ns.instanceEntry(t, "mp:127.0.0.1:"+port)
		if e == nil {
			t.Fatal("no registry entry for the instance")
		}
		return e
	}
	if e := entry(); e["session"] != first || e["ended_ns"] != nil {
		t.Fatalf("entry %v, want session %s not ended", e, first)
	}
	a.startAgent(t, ns.url(), flags...)
	b.startAgent(t, ns.url(), flags...)
	// Nobody refreshes it any more: it goes stale (polled on the entry's own time stamps).
	agWaitFor(t, time.Minute, "the dead run's entry to go stale", func() bool {
		seen, _ := entry()["seen_ns"].(float64)
		return time.Now().UnixNano()-int64(seen) > int64(3*refresh)
	})
	if second := run("second"); second == first {
		t.Fatalf("the restart on port %s landed in the dead run's session %s", port, first)
	}
}

// instanceEntry reads the registry entry of instance key (agent.InstanceBucket) as JSON; nil when
// there is none.
func (n *agNATS) instanceEntry(t *testing.T, key string) map[string]any {
	t.Helper()
	nc, err := nats.Connect(n.url())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, agent.InstanceBucket)
	if err != nil {
		return nil
	}
	e, err := kv.Get(ctx, "i"+hex.EncodeToString([]byte(key)))
	if err != nil {
		return nil
	}
	var m map[string]any
	if err := json.Unmarshal(e.Value(), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// mnTail starts `pmhub tail --json` with args against natsURL, waits for its subscription and
// returns a function giving the events it printed so far.
func mnTail(t *testing.T, natsURL string, args ...string) func() []map[string]any {
	t.Helper()
	cmd := exec.Command(bin(t, "pmhub"), append([]string{"tail", "--nats", natsURL, "--json"}, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errOut syncBuffer
	cmd.Stderr = &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("pmhub tail %v stderr:\n%s", args, errOut.String())
		}
	})
	var mu sync.Mutex
	var evs []map[string]any
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				mu.Lock()
				evs = append(evs, m)
				mu.Unlock()
			}
		}
	}()
	agWaitFor(t, 30*time.Second, "pmhub tail's subscription", func() bool { return strings.Contains(errOut.String(), "subscribed to") })
	return func() []map[string]any {
		mu.Lock()
		defer mu.Unlock()
		return append([]map[string]any(nil), evs...)
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader in two goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// tailProcs is the set of host/role/rank of the events tail printed.
func tailProcs(evs []map[string]any) map[string]bool {
	out := map[string]bool{}
	for _, e := range evs {
		out[fmt.Sprintf("%v/%v/%v", e["host"], e["role"], e["rank"])] = true
	}
	return out
}

// TestMultiNodeTailFilters runs `-tp 4 --nnodes 2` over two agents with `pmhub tail` filtering by
// instance and node rank: node rank 1 of the instance prints hostB's workers (global ranks 2, 3)
// and nothing of hostA; node rank 0 hostA's EngineCore and workers 0, 1; another instance's key
// nothing.
func TestMultiNodeTailFilters(t *testing.T) {
	bin(t, "pmagent")
	py := mnPython(t)
	ns := agStartNATS(t)
	ns.createStream()
	a, b := mnStartHost(t, ns.url(), "hostA"), mnStartHost(t, ns.url(), "hostB")
	port := mnPort(t)
	key := "mp:127.0.0.1:" + port
	node1 := mnTail(t, ns.url(), "--instance", key, "--node-rank", "1", "--kind", "forward_pass")
	node0 := mnTail(t, ns.url(), "--node-rank", "0")
	other := mnTail(t, ns.url(), "--instance", "mp:127.0.0.1:1")
	dir := t.TempDir()
	mp := func(rank int) []string {
		args := []string{"-tp", "4", "--nnodes", "2", "--node-rank", strconv.Itoa(rank), "--master-addr", "127.0.0.1", "--master-port", port}
		if rank > 0 {
			args = append(args, "--headless")
		}
		return args
	}
	truths := map[string]string{"hostA": filepath.Join(dir, "a.json"), "hostB": filepath.Join(dir, "b.json")}
	mnWait(t, a.serve(t, py, truths["hostA"], mp(0)...), b.serve(t, py, truths["hostB"], mp(1)...))
	agWaitFor(t, time.Minute, "tail --node-rank 1 to print hostB's workers", func() bool {
		p := tailProcs(node1())
		return p["hostB/worker/2"] && p["hostB/worker/3"]
	})
	agWaitFor(t, time.Minute, "tail --node-rank 0 to print hostA's EngineCore and workers", func() bool {
		p := tailProcs(node0())
		return p["hostA/worker/0"] && p["hostA/worker/1"] && p["hostA/engine_core/-1"]
	})
	for p := range tailProcs(node1()) {
		if !strings.HasPrefix(p, "hostB/worker/") {
			t.Errorf("tail --instance %s --node-rank 1 printed events of %s", key, p)
		}
	}
	for p := range tailProcs(node0()) {
		if !strings.HasPrefix(p, "hostA/") {
			t.Errorf("tail --node-rank 0 printed events of %s", p)
		}
	}
	// Every event reached node0 and node1 by now; the other instance's tail saw the same stream.
	if n := len(other()); n != 0 {
		t.Errorf("tail --instance of another instance printed %d events", n)
	}
}

// mnStandaloneHost is a simulated host without an agent: the shim writes its standalone folder.
func mnStandaloneHost(t *testing.T, name string) *mnHost {
	t.Helper()
	h := &mnHost{name: name, sock: "off", dir: t.TempDir()}
	h.tree, h.shimDir = filepath.Join(h.dir, "testbed"), filepath.Join(h.dir, "shim")
	if err := testbed.Unpack(h.tree); err != nil {
		t.Fatal(err)
	}
	if err := shim.Unpack(h.shimDir); err != nil {
		t.Fatal(err)
	}
	return h
}

// standalone runs `vllm serve args` on h with no agent (PROFILEMATE_SOCKET=off) into out and
// returns its one session_<id> folder once it exited.
func (h *mnHost) standalone(t *testing.T, py, truth, out string, args ...string) *exec.Cmd {
	t.Helper()
	return h.launch(t, py, truth, []string{"PROFILEMATE_SOCKET=off", "PROFILEMATE_HOST=" + h.name, "PROFILEMATE_OUTPUT_DIR=" + out},
		append([]string{filepath.Join(h.tree, "bin", "vllm"), "serve", "pm-e2e-model"}, args...)...)
}

func mnSessionFolder(t *testing.T, out string) string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(out, "session_*"))
	if len(m) != 1 {
		t.Fatalf("%s holds session folders %v, want one", out, m)
	}
	return m[0]
}

// pmhubImport runs `pmhub import --data data --json folders...`: the metadata it printed, or the
// exit code and output when it failed.
func pmhubImport(t *testing.T, data string, folders ...string) (*hub.Metadata, int, string) {
	t.Helper()
	out, err := exec.Command(bin(t, "pmhub"), append([]string{"import", "--data", data, "--json"}, folders...)...).CombinedOutput()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, ee.ExitCode(), string(out)
		}
		t.Fatal(err)
	}
	var m hub.Metadata
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("pmhub import printed %q: %v", out, err)
	}
	return &m, 0, string(out)
}

// TestMultiNodeStandaloneImport runs the multi-node shapes (MP -tp 4 and -tp 2 -pp 2 over two
// nodes, DP=4 over two nodes, Ray TP=4 over two hosts) with no agent anywhere
// (PROFILEMATE_SOCKET=off: each host writes its own standalone folder) and merges each pair of
// host folders with `pmhub import`: one session whose metadata has every worker's global, TP and
// PP rank and every EngineCore's DP rank equal to the simulator's ground truth, the instance key
// and each host's node rank, and which `pmhub show` reads. Folders of different instances and
// folders that share global ranks (two runs' head folders), and folders imported before, are
// refused with exit code 2 and a message saying so; nothing is written then.
func TestMultiNodeStandaloneImport(t *testing.T) {
	py := mnPython(t)
	a, b := mnStandaloneHost(t, "hostA"), mnStandaloneHost(t, "hostB")
	dir, data := t.TempDir(), t.TempDir()
	type run struct {
		folders, truths map[string]string
		key             string
	}
	runs := map[string]run{}
	start := func(name, key string, head, follower []string) {
		r := run{folders: map[string]string{}, truths: map[string]string{
			"hostA": filepath.Join(dir, name+"-a.json"), "hostB": filepath.Join(dir, name+"-b.json")}, key: key}
		outA, outB := filepath.Join(dir, name+"-a"), filepath.Join(dir, name+"-b")
		mnWait(t, a.standalone(t, py, r.truths["hostA"], outA, head...), b.standalone(t, py, r.truths["hostB"], outB, follower...))
		r.folders["hostA"], r.folders["hostB"] = mnSessionFolder(t, outA), mnSessionFolder(t, outB)
		runs[name] = r
	}
	mp := func(port string, rank int, extra ...string) []string {
		args := append([]string{"--nnodes", "2", "--node-rank", strconv.Itoa(rank), "--master-addr", "127.0.0.1", "--master-port", port}, extra...)
		if rank > 0 {
			args = append(args, "--headless")
		}
		return args
	}
	p1, p2, p3 := mnPort(t), mnPort(t), mnPort(t)
	start("tp4", "mp:127.0.0.1:"+p1, mp(p1, 0, "-tp", "4"), mp(p1, 1, "-tp", "4"))
	start("tp2pp2", "mp:127.0.0.1:"+p2, mp(p2, 0, "-tp", "2", "-pp", "2"), mp(p2, 1, "-tp", "2", "-pp", "2"))
	dp := []string{"--data-parallel-size", "4", "--data-parallel-size-local", "2", // no -tp, as docs/multinode.md: TP 1
		"--data-parallel-address", "127.0.0.1", "--data-parallel-rpc-port", p3}
	start("dp4", "dp:127.0.0.1:"+p3, dp, append(append([]string{}, dp...), "--headless", "--data-parallel-start-rank", "2"))
	start("tp4-again", "mp:127.0.0.1:"+p1, mp(p1, 0, "-tp", "4"), mp(p1, 1, "-tp", "4"))
	{
		// Ray: hostB's node is started on its own; its actors learn the instance only through the
		// variables vLLM copies, after they started (their metadata.json's instance_key).
		p4 := mnPort(t)
		r := run{folders: map[string]string{}, truths: map[string]string{
			"hostA": filepath.Join(dir, "ray-a.json"), "hostB": filepath.Join(dir, "ray-b.json")}}
		outA, outB := filepath.Join(dir, "ray-a"), filepath.Join(dir, "ray-b")
		head := a.launch(t, py, r.truths["hostA"], []string{"PROFILEMATE_SOCKET=off", "PROFILEMATE_HOST=hostA", "PROFILEMATE_OUTPUT_DIR=" + outA,
			"RAY_ADDRESS=127.0.0.1:" + p4}, filepath.Join(a.tree, "bin", "vllm"), "serve", "pm-e2e-model", "-tp", "4", "--distributed-executor-backend", "ray")
		node := b.launch(t, py, r.truths["hostB"], []string{"PROFILEMATE_SOCKET=off", "PROFILEMATE_HOST=hostB", "PROFILEMATE_OUTPUT_DIR=" + outB},
			filepath.Join(b.tree, "bin", "ray"), "start", "--address", "127.0.0.1:"+p4, "--block")
		mnWait(t, head, node)
		r.folders["hostA"], r.folders["hostB"] = mnSessionFolder(t, outA), mnSessionFolder(t, outB)
		runs["ray"] = r
	}

	for name, wantWorkers := range map[string]int{"tp4": 4, "tp2pp2": 4, "dp4": 0, "ray": 4} {
		r := runs[name]
		m, code, out := pmhubImport(t, data, r.folders["hostA"], r.folders["hostB"])
		if code != 0 {
			t.Fatalf("%s: pmhub import exit %d: %s", name, code, out)
		}
		if name == "ray" {
			// ray:<the driver's session id>, which the test cannot know beforehand
			if len(m.Instances) != 1 || !strings.HasPrefix(m.Instances[0], "ray:") {
				t.Errorf("ray: instances %v, want one ray:<session>", m.Instances)
			}
		} else {
			if len(m.Instances) != 1 || m.Instances[0] != r.key {
				t.Errorf("%s: instances %v, want [%s]", name, m.Instances, r.key)
			}
			for host, want := range map[string]int64{"hostA": 0, "hostB": 1} {
				if h := m.Hosts[host]; h == nil || h.NodeRank == nil || *h.NodeRank != want {
					t.Errorf("%s: host %s node rank %v, want %d", name, host, h, want)
				}
			}
		}
		procs := map[string]*mnProc{}
		for _, p := range m.Processes {
			q := &mnProc{host: p.Host, role: p.Role, sessions: map[string]bool{m.Session: true},
				rank: int32(p.Rank), tp: int32(p.TP), pp: int32(p.PP), dp: int32(p.DP), key: p.InstanceKey, node: -1}
			if p.NodeRank != nil {
				q.node = int32(*p.NodeRank)
			}
			procs[fmt.Sprintf("%s/%d", p.Host, p.PID)] = q
		}
		wantEngines := 1
		if name == "dp4" {
			wantEngines = 4
		}
		if got := mnCheck(t, procs, r.truths, wantWorkers, wantEngines); got != m.Session {
			t.Errorf("%s: session %s, metadata says %s", name, got, m.Session)
		}
		if m.Rows["forward_pass_timing"] == 0 && wantWorkers > 0 {
			t.Errorf("%s: no forward_pass_timing rows imported: %v", name, m.Rows)
		}
		show, err := exec.Command(bin(t, "pmhub"), "show", "--data", data, m.Session).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: pmhub show: %v\n%s", name, err, show)
		}
		grid := "hostB (node 1): w2("
		if name == "ray" {
			grid = "hostB: w2(" // Ray has no node ranks
		}
		if wantWorkers > 0 && !strings.Contains(string(show), grid) {
			t.Errorf("%s: show lacks hostB's part of the rank grid:\n%s", name, show)
		}
	}

	before, _ := os.ReadDir(filepath.Join(data, "sessions"))
	for _, c := range []struct {
		name, a, b, want string
	}{
		{"different instances", runs["tp4"].folders["hostA"], runs["dp4"].folders["hostB"], "different instances"},
		{"overlapping ranks", runs["tp4"].folders["hostA"], runs["tp4-again"].folders["hostA"], "global rank 0 is in two folders"},
		{"imported twice", runs["tp4"].folders["hostA"], runs["tp4"].folders["hostB"], "the folders were imported before as session"},
	} {
		_, code, out := pmhubImport(t, data, c.a, c.b)
		if code != 2 || !strings.Contains(out, c.want) {
			t.Errorf("%s: exit %d %q, want exit 2 and %q", c.name, code, out, c.want)
		}
	}
	if after, _ := os.ReadDir(filepath.Join(data, "sessions")); len(after) != len(before) {
		t.Errorf("a refused import left something in the data folder: %d entries, before %d", len(after), len(before))
	}
}

// mnPython is the newest Python interpreter the tests run the simulator under; the test is skipped
// without one.
func mnPython(t *testing.T) string {
	t.Helper()
	pys := testkit.Interpreters(t)
	if len(pys) == 0 {
		t.Skip("no Python interpreter")
	}
	return pys[len(pys)-1].Path
}
