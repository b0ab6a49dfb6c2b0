// Package hub is pmhub's core: it runs (or joins) the NATS JetStream stream the agents publish to,
// consumes it with a durable consumer and merges every host's and process's events into one folder
// per session (CSV per table + metadata.json), exactly once even across crashes of the hub.
package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
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

	SessionIdle     time.Duration
	StreamMaxBytes  int64
	StreamMaxAge    time.Duration
	SessionMaxBytes int64         // negative: no cap
	Retention       time.Duration // negative: keep ended sessions forever
	MaxMsgBytes     int
	Consumer        string
	Fetch           int

	// Decoder and Schema default to the wire contract in proto/.
	Decoder Decoder
	Schema  Schema
	// Now is the hub's clock (time.Now when nil).
	Now func() time.Time
	// Observe, when set, sees every event batch after it was written (a redelivered batch may be
	// seen again); /metrics uses it. It runs on the consume path: keep it cheap.
	Observe func(*Batch)
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
	cfg  Config
	log  *slog.Logger
	ns   *server.Server
	nc   *nats.Conn
	js   jetstream.JetStream
	cons jetstream.Consumer
	url  string

	cnt *counters

	mu       sync.Mutex // guards sessions and hosts (the consumer loop holds it per fetch round)
	sessions map[string]*session
	hosts    map[string]HostMeta // latest known offset per host, for sessions that start later
}

// New checks cfg and prepares the data folder; Start brings the server up.
func New(cfg Config) (*Server, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("hub: data folder not set")
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
	if cfg.Now == nil {
		cfg.Now = time.Now
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
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("hub: create data folder: %w", err)
		}
	}
	return &Server{
		cfg: cfg, log: slog.With("component", "hub"), cnt: newCounters(),
		sessions: map[string]*session{}, hosts: map[string]HostMeta{},
	}, nil
}

func sessionsDir(data string) string { return filepath.Join(data, "sessions") }

// SessionDir is where a session's files live under a hub data folder.
func SessionDir(data, session string) string { return filepath.Join(sessionsDir(data), session) }

// ClientURL is the NATS URL agents should publish to.
func (s *Server) ClientURL() string { return s.url }

// Conn is the hub's own NATS connection (for tail-like readers in the same process).
func (s *Server) Conn() *nats.Conn { return s.nc }

// Start runs the embedded NATS server (or connects to NATSURL), creates or adopts the stream and
// the durable consumer, answers clock requests and reloads unfinished sessions from disk.
func (s *Server) Start(ctx context.Context) error {
	if s.cfg.NATSURL == "" {
		host, port, err := splitHostPort(s.cfg.Listen)
		if err != nil {
			return err
		}
		opts := &server.Options{
			ServerName: "pmhub", Host: host, Port: port, JetStream: true,
			StoreDir: filepath.Join(s.cfg.DataDir, "jetstream"), NoSigs: true, NoLog: true,
			MaxPayload: int32(s.cfg.MaxMsgBytes), JetStreamMaxStore: s.cfg.StreamMaxBytes * 2,
		}
		ns, err := server.NewServer(opts)
		if err != nil {
			return fmt.Errorf("hub: embedded nats-server: %w", err)
		}
		go ns.Start()
		if !ns.ReadyForConnections(30 * time.Second) {
			ns.Shutdown()
			return errors.New("hub: embedded nats-server did not become ready")
		}
		s.ns = ns
		s.url = ns.ClientURL()
	} else {
		s.url = s.cfg.NATSURL
	}
	opts := append([]nats.Option{nats.Name("pmhub"), nats.MaxReconnects(-1)}, s.cfg.NATSOptions...)
	nc, err := nats.Connect(s.url, opts...)
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
	if err := s.loadSessions(); err != nil {
		s.Close()
		return err
	}
	s.log.Info("hub started", "url", s.url, "data", s.cfg.DataDir)
	return nil
}

