package hub

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// setupStream creates (or adopts) the stream with the hub's limits and the durable consumer the
// hub reads with.
func (s *Server) setupStream(ctx context.Context) error {
	js, err := jetstream.New(s.nc)
	if err != nil {
		return fmt.Errorf("hub: jetstream: %w", err)
	}
	s.js = js
	cfg := streamConfig()
	cfg.MaxBytes, cfg.MaxAge = s.cfg.StreamMaxBytes, s.cfg.StreamMaxAge
	cfg.Replicas = max(s.cfg.StreamReplicas, 1)
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
	if info := st.CachedInfo(); info != nil {
		s.log.Info("stream", "stream", cfg.Name, "replicas", info.Config.Replicas, "max_bytes", info.Config.MaxBytes,
			"max_age", info.Config.MaxAge)
		if info.Config.Replicas < cfg.Replicas {
			s.log.Warn("stream has fewer replicas than asked for", "stream", cfg.Name, "replicas", info.Config.Replicas, "want", cfg.Replicas)
		}
	}
	if s.cfg.Shared {
		return nil // per-session consumers (cluster.go)
	}
	return s.openConsumer(ctx, st)
}
