package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/profilemate/profilemate/hub"
)

// agClient is a socket client speaking the shim's line protocol, for cases the shim itself never
// produces (a killed agent at an exact moment, hostile lines).
type agClient struct {
	t   *testing.T
	c   net.Conn
	w   *bufio.Writer
	pid int
	seq int
}

func agDial(t *testing.T, sock string, pid int, session string) *agClient {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	cl := &agClient{t: t, c: c, w: bufio.NewWriter(c), pid: pid}
	cl.send(fmt.Sprintf(`{"t":"hello","v":1,"session":%q,"pid":%d,"ppid":1,"role":"worker","dp":0,"pp":0,"tp":0,"ep":-1,"rank":0}`, session, pid))
	return cl
}

func (c *agClient) send(line string) {
	c.t.Helper()
	c.w.WriteString(line + "\n")
	if err := c.w.Flush(); err != nil {
		c.t.Fatal(err)
	}
}

// batch sends n kv_cache events with the next sequence numbers.
func (c *agClient) batch(n int) {
	var evs []string
	for i := 0; i < n; i++ {
		c.seq++
		evs = append(evs, fmt.Sprintf(`{"kind":"kv_cache","table":"kv_cache_usage","seq":%d,"step":%d,"ts_ns":%d,"cols":{"usage":0.5,"free_blocks":%d}}`,
			c.seq, c.seq, time.Now().UnixNano(), c.seq))
	}
	c.send(fmt.Sprintf(`{"t":"batch","v":1,"pid":%d,"events":[%s],"dropped":0}`, c.pid, strings.Join(evs, ",")))
}

// TestAgentKilledWhileNATSDown: a pmagent serve that cannot reach NATS keeps what it ingested on
// disk within one sync interval; kill -9 then loses nothing, and the next agent on the same spool
// delivers every event exactly once.
func TestAgentKilledWhileNATSDown(t *testing.T) {
	ns := agStartNATS(t)
	ns.createStream()
	ns.stop()
	spool := t.TempDir()
	sock := filepath.Join(agShortDir(t), "a.sock")
	p := agStart(t, nil, "serve", "--socket", sock, "--nats", ns.url(), "--host", "e2e-host", "--spool-dir", spool,
		"--gpu-interval", "0")
	agWaitFor(t, time.Minute, "the agent's socket", func() bool { return agStatus(t, sock) != nil })
	c := agDial(t, sock, 5151, "killed-agent")
	const batches, per = 100, 10
	for i := 0; i < batches; i++ {
		c.batch(per)
	}
	agWaitFor(t, time.Minute, "every event on disk and synced", func() bool {
		st := agStatus(t, sock)
		return agNum(st, "events") == batches*per && agNum(st, "spool", "batches") > 0 &&
			agNum(st, "spool", "mem_batches") == 0 && agNum(st, "spool", "unsynced_bytes") == 0 &&
			st["spool"].(map[string]any)["unsynced_bytes"] != nil
	})
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.wait(t, time.Minute)

	ns.start()
	sock2 := filepath.Join(agShortDir(t), "a.sock")
	agStart(t, nil, "serve", "--socket", sock2, "--nats", ns.url(), "--host", "e2e-host", "--spool-dir", spool, "--gpu-interval", "0")
	agWaitFor(t, 2*time.Minute, "the spool replayed", func() bool { return ns.read().events() >= batches*per })
	per5151 := ns.read().checkExactlyOnceInOrder(t)[5151]
	if len(per5151) != batches*per || per5151[0] != 1 || per5151[len(per5151)-1] != batches*per {
		t.Fatalf("pid 5151: %d events (first %v), want seq 1..%d once", len(per5151), per5151[:1], batches*per)
	}
}