func (s *Server) setupStream(ctx context.Context) error {
	js, err := jetstream.New(s.nc)
	if err != nil {
		return fmt.Errorf("hub: jetstream: %w", err)
	}
	s.js = js
	cfg := streamConfig()
	cfg.MaxBytes, cfg.MaxAge = s.cfg.StreamMaxBytes, s.cfg.StreamMaxAge
	if cfg.MaxMsgSize <= 0 || int(cfg.MaxMsgSize) > s.cfg.MaxMsgBytes {
		cfg.MaxMsgSize = int32(s.cfg.MaxMsgBytes)
	}
	st, err := js.CreateOrUpdateStream(ctx, cfg)
	if err != nil {
		// A stream managed by someone else (other replicas, other limits): adopt it as it is.
		var e2 error
		st, e2 = js.Stream(ctx, cfg.Name)
		if e2 != nil {
			return fmt.Errorf("hub: create stream %s: %w", cfg.Name, err)
		}
		s.log.Warn("adopting existing stream with its own config", "stream", cfg.Name, "err", err)
	}
	cons, err := st.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       s.cfg.Consumer,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       60 * time.Second,
		MaxAckPending: 64 * s.cfg.Fetch,
		MaxDeliver:    -1,
	})
	if err != nil {
		return fmt.Errorf("hub: durable consumer %s: %w", s.cfg.Consumer, err)
	}
	s.cons = cons
	return nil
}

// Close stops the NATS connection and the embedded server; sessions are left as committed.
func (s *Server) Close() {
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
}

// Counters returns what the hub counted since it started.
func (s *Server) Counters() Counters {
	c := s.cnt.snapshot()
	s.mu.Lock()
	c.Sessions = len(s.sessions)
	s.mu.Unlock()
	return c
}

// Sessions lists every session folder under the data folder, open ones from memory, the others
// from their metadata.json.
func (s *Server) Sessions() []SessionInfo {
	ents, _ := os.ReadDir(sessionsDir(s.cfg.DataDir))
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []SessionInfo{}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		dir := SessionDir(s.cfg.DataDir, e.Name())
		var m *Metadata
		if ss := s.sessions[e.Name()]; ss != nil {
			m = &ss.meta
		} else if mm, err := ReadMetadata(dir); err == nil {
			m = mm
		} else {
			continue
		}
		rows := make(map[string]int64, len(m.Rows))
		for k, v := range m.Rows {
			rows[k] = v
		}
		out = append(out, SessionInfo{Session: m.Session, Dir: dir, Status: m.Status, EndReason: m.EndReason,
			Hosts: sortedKeys(m.Hosts), Processes: len(m.Processes), Rows: rows, Bytes: m.Bytes})
	}
	return out
}

var sessionRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// loadSessions reopens every session not marked ended, so their idle timers run again and their
// seen-state is ready before the first redelivered message.
func (s *Server) loadSessions() error {
	ents, err := os.ReadDir(sessionsDir(s.cfg.DataDir))
	if err != nil {
		return fmt.Errorf("hub: list sessions: %w", err)
	}
	now := s.cfg.Now()
	for _, e := range ents {
		if !e.IsDir() || !sessionRE.MatchString(e.Name()) {
			continue
		}
		dir := SessionDir(s.cfg.DataDir, e.Name())
		if m, err := ReadMetadata(dir); err == nil {
			for h, hm := range m.Hosts {
				if hm.Measured && hm.LastSeenNS >= s.hosts[h].LastSeenNS {
					s.hosts[h] = *hm
				}
			}
			if m.Status == StatusEnded {
				continue
			}
		}
		ss, err := loadSession(dir, e.Name(), s.cfg.Schema, s.cfg.SessionMaxBytes, now)
		if err != nil {
			s.log.Error("session not reloaded", "session", e.Name(), "err", err)
			continue
		}
		ss.known = s.hosts
		s.sessions[e.Name()] = ss
		s.log.Info("session reloaded", "session", e.Name(), "rows", ss.meta.Rows)
	}
	return nil
}

