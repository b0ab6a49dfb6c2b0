package e2e

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/internal/testkit"
	pmproto "github.com/profilemate/profilemate/proto"
)

// natsServerBin builds the nats-server of the module's go.mod version once per test binary.
var natsServerBin = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "pm-nats-server")
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "nats-server")
	b := exec.Command("go", "build", "-o", out, "github.com/nats-io/nats-server/v2")
	b.Dir = ".."
	if msg, err := b.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build nats-server: %v\n%s", err, msg)
	}
	return out, nil
})

// clNode is one nats-server process of the test cluster.
type clNode struct {
	name, conf, url string
	cmd             *exec.Cmd
	done            chan error
}

func (n *clNode) start(t *testing.T, binary string) {
	t.Helper()
	n.cmd = exec.Command(binary, "-c", n.conf)
	n.cmd.Stderr = &testLog{t: t, prefix: n.name + ": "}
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n.done = make(chan error, 1)
	go func() { n.done <- n.cmd.Wait() }()
	t.Cleanup(func() { n.kill() })
}

func (n *clNode) kill() {
	if n.cmd != nil && n.cmd.Process != nil {
		_ = n.cmd.Process.Signal(syscall.SIGKILL)
		<-n.done
		n.done <- nil
	}
}

// startCluster runs three nats-server processes clustered on loopback with JetStream, and
// returns them once JetStream answers through every node.
func startCluster(t *testing.T) []*clNode {
	t.Helper()
	binary, err := natsServerBin()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var nodes []*clNode
	var routes []string
	clientAddrs := make([]string, 3)
	for i := 0; i < 3; i++ {
		clientAddrs[i] = freeAddr(t)
		routes = append(routes, "nats-route://"+freeAddr(t))
	}
	for i := 0; i < 3; i++ {
		host, port, _ := strings.Cut(clientAddrs[i], ":")
		_, rport, _ := strings.Cut(strings.TrimPrefix(routes[i], "nats-route://"), ":")
		n := &clNode{name: fmt.Sprintf("n%d", i+1), url: "nats://" + clientAddrs[i], conf: filepath.Join(dir, fmt.Sprintf("n%d.conf", i+1))}
		conf := fmt.Sprintf(`server_name: %s
host: %s
port: %s
jetstream { store_dir: %q }
cluster {
  name: pm-e2e
  host: 127.0.0.1
  port: %s
  routes: [%s]
}
`, n.name, host, port, filepath.Join(dir, n.name), rport, strings.Join(routes, ", "))
		if err := os.WriteFile(n.conf, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		n.start(t, binary)
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		agWaitFor(t, time.Minute, "JetStream through "+n.name, func() bool {
			nc, err := nats.Connect(n.url, nats.Timeout(time.Second))
			if err != nil {
				return false
			}
			defer nc.Close()
			js, err := jetstream.New(nc)
			if err != nil {
				return false
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_, err = js.AccountInfo(ctx)
			return err == nil
		})
	}
	return nodes
}

// TestClusterHubsTakeOver: a 3-node NATS cluster (separate nats-server processes), three shared
// hubs and two agents running four simulated vLLM servers (four sessions). Mid-run the hub owning
// one session is killed (-9) and another one takes it over; then one NATS node is killed (-9).
// Every session ends with every event its shims emitted written exactly once, every process of
// the simulators' ground truth present, and `pmhub show` on each surviving hub's data folder
// answers for every session.
func TestClusterHubsTakeOver(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the cluster test runs three nats-servers, three hubs and four simulators")
	}
	bin(t, "pmagent")
	pys := testkit.Interpreters(t)
	if len(pys) == 0 {
		t.Skip("no Python interpreter")
	}
	py := pys[len(pys)-1].Path
	nodes := startCluster(t)
	var urls []string
	for _, n := range nodes {
		urls = append(urls, n.url)
	}
	cluster := strings.Join(urls, ",")

	type hubRun struct {
		id, data, http string
		p              *hubProc
	}
	var hubs []*hubRun
	for i := 0; i < 3; i++ {
		h := &hubRun{id: fmt.Sprintf("hub%d", i+1), data: t.TempDir(), http: freeAddr(t)}
		h.p = startHub(t, h.data, freeAddr(t), "--nats", cluster, "--stream-replicas", "3", "--hub-id", h.id,
			"--lease-ttl", "3s", "--checkpoint-interval", "1s", "--session-idle", "30s", "--plugins=false",
			"--http", h.http)
		hubs = append(hubs, h)
	}
	// On failure every hub still running prints its goroutines (SIGQUIT) into the test log.
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, h := range hubs {
			if h.p.cmd.ProcessState == nil {
				_ = h.p.cmd.Process.Signal(syscall.SIGQUIT)
				select {
				case err := <-h.p.done:
					h.p.done <- err
				case <-time.After(10 * time.Second):
				}
			}
		}
	})
	nc, err := nats.Connect(cluster, nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	info, err := js.Stream(ctx, "PROFILEMATE")
	if err != nil {
		t.Fatal(err)
	}
	if r := info.CachedInfo().Config.Replicas; r != 3 {
		t.Fatalf("stream has %d replicas, want 3", r)
	}

	a, b := mnStartHost(t, cluster, "hostA"), mnStartHost(t, cluster, "hostB")
	dir := t.TempDir()
	// Four vLLM servers, two per host, each its own session (no instance key, no --session).
	type server struct {
		host  *mnHost
		truth string
		cmd   *exec.Cmd
	}
	var servers []*server
	for i, h := range []*mnHost{a, a, b, b} {
		s := &server{host: h, truth: filepath.Join(dir, fmt.Sprintf("truth%d.json", i))}
		s.cmd = h.launch(t, py, s.truth, []string{"PMSIM_REQUESTS=48", "PMSIM_MAX_TOKENS=24", "PMSIM_STEP_WORK_MS=40"},
			filepath.Join(h.tree, "bin", "vllm"), "serve", "pm-e2e-model", "-tp", "2")
		servers = append(servers, s)
	}

	index := func() map[string]hub.IndexEntry {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		list, err := hub.ListIndex(ctx, js)
		if err != nil {
			return nil
		}
		out := map[string]hub.IndexEntry{}
		for _, e := range list {
			out[e.Session] = e
		}
		return out
	}
	// Mid-run: every session has an owner and rows; kill the owner of one of them.
	var victim hub.IndexEntry
	agWaitFor(t, 2*time.Minute, "four sessions owned with rows", func() bool {
		idx := index()
		n := 0
		for _, e := range idx {
			if e.Owner != "" && e.Status == hub.StatusActive && e.Rows["forward_pass_timing"] > 0 {
				n++
				victim = e
			}
		}
		return n == 4
	})
	var killed *hubRun
	for _, h := range hubs {
		if h.id == victim.Owner {
			killed = h
		}
	}
	t.Logf("killing %s, owner of %s (%d forward_pass rows so far)", killed.id, victim.Session, victim.Rows["forward_pass_timing"])
	_ = killed.p.stop(syscall.SIGKILL)
	// Then one NATS node dies while every session still runs (not the node the test's first URL
	// names; the stream, the buckets and the object store are R3).
	active := 0
	for _, e := range index() {
		if e.Status == hub.StatusActive {
			active++
		}
	}
	if active != 4 {
		t.Fatalf("%d sessions still active when the NATS node was to be killed; the run is too short for this machine", active)
	}
	t.Logf("killing NATS node %s", nodes[2].name)
	nodes[2].kill()
	agWaitFor(t, time.Minute, "another hub owning "+victim.Session, func() bool {
		e, ok := index()[victim.Session]
		return ok && (e.Owner != "" && e.Owner != killed.id || e.Status == hub.StatusEnded && e.Owner == "" && e.CheckpointNS > victim.CheckpointNS)
	})
	for _, s := range servers {
		mnWait(t, s.cmd)
	}
	// Every session ends, finally checkpointed and released.
	var final map[string]hub.IndexEntry
	agWaitFor(t, 3*time.Minute, "four sessions ended and finally checkpointed", func() bool {
		final = index()
		n := 0
		for _, e := range final {
			if e.Status == hub.StatusEnded && e.Owner == "" {
				n++
			}
		}
		return n == 4
	})
	var surviving []*hubRun
	for _, h := range hubs {
		if h != killed {
			surviving = append(surviving, h)
		}
	}
	// pmhub show on each surviving hub's data folder answers for every session (through a live
	// NATS node), and the folder it read holds exactly what the shims emitted.
	live := strings.Join(urls[:2], ",")
	streamSeqs := clStreamSeqs(t, js)
	for _, h := range surviving {
		for id := range final {
			out, err := exec.Command(bin(t, "pmhub"), "show", "--json", "--data", h.data, "--nats", live, id).CombinedOutput()
			if err != nil {
				t.Fatalf("pmhub show on %s's data folder, session %s: %v\n%s", h.id, id, err, out)
			}
			var sum struct {
				Session string           `json:"session"`
				Rows    map[string]int64 `json:"rows"`
				Dir     string           `json:"dir"`
			}
			if err := json.Unmarshal(out, &sum); err != nil {
				t.Fatalf("pmhub show --json: %v\n%s", err, out)
			}
			if sum.Session != id || sum.Rows["forward_pass_timing"] != final[id].Rows["forward_pass_timing"] {
				t.Errorf("%s: show on %s says %s with rows %v, index says %v", id, h.id, sum.Session, sum.Rows, final[id].Rows)
			}
			clCheckFolder(t, sum.Dir, streamSeqs)
			// The hub's own report page answers for the session too, owned by it or not.
			resp, err := http.Get("http://" + h.http + "/report/" + id)
			if err != nil {
				t.Fatalf("report page of %s on %s: %v", id, h.id, err)
			}
			page, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), id) {
				t.Errorf("GET /report/%s on %s: %s, page names the session: %v", id, h.id, resp.Status, strings.Contains(string(page), id))
			}
		}
	}
	// pmhub sessions lists every session on every surviving hub's data folder with --nats, and the
	// folder's own ones without it.
	for _, h := range surviving {
		out, err := exec.Command(bin(t, "pmhub"), "sessions", "--json", "--data", h.data, "--nats", live).CombinedOutput()
		if err != nil {
			t.Fatalf("pmhub sessions on %s: %v\n%s", h.id, err, out)
		}
		var list []struct {
			Session string `json:"session"`
			Status  string `json:"status"`
		}
		if err := json.Unmarshal(out, &list); err != nil {
			t.Fatalf("pmhub sessions --json: %v\n%s", err, out)
		}
		seen := map[string]string{}
		for _, l := range list {
			seen[l.Session] = l.Status
		}
		for id := range final {
			if seen[id] != hub.StatusEnded {
				t.Errorf("pmhub sessions on %s: %s is %q, want ended (%v)", h.id, id, seen[id], seen)
			}
		}
	}
	// Each simulator's ground truth: its workers are in one session, with their ranks.
	for _, s := range servers {
		tr := agReadTruth(t, s.truth)
		found := false
		for id := range final {
			d := hub.SessionDir(filepath.Join(surviving[0].data, "cache"), id)
			if _, err := os.Stat(d); err != nil {
				d = hub.SessionDir(surviving[0].data, id)
			}
			m, err := hub.ReadMetadata(d)
			if err != nil {
				t.Fatal(err)
			}
			pids := map[int64]*hub.ProcMeta{}
			for _, p := range m.Processes {
				if p.Host == s.host.name {
					pids[p.PID] = p
				}
			}
			workers := 0
			for _, p := range tr.Processes {
				if pm := pids[p.PID]; p.Role == "worker" && pm != nil && int(pm.Rank) == p.Rank && pm.Role == "worker" {
					workers++
				}
			}
			if workers == 2 {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: the ground truth's 2 workers (%s) are in no session with their ranks", s.host.name, s.truth)
		}
	}
}

