package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/profilemate/profilemate/internal/testkit"
	pmproto "github.com/profilemate/profilemate/proto"
)

func TestInstanceKey(t *testing.T) {
	for _, c := range []struct {
		argv string
		want string
	}{
		{"python3 /usr/bin/vllm serve m -tp 4 --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 --master-port 29600", "mp:10.0.0.1:29600"},
		{"vllm serve m -tp 4 --nnodes=2 --node-rank=1 --master-addr=10.0.0.1 --master-port=29600 --headless", "mp:10.0.0.1:29600"},
		{"vllm serve m --nnodes 2 --node-rank 1 --headless", "mp:127.0.0.1:29501"},
		{"vllm serve m --data-parallel-size 4 --data-parallel-size-local 2 --data-parallel-address 10.0.0.1 --data-parallel-rpc-port 13399", "dp:10.0.0.1:13399"},
		{"vllm serve m --data-parallel-size 4 --data-parallel-size-local 2 --headless --data-parallel-start-rank 2 --data-parallel-address 10.0.0.1 --data-parallel-rpc-port 13399", "dp:10.0.0.1:13399"},
		{"vllm serve m --data_parallel_size 4 --data_parallel_size_local 2 --data_parallel_address 10.0.0.1", "dp:10.0.0.1:13345"},
		// One node: no instance key, the process tree decides as before.
		{"vllm serve m -tp 4", ""},
		{"vllm serve m --nnodes 1 --master-port 29600", ""},
		{"vllm serve m --data-parallel-size 4", ""},
		{"vllm serve m --data-parallel-size 4 --data-parallel-size-local 4", ""},
		{"python -c from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5, pipe_handle=7) --multiprocessing-fork", ""},
		{"", ""},
	} {
		if got := InstanceKey(strings.Fields(c.argv)); got != c.want {
			t.Errorf("InstanceKey(%q) = %q, want %q", c.argv, got, c.want)
		}
	}
}

// helloArgv says hello as process pid with the shim's own session name and argv, and returns the
// session the agent moves it to (its control line).
func helloArgv(t *testing.T, sock string, pid, ppid int, session string, argv []string, extra ...any) (net.Conn, string) {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s := &fakeShim{t: t, c: c, pid: pid}
	hello := map[string]any{"t": "hello", "v": 1, "session": session, "pid": pid, "ppid": ppid, "role": "api_server",
		"dp": -1, "pp": -1, "tp": -1, "ep": -1, "rank": -1, "python": "3.12", "vllm": "0.16.0", "argv": argv}
	for i := 0; i+1 < len(extra); i += 2 {
		hello[extra[i].(string)] = extra[i+1]
	}
	s.line(hello)
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	b := make([]byte, 0, 256)
	one := make([]byte, 1)
	for {
		if _, err := c.Read(one); err != nil {
			t.Fatalf("pid %d: no session line: %v", pid, err)
		}
		if one[0] == '\n' {
			break
		}
		b = append(b, one[0])
	}
	var ctl pmproto.Ctl
	if err := json.Unmarshal(b, &ctl); err != nil || ctl.Op != "session" {
		t.Fatalf("pid %d: control %q (%v), want a session line", pid, b, err)
	}
	return c, ctl.Session
}

func mpArgv(port int, rank int) []string {
	return strings.Fields(fmt.Sprintf("python3 vllm serve m -tp 4 --nnodes 2 --node-rank %d --master-addr 127.0.0.1 --master-port %d", rank, port))
}

// TestInstanceJoin: the processes of one instance on two agents land in one session, also when
// both agents see their first process at the same moment (first writer wins); a spawned child
// that still names the shim's own session follows its instance; another port is another session.
func TestInstanceJoin(t *testing.T) {
	ns := testkit.StartNATS(t)
	createStream(t, ns.ClientURL())
	cfg := Config{NATS: NATSConfig{URL: ns.ClientURL()}, SpoolDir: t.TempDir()}
	a, b := newTestAgent(t, cfg), newTestAgent(t, cfg)
	seen := map[string]int{}
	for round := 0; round < 5; round++ {
		port := 30000 + round
		var wg sync.WaitGroup
		got := make([]string, 2)
		for i, ag := range []*Agent{a, b} {
			wg.Add(1)
			go func(i int, ag *Agent) {
				defer wg.Done()
				_, got[i] = helloArgv(t, ag.Socket(), 1000+10*round+i, 1, fmt.Sprintf("shim-own-%d-%d", round, i), mpArgv(port, i))
			}(i, ag)
		}
		wg.Wait()
		if got[0] == "" || got[0] != got[1] {
			t.Fatalf("round %d: head in %q, follower in %q, want one session", round, got[0], got[1])
		}
		if r, ok := seen[got[0]]; ok {
			t.Fatalf("round %d: port %d in the session of round %d", round, port, r)
		}
		seen[got[0]] = round
		// A child spawned before the agent's answer reached its parent names the parent's own session.
		_, child := helloArgv(t, a.Socket(), 1000+10*round+5, 1000+10*round, fmt.Sprintf("shim-own-%d-0", round), []string{"python", "-c", "spawn_main()"})
		if child != got[0] {
			t.Errorf("round %d: child in %q, want its instance's %q", round, child, got[0])
		}
	}
}

