package hub

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// startEmbedded runs the embedded nats-server with JetStream on cfg.Listen, its store under
// <data>/jetstream, and sets s.ns and s.url.
func (s *Server) startEmbedded() error {
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
	return nil
}
