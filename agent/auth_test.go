package agent

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/profilemate/profilemate/internal/stream"
	"github.com/profilemate/profilemate/internal/testkit"
)

func TestUserPassword(t *testing.T) {
	ns := testkit.StartNATS(t, func(o *server.Options) { o.Username, o.Password = "pm", "secret" })
	nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo("pm", "secret"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(t.Context(), stream.Config()); err != nil {
		t.Fatal(err)
	}
	wrong := newTestAgent(t, Config{NATS: NATSConfig{URL: ns.ClientURL(), User: "pm", Password: "nope"}})
	dialShim(t, wrong.Socket(), 1201, 0, "auth").batch(2)
	waitFor(t, "queued without delivery", func() bool { return wrong.Status().Events == 2 && wrong.Status().Spool.MemBatches > 0 })
	if wrong.Status().NATS.Connected {
		t.Error("connected with a wrong password")
	}
	right := newTestAgent(t, Config{NATS: NATSConfig{URL: ns.ClientURL(), User: "pm", Password: "secret"}})
	dialShim(t, right.Socket(), 1202, 0, "auth").batch(2)
	waitFor(t, "published with the right password", func() bool { return right.Status().NATS.Published >= 1 })
}

// lockedBuffer is a log sink the agent's goroutines write to while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestWrongTokenSaysAuthorizationViolation: an agent with a wrong --token against a real
// nats-server that requires one logs the server's authorization violation as the reason its
// events wait in the spool (it used to log only "nats: connection closed"), and its status says
// so too.
func TestWrongTokenSaysAuthorizationViolation(t *testing.T) {
	ns := testkit.StartNATS(t, func(o *server.Options) { o.Authorization = "secret" })
	var log lockedBuffer
	a := newTestAgent(t, Config{
		Logger: slog.New(slog.NewTextHandler(&log, nil)),
		NATS:   NATSConfig{URL: ns.ClientURL(), Options: []nats.Option{nats.Token("wrong")}},
	})
	dialShim(t, a.Socket(), 1301, 0, "auth").batch(2)
	waitFor(t, "the refused credentials logged and a publish attempted", func() bool {
		s := log.String()
		return strings.Contains(s, "refused the credentials") && strings.Contains(s, "publish failed")
	})
	s := strings.ToLower(log.String())
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, "publish failed") && !strings.Contains(line, "authorization violation") {
			t.Errorf("the publish failure does not name the authorization violation: %s", line)
		}
	}
	if strings.Contains(s, "connection closed") {
		t.Errorf("the log still gives \"connection closed\" as the cause:\n%s", log.String())
	}
	if st := a.Status().NATS; st.Connected || !strings.Contains(strings.ToLower(st.Error), "authorization violation") {
		t.Errorf("status: connected %v, error %q; want not connected, naming the authorization violation", st.Connected, st.Error)
	}
}

// TestShutdownIsNotADisconnect: an agent that shuts down after delivering everything does not
// warn that NATS disconnected and messages stay in the spool (its own close of the connection
// used to read so, right after "all events delivered").
func TestShutdownIsNotADisconnect(t *testing.T) {
	ns := testkit.StartNATS(t)
	nc := testkit.Connect(t, ns.ClientURL())
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(t.Context(), stream.Config()); err != nil {
		t.Fatal(err)
	}
	var log lockedBuffer
	a, err := New(Config{Socket: filepath.Join(shortTemp(t), "a.sock"), Host: "h1",
		Logger: slog.New(slog.NewTextHandler(&log, nil)), NATS: NATSConfig{URL: ns.ClientURL()}})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	// The client runs its callbacks in order: once the closed one ran, the disconnect one has.
	closed := make(chan struct{})
	a.pub.nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	dialShim(t, a.Socket(), 1401, 0, "bye").batch(2)
	waitFor(t, "published", func() bool { return a.Status().NATS.Published >= 1 && a.q.pending() == 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := a.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("the agent's NATS connection was not closed by its shutdown")
	}
	if s := log.String(); strings.Contains(s, "nats disconnected") {
		t.Errorf("shutdown logged a disconnect:\n%s", s)
	}
}