// TestAgentMemoryUnderLongLines: 40 connections each holding 4 MiB without a newline cost the
// agent its --max-buffered-bytes plus read buffers (and the garbage collector's headroom, up to as
// much again), not 160 MiB and more, and the memory is back soon after they close.
func TestAgentMemoryUnderLongLines(t *testing.T) {
	sock := filepath.Join(agShortDir(t), "a.sock")
	const budget = 32 << 20
	agStart(t, nil, "serve", "--socket", sock, "--host", "e2e-host", "--spool-dir", t.TempDir(), "--gpu-interval", "0",
		"--max-buffered-bytes", fmt.Sprint(budget))
	agWaitFor(t, time.Minute, "the agent's socket", func() bool { return agStatus(t, sock) != nil })
	base := agStatus(t, sock)
	baseHeap, baseRSS := agNum(base, "memory", "heap_inuse_bytes"), agNum(base, "memory", "rss_bytes")
	if baseHeap == 0 || baseRSS == 0 {
		t.Fatalf("status has no memory figures: %v", base["memory"])
	}
	const conns, size = 40, 4 << 20
	chunk := []byte(strings.Repeat("a", 64<<10))
	var cs []net.Conn
	written := make(chan error, conns)
	for i := 0; i < conns; i++ {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
		go func() {
			for n := 0; n+len(chunk) < size; n += len(chunk) {
				if _, err := c.Write(chunk); err != nil {
					written <- err
					return
				}
			}
			written <- nil
		}()
	}
	for i := 0; i < conns; i++ {
		if err := <-written; err != nil {
			t.Fatal(err)
		}
	}
	want := float64(conns * (size - 64<<10))
	agWaitFor(t, time.Minute, "the agent to read every byte", func() bool {
		return agNum(agStatus(t, sock), "socket", "read_bytes") >= want
	})
	st := agStatus(t, sock)
	held := agNum(st, "memory", "heap_inuse_bytes") - baseHeap
	t.Logf("heap while held: +%.0f MiB, buffered %.0f MiB, over budget %v", held/(1<<20),
		agNum(st, "socket", "buffered_bytes")/(1<<20), agNum(st, "socket", "over_budget_lines"))
	// Twice the budget (GOGC=100 lets garbage reach the live heap) and 40 read buffers; without a
	// budget the live lines alone are 160 MiB.
	if limit := float64(2*budget + conns*(64<<10)*2 + 16<<20); held > limit {
		t.Errorf("heap grew by %.0f MiB while the lines were held, want at most %.0f MiB", held/(1<<20), limit/(1<<20))
	}
	if got := agNum(st, "socket", "connections"); got < conns {
		t.Errorf("connections %v, want at least %d", got, conns)
	}
	for _, c := range cs {
		c.Close()
	}
	agWaitFor(t, time.Minute, "memory back after the clients left", func() bool {
		st := agStatus(t, sock)
		return agNum(st, "socket", "connections") < 4 && agNum(st, "socket", "buffered_bytes") == 0 &&
			agNum(st, "memory", "heap_inuse_bytes") < baseHeap+8<<20 && agNum(st, "memory", "rss_bytes") < baseRSS+32<<20
	})
}

