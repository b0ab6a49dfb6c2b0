package hub

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/profilemate/profilemate/internal/testkit"
)

// logBuf collects the log lines of the hubs a test starts (slog's default logger).
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// captureLog sends slog's default logger to a buffer (and stderr) until t ends.
func captureLog(t *testing.T) *logBuf {
	t.Helper()
	old := slog.Default()
	lb := &logBuf{}
	slog.SetDefault(slog.New(slog.NewTextHandler(io.MultiWriter(lb, os.Stderr), nil)))
	t.Cleanup(func() { slog.SetDefault(old) })
	return lb
}

// TestStreamAdoptedAsItIs: a hub whose flags differ from an existing stream's settings leaves the
// stream as it is and warns about each difference, naming the flag; a stream made without some
// of the contract's subjects gets them, its settings kept.
func TestStreamAdoptedAsItIs(t *testing.T) {
	ns := testkit.StartNATS(t)
	nc := testkit.Connect(t, ns.ClientURL())
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	_, stopA := startHubCfg(t, Config{DataDir: t.TempDir(), NATSURL: ns.ClientURL(), Shared: true, HubID: "a",
		StreamMaxAge: 2 * time.Hour, StreamMaxBytes: 1 << 30})
	lb := captureLog(t)
	_, stopB := startHubCfg(t, Config{DataDir: t.TempDir(), NATSURL: ns.ClientURL(), Shared: true, HubID: "b",
		StreamMaxAge: time.Hour})
	st, err := js.Stream(ctx, streamConfig().Name)
	if err != nil {
		t.Fatal(err)
	}
	if c := st.CachedInfo().Config; c.MaxAge != 2*time.Hour || c.MaxBytes != 1<<30 {
		t.Fatalf("after hub b: stream max_age %s max_bytes %d, want hub a's 2h and 1 GiB", c.MaxAge, c.MaxBytes)
	}
	for _, want := range []string{"setting=max_age", "flag_name=--stream-max-age", "setting=max_bytes", "flag_name=--stream-max-bytes"} {
		if !strings.Contains(lb.String(), want) {
			t.Errorf("hub b's log names no %q:\n%s", want, lb.String())
		}
	}
	stopB()
	stopA()

	// A stream another version created with fewer subjects, and its own limits.
	if err := js.DeleteStream(ctx, streamConfig().Name); err != nil {
		t.Fatal(err)
	}
	old := streamConfig()
	all := old.Subjects
	old.Subjects, old.MaxAge = all[:1], 3*time.Hour
	if _, err := js.CreateStream(ctx, old); err != nil {
		t.Fatal(err)
	}
	startHubCfg(t, Config{DataDir: t.TempDir(), NATSURL: ns.ClientURL()})
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c := info.Config; c.MaxAge != 3*time.Hour || len(c.Subjects) != len(all) {
		t.Fatalf("old stream after a hub: max_age %s subjects %v, want 3h and %v", c.MaxAge, c.Subjects, all)
	}
}

// TestStreamCreateOnFormingCluster: a hub starts against a node of a 3-node cluster whose peers
// are not up yet (no JetStream leader: requests fail or time out). It keeps looking and creating
// until the peers come up, then starts; its log says what happened (created, or found), never
// that it adopted a stream it could not read.
func TestStreamCreateOnFormingCluster(t *testing.T) {
	free := func() int {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
	ports := []int{free(), free(), free()}
	var routes []string
	for _, p := range ports {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", p))
	}
	node := func(i int) func(*server.Options) {
		return func(o *server.Options) {
			o.ServerName = fmt.Sprintf("n%d", i+1)
			o.Cluster.Name, o.Cluster.Host, o.Cluster.Port = "pm-forming", "127.0.0.1", ports[i]
			o.Routes = server.RoutesFromStr(strings.Join(routes, ","))
		}
	}
	n1 := testkit.StartNATS(t, node(0))
	lb := captureLog(t)
	started := make(chan error, 1)
	go func() {
		s, err := New(Config{DataDir: t.TempDir(), NATSURL: n1.ClientURL(), Shared: true, HubID: "a",
			StreamReplicas: 3, Schema: testSchema{}, Decoder: jsonDecoder{}})
		if err == nil {
			err = s.Start(context.Background())
			t.Cleanup(s.Close)
		}
		started <- err
	}()
	waitFor(t, "the hub finding no JetStream leader", func() bool { return strings.Contains(lb.String(), "stream not ready") })
	testkit.StartNATS(t, node(1))
	testkit.StartNATS(t, node(2))
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("hub start: %v", err)
		}
	case <-time.After(2 * streamSetupFor):
		t.Fatal("hub start did not return")
	}
	log := lb.String()
	if !strings.Contains(log, "stream created") && !strings.Contains(log, "stream found") {
		t.Fatalf("the hub's log says neither created nor found:\n%s", log)
	}
	if strings.Contains(log, "adopt") && strings.Contains(log, "deadline exceeded") && strings.Contains(log, "level=WARN") {
		t.Fatalf("a failed create logged as an adoption:\n%s", log)
	}
}
