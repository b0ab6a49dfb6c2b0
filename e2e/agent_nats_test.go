package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/profilemate/profilemate/internal/stream"
	"github.com/profilemate/profilemate/internal/testkit"
	pmproto "github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

// agNATS is an embedded JetStream server that can be stopped and restarted on the same port and
// store, as a NATS outage looks to an agent.
type agNATS struct {
	t     *testing.T
	store string
	port  int
	ns    *server.Server
}

func agStartNATS(t *testing.T) *agNATS {
	t.Helper()
	n := &agNATS{t: t, store: t.TempDir(), port: -1}
	n.start()
	n.port = n.ns.Addr().(*net.TCPAddr).Port
	t.Cleanup(func() {
		if n.ns != nil {
			n.ns.Shutdown()
		}
	})
	return n
}

func (n *agNATS) start() {
	n.t.Helper()
	opts := testkit.NATSOptions(n.store)
	opts.Port = n.port
	ns, err := testkit.NewNATS(opts)
	if err != nil {
		n.t.Fatal(err)
	}
	n.ns = ns
}

func (n *agNATS) stop() {
	n.ns.Shutdown()
	n.ns.WaitForShutdown()
	n.ns = nil
}

func (n *agNATS) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.port) }

func (n *agNATS) createStream() {
	n.t.Helper()
	nc, err := nats.Connect(n.url())
	if err != nil {
		n.t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(context.Background(), stream.Config()); err != nil {
		n.t.Fatal(err)
	}
}

// agStream is everything the stream holds, decoded, in stream order.
type agStream struct {
	batches []*pmpb.EventBatch
	ids     []string // Nats-Msg-Id per batch
	life    []*pmpb.Lifecycle
}

func (n *agNATS) read() *agStream {
	n.t.Helper()
	nc, err := nats.Connect(n.url())
	if err != nil {
		n.t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	s, err := js.Stream(ctx, pmproto.StreamName)
	if err != nil {
		return &agStream{}
	}
	info, err := s.Info(ctx)
	if err != nil {
		n.t.Fatal(err)
	}
	out := &agStream{}
	if info.State.Msgs == 0 {
		return out
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		switch {
		case strings.HasPrefix(m.Subject, "pm.v1.ev."):
			b, err := pmproto.DecodeEventBatch(m.Data)
			if err != nil {
				n.t.Fatalf("%s: %v", m.Subject, err)
			}
			out.batches = append(out.batches, b)
			out.ids = append(out.ids, m.Header.Get(nats.MsgIdHdr))
		case strings.HasPrefix(m.Subject, "pm.v1.life."):
			l, err := pmproto.DecodeLifecycle(m.Data)
			if err != nil {
				n.t.Fatalf("%s: %v", m.Subject, err)
			}
			out.life = append(out.life, l)
		}
	}
	return out
}

func (s *agStream) events() int {
	n := 0
	for _, b := range s.batches {
		n += len(b.Events)
	}
	return n
}

// byes returns the clean bye records by pid.
func (s *agStream) byes() map[int64]*pmpb.Lifecycle_Bye {
	out := map[int64]*pmpb.Lifecycle_Bye{}
	for _, l := range s.life {
		if b := l.GetBye(); b != nil && b.Clean {
			out[l.GetProcess().GetPid()] = b
		}
	}
	return out
}

// checkExactlyOnceInOrder checks that no event arrived twice, that each process's events of one
// kind arrived in increasing seq order, and that message ids are what the contract says.
// It returns the seqs per pid.
func (s *agStream) checkExactlyOnceInOrder(t *testing.T) map[int64][]uint64 {
	t.Helper()
	seen := map[string]bool{}
	last := map[string]uint64{}
	per := map[int64][]uint64{}
	for i, b := range s.batches {
		p := b.GetProcess()
		kind := b.Events[0].Kind
		if want := pmproto.MsgID(p.Session, p.Host, p.Pid, p.Instance, kind, b.Events[0].Seq, b.Events[len(b.Events)-1].Seq); s.ids[i] != want {
			t.Errorf("message id %q, want %q", s.ids[i], want)
		}
		for _, e := range b.Events {
			k := fmt.Sprint(p.Pid, "/", e.Seq)
			if seen[k] {
				t.Fatalf("pid %d seq %d arrived twice", p.Pid, e.Seq)
			}
			seen[k] = true
			ok := fmt.Sprint(p.Pid, "/", e.Kind)
			if e.Seq <= last[ok] {
				t.Fatalf("pid %d kind %s: seq %d after %d", p.Pid, e.Kind, e.Seq, last[ok])
			}
			last[ok] = e.Seq
			per[p.Pid] = append(per[p.Pid], e.Seq)
		}
	}
	for pid := range per {
		sort.Slice(per[pid], func(i, j int) bool { return per[pid][i] < per[pid][j] })
	}
	return per
}

func agWaitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// agShortDir is a temp folder with a path short enough for a Unix socket.
func agShortDir(t *testing.T) string {
	d, err := os.MkdirTemp("", "pme")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// agProc is a pmagent process whose log lines go to the test log.
type agProc struct {
	cmd  *exec.Cmd
	done chan error
	mu   sync.Mutex
	log  strings.Builder
}

func agStart(t testing.TB, env []string, args ...string) *agProc {
	t.Helper()
	p := &agProc{cmd: exec.Command(bin(t, "pmagent"), args...), done: make(chan error, 1)}
	p.cmd.Env = append(os.Environ(), env...)
	r, w := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = w, w
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.log.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
		}
	}()
	go func() {
		err := p.cmd.Wait()
		w.Close()
		p.done <- err
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		p.done <- nil
		if t.Failed() {
			t.Logf("pmagent %s output:\n%s", strings.Join(args, " "), p.output())
		}
	})
	return p
}

func (p *agProc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// wait waits for the process to exit and returns its error.
func (p *agProc) wait(t testing.TB, timeout time.Duration) error {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(timeout):
		t.Fatalf("pmagent did not exit within %s", timeout)
		return nil
	}
}
