package hub

import (
	"context"
	"testing"
	"time"
)

// runHub starts a hub with cfg on a loopback random port (SessionIdle an hour unless set; a nil
// Schema and Decoder mean the wire contract of proto/) and stops it when t ends or stop is called.
func runHub(t *testing.T, cfg Config) (s *Server, stop func()) {
	t.Helper()
	cfg.Listen = "127.0.0.1:-1"
	if cfg.SessionIdle == 0 {
		cfg.SessionIdle = time.Hour
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := s.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
			s.Close()
		}
	}
	t.Cleanup(stop)
	return s, stop
}

// startHubCfg is runHub with the tests' JSON schema and decoder.
func startHubCfg(t *testing.T, cfg Config) (*Server, func()) {
	t.Helper()
	cfg.Schema, cfg.Decoder = testSchema{}, jsonDecoder{}
	return runHub(t, cfg)
}

// startHub is startHubCfg on a data folder with the defaults.
func startHub(t *testing.T, data string) *Server {
	t.Helper()
	s, _ := startHubCfg(t, Config{DataDir: data})
	return s
}
