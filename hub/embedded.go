package hub

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// embeddedReady bounds how long the embedded server may take to accept clients.
const embeddedReady = 30 * time.Second

// startEmbedded runs the embedded nats-server with JetStream on cfg.Listen, its store under
// <data>/jetstream and cfg.Server's security, and sets s.ns and s.url. It returns the options of
// the hub's own in-process connection. It fails as soon as the server reports a fatal error
// (for example the address is in use), naming the address, or when ctx ends.
func (s *Server) startEmbedded(ctx context.Context) ([]nats.Option, error) {
	host, port, err := splitHostPort(s.cfg.Listen)
	if err != nil {
		return nil, err
	}
	if port == 0 {
		port = server.RANDOM_PORT // nats-server reads 0 as its default port 4222
	}
	opts := &server.Options{
		ServerName: "pmhub", Host: host, Port: port, JetStream: true,
		StoreDir: filepath.Join(s.cfg.DataDir, "jetstream"), NoSigs: true, NoLog: true,
		MaxPayload: int32(s.cfg.MaxMsgBytes), JetStreamMaxStore: s.cfg.StreamMaxBytes * 2,
	}
	own, err := s.cfg.Server.apply(opts)
	if err != nil {
		return nil, fmt.Errorf("hub: %w", err)
	}
	for _, w := range ExposureWarnings("embedded NATS", host, s.cfg.Server.HasAuth(), s.cfg.Server.HasTLS()) {
		s.log.Warn(w, "listen", s.cfg.Listen)
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("hub: embedded nats-server: %w", err)
	}
	fatal := make(chan string, 1)
	ns.SetLoggerV2(&natsLogger{log: slog.With("component", "hub-nats"), fatal: fatal}, false, false, false)
	started := make(chan struct{})
	go func() { ns.Start(); close(started) }()
	deadline := time.Now().Add(embeddedReady)
	for {
		var err error
		select {
		case msg := <-fatal:
			err = fmt.Errorf("hub: embedded nats-server on %s: %s", s.cfg.Listen, msg)
		case <-ctx.Done():
			err = fmt.Errorf("hub: embedded nats-server on %s: %w", s.cfg.Listen, ctx.Err())
		default:
			if time.Now().After(deadline) {
				err = fmt.Errorf("hub: embedded nats-server on %s not ready after %s", s.cfg.Listen, embeddedReady)
			}
		}
		if err != nil {
			<-started // Start returns once its listeners run; a shutdown before that races it
			ns.Shutdown()
			ns.WaitForShutdown()
			return nil, err
		}
		if ns.ReadyForConnections(100 * time.Millisecond) {
			break
		}
	}
	s.ns = ns
	s.url = ns.ClientURL()
	// The hub's own connection is in-process: no TLS to verify, authenticated like any client.
	cl := []nats.Option{nats.InProcessServer(ns)}
	switch {
	case s.cfg.Server.Token != "":
		cl = append(cl, nats.Token(s.cfg.Server.Token))
	case own != nil:
		pub, _ := own.PublicKey()
		cl = append(cl, nats.Nkey(pub, own.Sign))
	}
	return cl, nil
}

// natsLogger passes the embedded server's log lines to slog (errors and warnings at debug: a
// client can cause them) and its first fatal error to fatal.
type natsLogger struct {
	log   *slog.Logger
	fatal chan string
}

func (l *natsLogger) Noticef(format string, v ...any) {}
func (l *natsLogger) Debugf(format string, v ...any)  {}
func (l *natsLogger) Tracef(format string, v ...any)  {}
func (l *natsLogger) Warnf(format string, v ...any)   { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Errorf(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.log.Error(msg)
	select {
	case l.fatal <- msg:
	default:
	}
}
