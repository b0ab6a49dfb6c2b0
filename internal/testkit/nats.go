package testkit

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// readyTimeout bounds how long a test waits for a started server to accept clients.
const readyTimeout = 20 * time.Second

// NATSOptions are the options of a test server: loopback, a random port (-1), JetStream with its
// store in storeDir, no logging, no signal handlers.
func NATSOptions(storeDir string) *server.Options {
	return &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: storeDir, NoLog: true, NoSigs: true}
}

// NewNATS starts a nats-server with opts and returns it once it accepts clients; the caller
// shuts it down. Errors: invalid options, or not ready within 20 s.
func NewNATS(opts *server.Options) (*server.Server, error) {
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("nats-server: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(readyTimeout) {
		ns.Shutdown()
		return nil, fmt.Errorf("nats-server not ready after %s", readyTimeout)
	}
	return ns, nil
}

// StartNATS starts a JetStream server for t (NATSOptions with a temporary store, then each edit
// applied in order) and shuts it down when t ends.
func StartNATS(t testing.TB, edit ...func(*server.Options)) *server.Server {
	t.Helper()
	opts := NATSOptions(t.TempDir())
	for _, e := range edit {
		e(opts)
	}
	ns, err := NewNATS(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	return ns
}

// Connect opens a client connection to url for t, closed when t ends.
func Connect(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// Store puts the server's JetStream store in dir (to restart a server on the same data).
func Store(dir string) func(*server.Options) { return func(o *server.Options) { o.StoreDir = dir } }

// Port listens on this loopback port (-1: a random one; to restart a server on the same port).
func Port(port int) func(*server.Options) { return func(o *server.Options) { o.Port = port } }
