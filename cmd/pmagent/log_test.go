package main

import (
	"context"
	"log/slog"
	"testing"
)

// TestLogLevelIsTheDefaultLoggers: --log-level applies to slog's default logger too, which parts
// without a logger of their own (internal/clock) log through.
func TestLogLevelIsTheDefaultLoggers(t *testing.T) {
	old := slog.Default()
	t.Cleanup(func() { slog.SetDefault(old) })
	ctx := context.Background()
	for _, c := range []struct {
		level string
		on    slog.Level
		off   slog.Level
	}{{"error", slog.LevelError, slog.LevelWarn}, {"debug", slog.LevelDebug, slog.LevelDebug - 1}} {
		if _, err := newLogger(c.level); err != nil {
			t.Fatal(err)
		}
		if !slog.Default().Enabled(ctx, c.on) || slog.Default().Enabled(ctx, c.off) {
			t.Errorf("--log-level %s: slog's default logger logs %v: %v, %v: %v", c.level,
				c.on, slog.Default().Enabled(ctx, c.on), c.off, slog.Default().Enabled(ctx, c.off))
		}
	}
}
