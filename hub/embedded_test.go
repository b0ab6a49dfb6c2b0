package hub

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
)

// TestBusyPortFailsFastNamingAddress: a hub whose NATS address is taken fails at once with an
// error naming the address (before: 30 s of silence, then "did not become ready").
func TestBusyPortFailsFastNamingAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	s, err := New(Config{DataDir: t.TempDir(), Listen: addr, Schema: testSchema{}, Decoder: jsonDecoder{}})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Start(context.Background())
	if err == nil {
		s.Close()
		t.Fatal("started on a busy address")
	}
	if !strings.Contains(err.Error(), addr) || strings.Contains(err.Error(), "not ready") {
		t.Errorf("error does not name the busy address as the cause: %v", err)
	}
}

// TestStartHonoursContext: a cancelled context stops a start that waits for the server.
func TestStartHonoursContext(t *testing.T) {
	s, err := New(Config{DataDir: t.TempDir(), Listen: "127.0.0.1:-1", Schema: testSchema{}, Decoder: jsonDecoder{}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = s.Start(ctx)
	if err == nil {
		s.Close()
		t.Fatal("started with a cancelled context")
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("want context.Canceled, got %v", err)
	}
}
