// Package hub is pmhub's core: it runs (or joins) the NATS JetStream stream the agents publish to,
// consumes it with a durable consumer and merges every host's and process's events into one folder
// per session (CSV per table + metadata.json), exactly once even across crashes of the hub.
//
// Files by job: hub.go (Config, New, Start, Close), embedded.go (the embedded nats-server),
// stream.go (stream and durable consumer set-up), consume.go (the consume loop: fetch, decode,
// apply, acknowledge), registry.go (open sessions: reload, open, list), ingest.go (the applied
// stream position, a lost consumer, health), housekeep.go (idle sessions, retention),
// deadletter.go (messages kept for a newer hub, capped), security.go (the embedded server's auth
// and TLS, exposure warnings), http.go (the HTTP listener's TLS and auth), session.go (one
// session's files), segments.go (rotation of long-lived sessions into segments, their retention,
// Segments), window.go (a time range across segments as one folder), lock.go (one hub per data
// folder), counters.go (what the hub counted).
package hub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/profilemate/profilemate/internal/clock"
	"github.com/profilemate/profilemate/internal/stream"
)

// Defaults for the limits; every one can be changed on the command line.
const (
	DefaultListen          = "127.0.0.1:4222"
	DefaultSessionIdle     = 60 * time.Second
	DefaultStreamMaxBytes  = stream.DefaultMaxBytes
	DefaultStreamMaxAge    = stream.DefaultMaxAge
	DefaultSessionMaxBytes = 4 << 30 // 4 GiB of CSV per session
	DefaultRetention       = 30 * 24 * time.Hour
	DefaultMaxMsgBytes     = stream.DefaultMaxMsgSize
	DefaultConsumer        = "pmhub"
	DefaultFetch           = 512
)

// Config configures a Server. Zero values take the defaults above.
type Config struct {
	DataDir string
	// Listen is the embedded server's client address; ignored with NATSURL.
	Listen string
	// NATSURL selects an existing NATS cluster instead of the embedded server; NATSOptions carry
	// its TLS, credentials or user/password.
	NATSURL     string
	NATSOptions []nats.Option
	// Server is the embedded server's authentication and TLS; ignored with NATSURL.
	Server ServerSecurity

	SessionIdle     time.Duration
	StreamMaxBytes  int64
	StreamMaxAge    time.Duration
	SessionMaxBytes int64         // negative: no cap; with rotation, per segment
	Retention       time.Duration // negative: keep ended sessions forever; applies to each closed segment too
	// RotateEvery and RotateBytes close a session's live segment and open the next once the live
	// one is that old (hub clock) or holds that many CSV bytes, and holds rows (segments.go); 0:
	// never. SegmentsMaxAge removes a session's closed segments that closed longer ago than
	// that, SegmentsMaxBytes its oldest closed segments while all its segments together hold more
	// bytes on disk than that; 0: no such limit. None may be negative.
	RotateEvery      time.Duration
	RotateBytes      int64
	SegmentsMaxAge   time.Duration
	SegmentsMaxBytes int64
	MaxMsgBytes      int
	Consumer         string
	Fetch            int
	// DeadLetterMaxCount and DeadLetterMaxBytes cap <data>/deadletter/ (messages; bytes of
	// their files); beyond them dead letters are only counted.
	DeadLetterMaxCount int64
	DeadLetterMaxBytes int64

	// Decoder and Schema default to the wire contract in proto/.
	Decoder Decoder
	Schema  Schema
	// Now is the hub's clock (time.Now when nil).
	Now func() time.Time
	// Observe, when set, sees every event batch after it was written (a redelivered batch may be
	// seen again); /metrics uses it. It runs on the consume path: keep it cheap.
	Observe func(*Batch)

	// StreamReplicas is the replica count the hub creates PROFILEMATE (and, shared, its buckets)
	// with: 1 (default) on one server, 3 on a 3-node cluster. An existing stream keeps its own.
	StreamReplicas int
	// Shared runs the hub as one of several on one cluster (cluster.go, docs/SCALING.md): sessions
	// are owned through leases, consumed by per-session consumers and checkpointed to the Object
	// Store. Without it the hub reads the whole stream with one durable consumer.
	Shared bool
	// HubID names this hub in leases and the session index (shared; default DefaultHubID()).
	HubID string
	// LeaseTTL is how long a session lease lives without renewal (shared; renewed at a third).
	LeaseTTL time.Duration
	// CheckpointEvery is how often an owned session's folder is checkpointed (shared).
	CheckpointEvery time.Duration
	// CacheMaxAge and CacheMaxBytes bound <data>/cache/, the copies of sessions other hubs own
	// or owned, fetched from their checkpoints to serve them (shared; retention.go): a copy unused
	// for CacheMaxAge is removed, and the least recently used ones while the cache holds more
	// than CacheMaxBytes. 0: DefaultCacheMaxAge, DefaultCacheMaxBytes; negative: no such limit.
	CacheMaxAge   time.Duration
	CacheMaxBytes int64
}