// TestAgentRestartResumesSession: `pmagent serve` stopped (SIGTERM) and started again under a
// running process keeps that process's session open, takes the process back when it reconnects
// with a new hello naming the same session (same session, same process token), and does not
// publish again what the process replays.
func TestAgentRestartResumesSession(t *testing.T) {
	ns := agStartNATS(t)
	ns.createStream()
	spool := t.TempDir()
	sock := filepath.Join(agShortDir(t), "a.sock")
	args := []string{"serve", "--socket", sock, "--nats", ns.url(), "--host", "e2e-host", "--spool-dir", spool,
		"--gpu-interval", "0", "--session-linger", "1s"}
	first := agStart(t, nil, args...)
	agWaitFor(t, time.Minute, "the agent's socket", func() bool { return agStatus(t, sock) != nil })
	c := agDial(t, sock, 7070, "resume-me")
	c.batch(10)
	agWaitFor(t, time.Minute, "the first events", func() bool { return ns.read().events() == 10 })
	if err := first.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := first.wait(t, time.Minute); err != nil {
		t.Fatalf("pmagent serve after SIGTERM: %v", err)
	}
	ended := func() int {
		n := 0
		for _, l := range ns.read().life {
			if l.GetEnd() != nil && l.GetProcess().GetSession() == "resume-me" {
				n++
			}
		}
		return n
	}
	if n := ended(); n != 0 {
		t.Fatalf("the stopped agent ended the session of a running process (%d end records)", n)
	}

	agStart(t, nil, args...)
	agWaitFor(t, time.Minute, "the restarted agent's socket", func() bool { return agStatus(t, sock) != nil })
	c2 := agDial(t, sock, 7070, "resume-me")
	c2.seq = 4 // the shim replays what it is not sure was delivered: 5..15, then new events
	c2.batch(11)
	c2.batch(5)
	c2.send(fmt.Sprintf(`{"t":"bye","v":1,"pid":7070,"dropped":0,"last_seq":%d,"end_ns":0}`, c2.seq))
	agWaitFor(t, time.Minute, "every event", func() bool { return ns.read().events() >= 20 })
	s := ns.read()
	seqs := s.checkExactlyOnceInOrder(t)[7070]
	if len(seqs) != 20 {
		t.Fatalf("pid 7070: %d events, want 1..20 once", len(seqs))
	}
	for _, b := range s.batches {
		if p := b.GetProcess(); p.Session != "resume-me" {
			t.Fatalf("batch under session %q, want resume-me", p.Session)
		}
	}
	st := agStatus(t, sock)
	procs, _ := st["processes"].([]any)
	if len(procs) != 1 || procs[0].(map[string]any)["proc"] != "w0" || procs[0].(map[string]any)["events"] != float64(20) {
		t.Errorf("restarted agent's processes %v, want pid 7070 as w0 with its 20 events", procs)
	}
	if agNum(st, "duplicates") != 6 {
		t.Errorf("restarted agent counted %v duplicates, want 6 (seq 5..10)", agNum(st, "duplicates"))
	}
	agWaitFor(t, time.Minute, "the session's end after its process left", func() bool { return ended() == 1 })
}

// TestEndStates: under pmagent run and a real hub, a process that says goodbye ends clean, one
// killed under another parent ends lost, and the command pmagent run saw die of SIGKILL ends
// killed with SIGKILL — in the hub's metadata.json and in pmhub show.
func TestEndStates(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3")
	}
	data := t.TempDir()
	h := startHub(t, data, freeAddr(t))
	script, err := filepath.Abs(filepath.Join("testdata", "end_states.py"))
	if err != nil {
		t.Fatal(err)
	}
	p := agStart(t, []string{"VLLM_ENABLE_PROFILING=1", "PROFILEMATE_CACHE=" + t.TempDir()},
		"run", "--nats", h.url, "--host", "e2e-host", "--session", "ends", "--spool-dir", t.TempDir(), "--gpu-interval", "0",
		"--", py, script)
	var ee *exec.ExitError
	if err := p.wait(t, 2*time.Minute); !errors.As(err, &ee) || ee.ExitCode() != 128+9 {
		t.Fatalf("pmagent run: %v, want exit status 137 (the command's SIGKILL)", err)
	}
	var m *hub.Metadata
	agWaitFor(t, time.Minute, "three ended processes in the hub's metadata", func() bool {
		m, err = hub.ReadMetadata(hub.SessionDir(data, "ends"))
		if err != nil || len(m.Processes) != 3 {
			return false
		}
		for _, p := range m.Processes {
			if !p.Ended || p.EndState == "" {
				return false
			}
		}
		return true
	})
	got := map[string]int{}
	for _, p := range m.Processes {
		got[fmt.Sprint(p.EndState, "/", p.EndSignal)]++
	}
	if got["clean/"] != 1 || got["lost/"] != 1 || got["killed/SIGKILL"] != 1 {
		t.Errorf("end states %v, want one clean, one lost, one killed by SIGKILL", got)
	}
	out, err := exec.Command(bin(t, "pmhub"), "show", "--data", data, "ends").CombinedOutput()
	if err != nil {
		t.Fatalf("pmhub show: %v\n%s", err, out)
	}
	for _, want := range []string{"clean", "lost", "killed (SIGKILL)"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("pmhub show lacks %q:\n%s", want, out)
		}
	}
}
