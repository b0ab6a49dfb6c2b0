package hub

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// streamSetupFor bounds how long setupStream keeps looking for, or creating, the stream: on a
// cluster that is still electing its JetStream leader a create can time out, or fail, and still
// happen.
const streamSetupFor = 45 * time.Second

// setupStream creates the stream with the hub's limits when it is missing, or adopts it as it is,
// and opens the durable consumer the hub reads with (single mode).
//
// On a NATS cluster (--nats) an existing stream is never changed: other hubs and the operator
// share it, so the hub's flags only apply when this hub creates it; each setting that differs
// from the flags is logged as a warning. With the embedded server the hub is the stream's only
// user: its limits follow the flags (each change logged).
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
	st, created, err := s.ensureStream(ctx, cfg)
	if err != nil {
		return err
	}
	info := st.CachedInfo()
	if info == nil {
		if info, err = st.Info(ctx); err != nil {
			return fmt.Errorf("hub: stream %s: %w", cfg.Name, err)
		}
	}
	if missing := missingSubjects(info.Config.Subjects, cfg.Subjects); len(missing) > 0 {
		// The contract's subjects are not a setting: a stream made by an older version gets the
		// new ones, or their messages would have nowhere to go.
		upd := info.Config
		upd.Subjects = append(append([]string(nil), upd.Subjects...), missing...)
		if st, err = js.UpdateStream(ctx, upd); err != nil {
			return fmt.Errorf("hub: add subjects %v to stream %s: %w", missing, cfg.Name, err)
		}
		info = st.CachedInfo()
		s.log.Info("stream subjects added", "stream", cfg.Name, "subjects", missing)
	}
	diffs := streamDifferences(info.Config, cfg)
	switch {
	case created:
		s.log.Info("stream created", "stream", cfg.Name, "replicas", info.Config.Replicas,
			"max_bytes", info.Config.MaxBytes, "max_age", info.Config.MaxAge)
	case len(diffs) > 0 && s.cfg.NATSURL == "":
		upd := info.Config
		upd.MaxBytes, upd.MaxAge, upd.MaxMsgSize = cfg.MaxBytes, cfg.MaxAge, cfg.MaxMsgSize
		if st, err = js.UpdateStream(ctx, upd); err != nil {
			return fmt.Errorf("hub: update stream %s: %w", cfg.Name, err)
		}
		for _, d := range diffs {
			s.log.Info("stream setting changed to the flag's", "stream", cfg.Name, "setting", d.Setting, "was", d.Stream, "now", d.Flag)
		}
	default:
		s.log.Info("stream adopted as it is", "stream", cfg.Name, "replicas", info.Config.Replicas,
			"max_bytes", info.Config.MaxBytes, "max_age", info.Config.MaxAge)
		for _, d := range diffs {
			s.log.Warn("stream setting differs from the flag; the stream's is kept (change it with `nats stream edit`)",
				"stream", cfg.Name, "setting", d.Setting, "stream_value", d.Stream, "flag", d.Flag, "flag_name", d.FlagName)
		}
	}
	if s.cfg.Shared {
		return s.checkNoSingleHub(ctx, st) // per-session consumers (cluster.go)
	}
	if err := s.checkNoSharedHubs(ctx); err != nil {
		return err
	}
	return s.openConsumer(ctx, st)
}

// ensureStream returns the stream named cfg.Name, creating it with cfg when it does not exist
// (created true). A create that fails because another client created the stream meanwhile, or
// that timed out or failed on a cluster still forming (the create may have happened anyway), is
// followed by another look, for up to streamSetupFor; then the last error is returned, wrapped.
func (s *Server) ensureStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, bool, error) {
	wait := 250 * time.Millisecond
	deadline := time.Now().Add(streamSetupFor)
	var last error
	for attempt := 1; ; attempt++ {
		st, err := s.js.Stream(ctx, cfg.Name)
		if err == nil {
			if last != nil {
				s.log.Info("stream found (created by another hub or agent, or by a create that was not confirmed)",
					"stream", cfg.Name, "last_err", last)
			}
			return st, false, nil
		}
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			st, err = s.js.CreateStream(ctx, cfg)
			if err == nil {
				return st, true, nil
			}
			if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) && time.Now().Before(deadline) {
				last = err
				continue // another hub or agent created it meanwhile: look again at once
			}
		}
		last = err
		if ctx.Err() != nil || time.Now().After(deadline) {
			return nil, false, fmt.Errorf("hub: create or find stream %s (%d attempts): %w", cfg.Name, attempt, last)
		}
		s.log.Info("stream not ready; looking again", "stream", cfg.Name, "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// streamDifference is one setting in which an existing stream differs from the hub's flags.
type streamDifference struct {
	Setting  string // "replicas", "max_bytes", "max_age", "max_msg_size"
	FlagName string // the flag that asks for it
	Stream   any    // the stream's value
	Flag     any    // the value the flags ask for
}

// streamDifferences lists the settings the hub's flags set (want) in which have differs.
func streamDifferences(have, want jetstream.StreamConfig) []streamDifference {
	var out []streamDifference
	if have.Replicas != want.Replicas {
		out = append(out, streamDifference{"replicas", "--stream-replicas", have.Replicas, want.Replicas})
	}
	if have.MaxBytes != want.MaxBytes {
		out = append(out, streamDifference{"max_bytes", "--stream-max-bytes", have.MaxBytes, want.MaxBytes})
	}
	if have.MaxAge != want.MaxAge {
		out = append(out, streamDifference{"max_age", "--stream-max-age", have.MaxAge, want.MaxAge})
	}
	if have.MaxMsgSize != want.MaxMsgSize {
		out = append(out, streamDifference{"max_msg_size", "Config.MaxMsgBytes", have.MaxMsgSize, want.MaxMsgSize})
	}
	return out
}

// missingSubjects returns the subjects of want that have lacks, in want's order.
func missingSubjects(have, want []string) []string {
	in := map[string]bool{}
	for _, h := range have {
		in[h] = true
	}
	var out []string
	for _, w := range want {
		if !in[w] {
			out = append(out, w)
		}
	}
	return out
}