// openSession returns the in-memory session, reloading it from disk or creating it.
func (s *Server) openSession(id string) (*session, error) {
	if ss := s.sessions[id]; ss != nil {
		return ss, nil
	}
	if !sessionRE.MatchString(id) {
		return nil, bad(ReasonSession, fmt.Errorf("session id %q is not a folder name", id))
	}
	dir := SessionDir(s.cfg.DataDir, id)
	now := s.cfg.Now()
	var ss *session
	if _, err := os.Stat(dir); err == nil {
		ss, err = loadSession(dir, id, s.cfg.Schema, s.cfg.SessionMaxBytes, now)
		if err != nil {
			return nil, bad(ReasonWrite, err)
		}
	} else {
		ss = newSession(dir, id, s.cfg.Schema, s.cfg.SessionMaxBytes, now)
	}
	ss.known = s.hosts
	s.sessions[id] = ss
	return ss, nil
}

// Run consumes the stream until ctx ends. Messages are acknowledged only after the rows they
// carried are written and synced, so a crash at any point leads to redelivery, and redelivered
// events already on disk are recognised by (host, pid, seq) and skipped.
func (s *Server) Run(ctx context.Context) error {
	hk := time.NewTicker(time.Second)
	defer hk.Stop()
	lastRetention := time.Time{}
	for ctx.Err() == nil {
		// Take what is there at once; when nothing is, wait for one message so an idle hub
		// neither spins nor delays the first message of a burst.
		msgs, err := s.fetch(s.cfg.Fetch, true)
		if err == nil && len(msgs) == 0 {
			msgs, err = s.fetch(1, false)
		}
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			s.log.Warn("fetch failed", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		if len(msgs) > 0 {
			s.process(msgs)
		}
		select {
		case <-hk.C:
			s.housekeep(&lastRetention)
		default:
		}
	}
	s.mu.Lock()
	for id, ss := range s.sessions {
		if err := ss.commit(); err != nil {
			s.log.Error("final commit failed", "session", id, "err", err)
		}
	}
	s.mu.Unlock()
	return nil
}

func (s *Server) fetch(n int, noWait bool) ([]jetstream.Msg, error) {
	var b jetstream.MessageBatch
	var err error
	if noWait {
		b, err = s.cons.FetchNoWait(n)
	} else {
		b, err = s.cons.Fetch(n, jetstream.FetchMaxWait(500*time.Millisecond))
	}
	if err != nil {
		return nil, err
	}
	var msgs []jetstream.Msg
	for m := range b.Messages() {
		msgs = append(msgs, m)
	}
	if err := b.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, jetstream.ErrNoMessages) {
		s.log.Debug("fetch ended", "err", err)
	}
	return msgs, nil
}

type decoded struct {
	v         any
	err       error
	oversized bool
}

// decodeAll decodes a fetch round's messages on every core: decoding is the costly, independent
// part; applying them stays sequential, in stream order.
func (s *Server) decodeAll(msgs []jetstream.Msg) []decoded {
	out := make([]decoded, len(msgs))
	workers := min(runtime.GOMAXPROCS(0), (len(msgs)+15)/16)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < len(msgs); i += workers {
				data := msgs[i].Data()
				if len(data) > s.cfg.MaxMsgBytes {
					out[i].oversized = true
					continue
				}
				out[i].v, out[i].err = s.cfg.Decoder.Decode(msgs[i].Subject(), data)
			}
		}(w)
	}
	wg.Wait()
	return out
}

type outcome struct {
	msg     jetstream.Msg
	session *session // commit of this session decides the ack; nil: ack at once
	err     error    // decided failure (term or nak)
}