// TestInstanceEndedNotReused: once an instance's session ended, or every process of it left, a
// process with the same key (a restart on the same fixed port) gets a new session on every host.
func TestInstanceEndedNotReused(t *testing.T) {
	ns := testkit.StartNATS(t)
	createStream(t, ns.ClientURL())
	cfg := Config{NATS: NATSConfig{URL: ns.ClientURL()}, SpoolDir: t.TempDir()}
	a, b := newTestAgent(t, cfg), newTestAgent(t, cfg)

	c1, s1 := helloArgv(t, a.Socket(), 2001, 1, "own-1", mpArgv(31000, 0))
	fmt.Fprintln(c1, `{"t":"bye","v":1,"pid":2001,"last_seq":0}`)
	waitFor(t, "the bye", func() bool { return liveOf(a, s1) == 0 })
	// Every process left but the session still lingers: a new head is a new run.
	_, s2 := helloArgv(t, a.Socket(), 2002, 1, "own-2", mpArgv(31000, 0))
	if s2 == s1 {
		t.Fatalf("restart joined the previous run's session %s", s1)
	}
	// The follower of the new run joins the new run, not the old one.
	_, f2 := helloArgv(t, b.Socket(), 2003, 1, "own-3", mpArgv(31000, 1))
	if f2 != s2 {
		t.Fatalf("follower in %q, want the new run's %q", f2, s2)
	}
	// The new run ends on both hosts (the registry entry is marked ended) ...
	a.EndSession(s2)
	b.EndSession(s2)
	// ... so a third run, first seen on the other agent, gets a third session.
	_, s3 := helloArgv(t, b.Socket(), 2004, 1, "own-4", mpArgv(31000, 1))
	if s3 == s1 || s3 == s2 {
		t.Fatalf("third run in %q, an ended session (%s, %s)", s3, s1, s2)
	}
	_, h3 := helloArgv(t, a.Socket(), 2005, 1, "own-5", mpArgv(31000, 0))
	if h3 != s3 {
		t.Fatalf("third run's head in %q, its follower in %q", h3, s3)
	}
}