// Decoder turns one stream message into *Batch, *Life or *Heartbeat. Errors are *BadInput
// (counted by reason) or wrap ErrNewerMajor (dead-lettered).
type Decoder interface {
	Decode(subject string, data []byte) (any, error)
}

// ErrNewerMajor marks a message of a wire major version this hub does not know.
var ErrNewerMajor = errors.New("newer wire major version")

// Server is a running hub.
type Server struct {
	cfg Config
	log *slog.Logger
	ns  *server.Server
	nc  *nats.Conn
	js  jetstream.JetStream
	ing ingest // the consumer and the applied stream position
	url string

	started time.Time
	cnt     *counters
	dead    *deadLetters
	lock    *os.File // flock on <data>/pmhub.lock while started (lock.go)

	mu       sync.Mutex // guards sessions, hosts and archived (the consumer loop holds it per fetch round)
	sessions map[string]*session
	// archived caches the totals of closed segment folders (they never change) for Sessions().
	archived map[string]archiveTotals
	// rotated is set when a segment closed since the last segment retention pass.
	rotated bool
	hosts   map[string]HostMeta // latest known offset per host, for sessions that start later

	cl *cluster // shared mode only (cluster.go)
}

// New checks cfg and prepares the data folder; Start brings the server up.
func New(cfg Config) (*Server, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("hub: data folder not set")
	}
	for _, c := range []struct {
		name string
		neg  bool
	}{
		{"session idle", cfg.SessionIdle < 0}, {"stream max bytes", cfg.StreamMaxBytes < 0},
		{"stream max age", cfg.StreamMaxAge < 0}, {"max message bytes", cfg.MaxMsgBytes < 0}, {"fetch", cfg.Fetch < 0},
		{"dead-letter max count", cfg.DeadLetterMaxCount < 0}, {"dead-letter max bytes", cfg.DeadLetterMaxBytes < 0},
		{"rotate every", cfg.RotateEvery < 0}, {"rotate bytes", cfg.RotateBytes < 0},
		{"segments max age", cfg.SegmentsMaxAge < 0}, {"segments max bytes", cfg.SegmentsMaxBytes < 0},
	} {
		if c.neg {
			return nil, fmt.Errorf("hub: %s must not be negative", c.name)
		}
	}
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	if cfg.SessionIdle <= 0 {
		cfg.SessionIdle = DefaultSessionIdle
	}
	if cfg.StreamMaxBytes == 0 {
		cfg.StreamMaxBytes = DefaultStreamMaxBytes
	}
	if cfg.StreamMaxAge == 0 {
		cfg.StreamMaxAge = DefaultStreamMaxAge
	}
	if cfg.SessionMaxBytes == 0 {
		cfg.SessionMaxBytes = DefaultSessionMaxBytes
	}
	if cfg.Retention == 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.MaxMsgBytes <= 0 {
		cfg.MaxMsgBytes = DefaultMaxMsgBytes
	}
	if cfg.Consumer == "" {
		cfg.Consumer = DefaultConsumer
	}
	if cfg.Fetch <= 0 {
		cfg.Fetch = DefaultFetch
	}
	if cfg.DeadLetterMaxCount == 0 {
		cfg.DeadLetterMaxCount = DefaultDeadLetterMaxCount
	}
	if cfg.DeadLetterMaxBytes == 0 {
		cfg.DeadLetterMaxBytes = DefaultDeadLetterMaxBytes
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := cfg.sharedDefaults(); err != nil {
		return nil, err
	}
	if cfg.Schema == nil || cfg.Decoder == nil {
		ws, err := newWireSchema()
		if err != nil {
			return nil, err
		}
		if cfg.Schema == nil {
			cfg.Schema = ws
		}
		if cfg.Decoder == nil {
			cfg.Decoder = ws
		}
	}
	for _, d := range []string{cfg.DataDir, sessionsDir(cfg.DataDir)} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("hub: create data folder: %w", err)
		}
	}
	dead, err := openDeadLetters(filepath.Join(cfg.DataDir, "deadletter"))
	if err != nil {
		return nil, fmt.Errorf("hub: %w", err)
	}
	return &Server{
		cfg: cfg, log: slog.With("component", "hub"), cnt: newCounters(), dead: dead,
		sessions: map[string]*session{}, hosts: map[string]HostMeta{}, archived: map[string]archiveTotals{},
	}, nil
}