// process handles one fetch round: decode and write every message, commit every touched session,
// then acknowledge.
func (s *Server) process(msgs []jetstream.Msg) {
	s.mu.Lock()
	now := s.cfg.Now()
	outs := make([]outcome, len(msgs))
	touched := map[*session]bool{}
	broken := map[*session]error{}
	var rows int64
	decoded := s.decodeAll(msgs)
	for i, m := range msgs {
		outs[i].msg = m
		ss, n, err := s.handle(m, decoded[i], now)
		rows += int64(n)
		if ss != nil {
			outs[i].session = ss
			touched[ss] = true
			if err != nil {
				broken[ss] = err
			}
		} else if err != nil {
			outs[i].err = err
		}
	}
	for ss := range touched {
		if broken[ss] != nil {
			continue
		}
		if err := ss.commit(); err != nil {
			broken[ss] = err
		}
	}
	// A session whose writes failed is dropped from memory: its seen-state may name rows that
	// never reached the disk. It is rebuilt from the files when its messages come again.
	for ss, err := range broken {
		s.cnt.bad(s.log, ReasonWrite, ss.id, err)
		ss.closeFiles()
		if s.sessions[ss.id] == ss {
			delete(s.sessions, ss.id)
		}
	}
	var ended []*session
	for ss := range touched {
		if broken[ss] == nil && ss.meta.Status == StatusEnded && len(ss.files) > 0 {
			ended = append(ended, ss)
		}
	}
	s.mu.Unlock()
	s.cnt.add(func(c *Counters) { c.Messages += int64(len(msgs)); c.Rows += rows })

	for _, o := range outs {
		switch {
		case o.session != nil && broken[o.session] != nil:
			s.retryOrTerm(o.msg)
		case o.err != nil && reasonOf(o.err) == ReasonWrite:
			s.retryOrTerm(o.msg)
		default:
			_ = o.msg.Ack()
		}
	}
	for _, ss := range ended {
		s.log.Info("session ended", "session", ss.id, "reason", ss.meta.EndReason)
	}
}

// retryOrTerm gives a message that could not be written a few more tries, then gives up on it
// (counted under ReasonWrite) so one bad folder cannot stall the stream.
func (s *Server) retryOrTerm(m jetstream.Msg) {
	if md, err := m.Metadata(); err == nil && md.NumDelivered >= 5 {
		_ = m.Term()
		return
	}
	_ = m.NakWithDelay(2 * time.Second)
}

// handle decodes and applies one message. It returns the session it wrote to (whose commit
// decides the ack) and the rows written.
func (s *Server) handle(m jetstream.Msg, d decoded, now time.Time) (*session, int, error) {
	subj := m.Subject()
	if d.oversized {
		s.cnt.bad(s.log, ReasonOversized, subj, fmt.Errorf("%d bytes", len(m.Data())))
		return nil, 0, nil
	}
	v, err := d.v, d.err
	if err != nil {
		if errors.Is(err, ErrNewerMajor) {
			if derr := s.deadLetter(m, err); derr != nil {
				s.cnt.bad(s.log, ReasonWrite, subj, derr)
				return nil, 0, bad(ReasonWrite, derr)
			}
			s.cnt.add(func(c *Counters) { c.DeadLettered++; c.Bad[ReasonNewerMajor]++ })
			return nil, 0, nil
		}
		s.cnt.bad(s.log, reasonOf(err), subj, err)
		return nil, 0, nil
	}
	switch v := v.(type) {
	case *Batch:
		for i := range v.Events {
			if _, ok := s.cfg.Schema.Header(v.Events[i].Table); !ok {
				s.cnt.bad(s.log, ReasonUnknownTable, subj, fmt.Errorf("table %q", v.Events[i].Table))
				return nil, 0, nil
			}
		}
		ss, err := s.openSession(v.Session)
		if err != nil {
			s.cnt.bad(s.log, reasonOf(err), subj, err)
			return nil, 0, err
		}
		dupBefore, capBefore := ss.meta.Duplicates, ss.meta.DroppedByCap
		if ss.meta.Status == StatusEnded && hasNew(ss, v) {
			ss.reopen()
		}
		n, err := ss.writeBatch(v, now)
		if err == nil && s.cfg.Observe != nil {
			s.cfg.Observe(v)
		}
		s.cnt.add(func(c *Counters) {
			c.Duplicates += ss.meta.Duplicates - dupBefore
			c.DroppedByCap += ss.meta.DroppedByCap - capBefore
		})
		return ss, n, err
	case *Life:
		ss, err := s.openSession(v.Session)
		if err != nil {
			s.cnt.bad(s.log, reasonOf(err), subj, err)
			return nil, 0, err
		}
		if v.Type == LifeStart || v.Type == LifeHello {
			if _, known := ss.procs[procKey{v.Host, v.PID}]; v.Type == LifeStart || !known {
				ss.reopen()
			}
		}
		if ss.applyLife(v, now) && ss.meta.Status == StatusActive {
			ss.meta.Status, ss.meta.EndReason, ss.meta.EndNS = StatusEnded, EndAllProcessesEnded, now.UnixNano()
		}
		return ss, 0, nil
	case *Heartbeat:
		if v.Measured {
			s.hosts[v.Host] = HostMeta{OffsetNS: v.OffsetNS, UncertaintyNS: v.UncertaintyNS, Measured: true, LastSeenNS: now.UnixNano()}
		}
		// A heartbeat belongs to a host, not a session: every open session with that host gets it.
		// Their metadata is committed with the next round that touches them.
		for _, ss := range s.sessions {
			if _, ok := ss.meta.Hosts[v.Host]; ok && ss.meta.Status == StatusActive {
				ss.applyHeartbeat(v, now)
			}
		}
		return nil, 0, nil
	}
	s.cnt.bad(s.log, ReasonDecode, subj, fmt.Errorf("decoder returned %T", v))
	return nil, 0, nil
}