// TestInstanceFixedSessionWins: an agent with --session keeps every process in it, and a process
// started with PROFILEMATE_SESSION (session_given) keeps that one.
func TestInstanceFixedSessionWins(t *testing.T) {
	ns := testkit.StartNATS(t)
	createStream(t, ns.ClientURL())
	a := newTestAgent(t, Config{Session: "fixed", NATS: NATSConfig{URL: ns.ClientURL()}, SpoolDir: t.TempDir()})
	if _, s := helloArgv(t, a.Socket(), 3001, 1, "own", mpArgv(32000, 0)); s != "fixed" {
		t.Fatalf("session %q, want the fixed one", s)
	}
	b := newTestAgent(t, Config{NATS: NATSConfig{URL: ns.ClientURL()}, SpoolDir: t.TempDir()})
	c, err := net.Dial("unix", b.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	(&fakeShim{t: t, c: c}).line(map[string]any{"t": "hello", "v": 1, "session": "users", "session_given": true, "pid": 3002,
		"ppid": 1, "role": "api_server", "dp": -1, "pp": -1, "tp": -1, "ep": -1, "rank": -1, "argv": mpArgv(32000, 0)})
	waitFor(t, "the hello", func() bool { return liveOf(b, "users") == 1 })
	b.mu.Lock()
	n := len(b.instances)
	b.mu.Unlock()
	if n != 0 {
		t.Fatalf("a process started with its own session was bound to an instance")
	}
}

// TestInstanceKeyFromEnvironment: a process whose command line names no instance (a Ray worker)
// joins the instance its PROFILEMATE_INSTANCE_KEY (hello instance_key) names.
func TestInstanceKeyFromEnvironment(t *testing.T) {
	ns := testkit.StartNATS(t)
	createStream(t, ns.ClientURL())
	cfg := Config{NATS: NATSConfig{URL: ns.ClientURL()}, SpoolDir: t.TempDir()}
	a, b := newTestAgent(t, cfg), newTestAgent(t, cfg)
	_, head := helloArgv(t, a.Socket(), 4001, 1, "own-a", []string{"vllm", "serve", "m"}, "instance_key", "ray:abc")
	_, worker := helloArgv(t, b.Socket(), 4002, 1, "own-b", []string{"ray::RayWorkerWrapper"}, "instance_key", "ray:abc")
	if head != worker {
		t.Fatalf("head in %q, Ray worker in %q, want one session", head, worker)
	}
}

func liveOf(a *Agent, id string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if s, ok := a.sessions[id]; ok {
		return s.live
	}
	return -1
}

// TestInstanceResumedAgentKeepsRefreshing: `pmagent serve` restarted while an instance runs
// resumes its processes and keeps refreshing the instance's registry entry, so the entry never
// goes stale under a live instance, and the head's hello to the new agent keeps its session.
func TestInstanceResumedAgentKeepsRefreshing(t *testing.T) {
	ns := testkit.StartNATS(t)
	createStream(t, ns.ClientURL())
	const refresh = 100 * time.Millisecond
	cfg := Config{NATS: NATSConfig{URL: ns.ClientURL()}, SpoolDir: t.TempDir(), Socket: filepath.Join(shortTemp(t), "a.sock"),
		Resume: true, InstanceRefresh: refresh, Host: "h1", Logger: testLogger(t)}
	start := func() (*Agent, context.CancelFunc) {
		a, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		if err := a.Start(ctx); err != nil {
			t.Fatal(err)
		}
		return a, cancel
	}
	stop := func(a *Agent, cancel context.CancelFunc) {
		cancel()
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		_, _ = a.Shutdown(sctx)
	}
	a1, cancel1 := start()
	c, s1 := helloArgv(t, cfg.Socket, 4001, 1, "own-1", mpArgv(32000, 0))
	stop(a1, cancel1)
	c.Close()
	a2, cancel2 := start()
	defer stop(a2, cancel2)
	restarted := time.Now().UnixNano()
	seen := func() int64 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		kv, err := a2.instanceKV(ctx)
		if err != nil {
			return 0
		}
		e, err := kv.Get(ctx, instanceKVKey(InstanceKey(mpArgv(32000, 0))))
		if err != nil {
			return 0
		}
		var cur instanceEntry
		if json.Unmarshal(e.Value(), &cur) != nil || cur.Session != s1 {
			return 0
		}
		return cur.SeenNS
	}
	waitFor(t, "the restarted agent to refresh the instance's entry", func() bool { return seen() > restarted })
	// Past the stale bound: the entry is kept fresh, and the head's new hello stays in its session.
	if _, s := helloArgv(t, cfg.Socket, 4001, 1, "own-2", mpArgv(32000, 0)); s != s1 {
		t.Fatalf("the resumed head moved from %s to %s", s1, s)
	}
}

// TestAncestorInstance: a worker whose parent said no hello (a headless `vllm serve` that never
// imported a vLLM target) gets its instance and node rank from the nearest ancestor's command
// line in /proc; none when no ancestor starts a multi-node instance.
func TestAncestorInstance(t *testing.T) {
	root := t.TempDir()
	proc := func(pid, ppid int, argv ...string) {
		d := filepath.Join(root, strconv.Itoa(pid))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "cmdline"), []byte(strings.Join(argv, "\x00")+"\x00"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "status"), []byte(fmt.Sprintf("Name:\tpython3\nPPid:\t%d\n", ppid)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	proc(10, 1, "/bin/bash")
	proc(20, 10, append([]string{"python3"}, mpArgv(29600, 1)...)...)
	proc(30, 20, "python3", "-c", "from multiprocessing.spawn import spawn_main", "--multiprocessing-fork")
	proc(40, 10, "python3", "other.py")
	old := procRoot
	procRoot = root
	defer func() { procRoot = old }()
	if k, n := ancestorInstance(30); k != "mp:127.0.0.1:29600" || n != 1 {
		t.Errorf("child of the follower: %q node %d, want mp:127.0.0.1:29600 node 1", k, n)
	}
	if k, n := ancestorInstance(40); k != "" || n != -1 {
		t.Errorf("no instance above: %q node %d", k, n)
	}
	if k, _ := ancestorInstance(99); k != "" {
		t.Errorf("a pid /proc does not have: %q", k)
	}
}