// clStreamSeqs reads every event batch the stream holds: the seqs of each process, by
// "session/host/pid".
func clStreamSeqs(t *testing.T, js jetstream.JetStream) map[string]map[uint64]bool {
	t.Helper()
	ctx := context.Background()
	st, err := js.Stream(ctx, "PROFILEMATE")
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[uint64]bool{}
	for q := info.State.FirstSeq; q <= info.State.LastSeq && info.State.Msgs > 0; q++ {
		m, err := st.GetMsg(ctx, q)
		if err != nil || !strings.HasPrefix(m.Subject, "pm.v1.ev.") {
			continue
		}
		b, err := pmproto.DecodeEventBatch(m.Data)
		if err != nil {
			t.Fatalf("%s: %v", m.Subject, err)
		}
		p := b.GetProcess()
		k := fmt.Sprintf("%s/%s/%d", p.Session, p.Host, p.Pid)
		if out[k] == nil {
			out[k] = map[uint64]bool{}
		}
		for _, e := range b.Events {
			out[k][e.Seq] = true
		}
	}
	return out
}

// clCheckFolder checks a finished session folder: every process ended cleanly with nothing
// dropped and no gap, its rows are seq 1..last_seq of its bye, each exactly once, and they are
// what the stream holds for it (stream: clStreamSeqs).
func clCheckFolder(t *testing.T, dir string, stream map[string]map[uint64]bool) {
	t.Helper()
	m, err := hub.ReadMetadata(dir)
	if err != nil {
		t.Fatal(err)
	}
	type key struct {
		host string
		pid  int64
	}
	seqs := map[key]map[uint64]int{}
	for _, table := range tableFiles(t, dir) {
		b, err := os.ReadFile(filepath.Join(dir, table))
		if err != nil {
			t.Fatal(err)
		}
		recs, err := csv.NewReader(bytes.NewReader(b)).ReadAll()
		if err != nil {
			t.Fatalf("%s: %v", table, err)
		}
		col := map[string]int{}
		for i, c := range recs[0] {
			col[c] = i
		}
		for _, r := range recs[1:] {
			pid, _ := strconv.ParseInt(r[col["pid"]], 10, 64)
			q, _ := strconv.ParseUint(r[col["seq"]], 10, 64)
			k := key{r[col["host"]], pid}
			if seqs[k] == nil {
				seqs[k] = map[uint64]int{}
			}
			seqs[k][q]++
		}
	}
	procs := 0
	for _, p := range m.Processes {
		if p.Role == "agent" || p.Role == "" {
			continue
		}
		procs++
		k := key{p.Host, p.PID}
		if !p.Ended || p.Dropped != 0 || len(p.Gaps) != 0 {
			t.Errorf("%s %s/%d: ended %v dropped %d gaps %v", m.Session, p.Host, p.PID, p.Ended, p.Dropped, p.Gaps)
		}
		if uint64(len(seqs[k])) != p.LastSeq {
			t.Errorf("%s %s/%d (%s): %d distinct events, its shim emitted %d", m.Session, p.Host, p.PID, p.Role, len(seqs[k]), p.LastSeq)
		}
		in := stream[fmt.Sprintf("%s/%s/%d", m.Session, p.Host, p.PID)]
		var missing, extra []uint64
		for q := range in {
			if seqs[k][q] == 0 {
				missing = append(missing, q)
			}
		}
		for q := range seqs[k] {
			if !in[q] {
				extra = append(extra, q)
			}
		}
		if len(missing)+len(extra) > 0 {
			t.Errorf("%s %s/%d: the stream holds %d events, the folder %d; in the stream only: %v; in the folder only: %v",
				m.Session, p.Host, p.PID, len(in), len(seqs[k]), missing, extra)
		}
		for q, n := range seqs[k] {
			if n != 1 || q < 1 || q > p.LastSeq {
				t.Errorf("%s %s/%d: seq %d written %d times (last_seq %d)", m.Session, p.Host, p.PID, q, n, p.LastSeq)
				break
			}
		}
	}
	if procs == 0 {
		t.Errorf("%s: no processes", dir)
	}
}