// hasNew reports whether b holds an event not yet written: only new data reopens an ended session
// (a redelivered duplicate must not).
func hasNew(ss *session, b *Batch) bool {
	p := ss.procs[procKey{b.Host, b.PID}]
	if p == nil {
		return len(b.Events) > 0
	}
	for i := range b.Events {
		if !p.seen.has(b.Events[i].Seq) {
			return true
		}
	}
	return false
}

// housekeep ends idle sessions, evicts ended ones and removes sessions past retention.
func (s *Server) housekeep(lastRetention *time.Time) {
	now := s.cfg.Now()
	s.mu.Lock()
	for id, ss := range s.sessions {
		idle := now.Sub(ss.last) >= s.cfg.SessionIdle
		switch {
		case ss.meta.Status == StatusEnded:
			if err := ss.end(ss.meta.EndReason, now); err != nil {
				s.cnt.bad(s.log, ReasonWrite, id, err)
			}
			delete(s.sessions, id)
		case idle:
			if err := ss.end(EndIdle, now); err != nil {
				s.cnt.bad(s.log, ReasonWrite, id, err)
			}
			s.log.Info("session ended", "session", id, "reason", EndIdle)
			delete(s.sessions, id)
		}
	}
	s.mu.Unlock()
	if s.cfg.Retention > 0 && now.Sub(*lastRetention) >= time.Minute {
		*lastRetention = now
		s.applyRetention(now)
	}
}

func (s *Server) applyRetention(now time.Time) {
	ents, err := os.ReadDir(sessionsDir(s.cfg.DataDir))
	if err != nil {
		return
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		s.mu.Lock()
		open := s.sessions[e.Name()] != nil
		s.mu.Unlock()
		if open {
			continue
		}
		dir := SessionDir(s.cfg.DataDir, e.Name())
		m, err := ReadMetadata(dir)
		if err != nil || m.Status != StatusEnded || m.EndNS == 0 {
			continue
		}
		if now.Sub(time.Unix(0, m.EndNS)) > s.cfg.Retention {
			if err := os.RemoveAll(dir); err != nil {
				s.log.Warn("retention: remove failed", "session", e.Name(), "err", err)
				continue
			}
			s.log.Info("retention: session removed", "session", e.Name())
		}
	}
}

// deadLetter keeps a message of an unknown newer version in <data>/deadletter/ with a note, so a
// newer hub can read it later.
func (s *Server) deadLetter(m jetstream.Msg, cause error) error {
	dir := filepath.Join(s.cfg.DataDir, "deadletter")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("dead letter: %w", err)
	}
	var seq uint64
	if md, err := m.Metadata(); err == nil {
		seq = md.Sequence.Stream
	}
	base := filepath.Join(dir, fmt.Sprintf("%d-%d", seq, s.cfg.Now().UnixNano()))
	if err := writeFileAtomic(base+".bin", m.Data()); err != nil {
		return fmt.Errorf("dead letter: %w", err)
	}
	note, _ := json.MarshalIndent(map[string]any{
		"subject": m.Subject(), "headers": m.Headers(), "stream_seq": seq,
		"reason": ReasonNewerMajor, "error": cause.Error(), "received_ns": s.cfg.Now().UnixNano(),
	}, "", "  ")
	if err := writeFileAtomic(base+".json", append(note, '\n')); err != nil {
		return fmt.Errorf("dead letter: %w", err)
	}
	return nil
}