func sessionsDir(data string) string { return filepath.Join(data, "sessions") }

// SessionDir is where a session's files live under a hub data folder.
func SessionDir(data, session string) string { return filepath.Join(sessionsDir(data), session) }

// ClientURL is the NATS URL agents should publish to.
func (s *Server) ClientURL() string { return s.url }

// Conn is the hub's own NATS connection (for tail-like readers in the same process).
func (s *Server) Conn() *nats.Conn { return s.nc }

// Start takes the data folder's lock (ErrDataInUse when another hub holds it), runs the embedded
// NATS server (or connects to NATSURL), creates or adopts the stream and
// the durable consumer, answers clock requests and reloads unfinished sessions from disk.
func (s *Server) Start(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("hub: start: %w", err)
	}
	// One hub per data folder: a second one would write the same session files and JetStream store.
	lock, err := lockData(s.cfg.DataDir)
	if err != nil {
		return err
	}
	s.lock = lock
	opts := []nats.Option{nats.Name("pmhub"), nats.MaxReconnects(-1)}
	connURL := s.cfg.NATSURL
	if s.cfg.NATSURL == "" {
		own, err := s.startEmbedded(ctx)
		if err != nil {
			return err
		}
		opts = append(opts, own...)
		// In-process: a nats:// URL, or nats.go would insist on a TLS handshake the pipe skips.
		connURL = "nats://" + s.ns.Addr().String()
	} else {
		s.url = s.cfg.NATSURL
		opts = append(opts, s.cfg.NATSOptions...)
	}
	nc, err := nats.Connect(connURL, opts...)
	if err != nil {
		s.Close()
		return fmt.Errorf("hub: connect %s: %w", s.url, err)
	}
	s.nc = nc
	if err := s.setupStream(ctx); err != nil {
		s.Close()
		return err
	}
	if _, err := clock.Serve(ctx, nc, s.cfg.Now); err != nil {
		s.Close()
		return fmt.Errorf("hub: %w", err)
	}
	if s.cfg.Shared {
		// Sessions are loaded when this hub claims them (cluster.go), not from the folder.
		if err := s.startCluster(ctx); err != nil {
			s.Close()
			return err
		}
		s.started = s.cfg.Now()
		s.log.Info("hub started (shared)", "url", s.url, "data", s.cfg.DataDir, "hub", s.cfg.HubID)
		return nil
	}
	if err := s.loadSessions(); err != nil {
		s.Close()
		return err
	}
	s.started = s.cfg.Now()
	s.log.Info("hub started", "url", s.url, "data", s.cfg.DataDir)
	return nil
}

// Close stops the NATS connection and the embedded server; sessions are left as committed.
func (s *Server) Close() {
	s.cl.close()
	s.mu.Lock()
	for _, ss := range s.sessions {
		ss.closeFiles()
	}
	s.mu.Unlock()
	if s.nc != nil {
		s.nc.Close()
	}
	if s.ns != nil {
		s.ns.Shutdown()
		s.ns.WaitForShutdown()
	}
	if s.lock != nil {
		s.lock.Close() // releases the data folder's flock
		s.lock = nil
	}
}

// Counters returns what the hub counted since it started.
func (s *Server) Counters() Counters {
	c := s.cnt.snapshot()
	s.mu.Lock()
	c.Sessions = len(s.sessions)
	s.mu.Unlock()
	if s.cl != nil {
		s.cl.mu.Lock()
		c.Owned = len(s.cl.owned)
		s.cl.mu.Unlock()
	}
	return c
}
