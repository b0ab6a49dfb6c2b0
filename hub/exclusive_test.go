package hub

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/profilemate/profilemate/internal/testkit"
)

// startErr starts a hub with cfg (the tests' schema and decoder) and returns Start's error; a hub
// that starts is stopped when t ends.
func startErr(t *testing.T, cfg Config) error {
	t.Helper()
	cfg.Schema, cfg.Decoder, cfg.Listen = testSchema{}, jsonDecoder{}, "127.0.0.1:-1"
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		return err
	}
	t.Cleanup(s.Close)
	return nil
}

// TestHubIDRefusedWhileLive: a second hub with a live hub's id is refused at start with an error
// naming --hub-id, and the live hub's entry is left as it is. A hub that died leaves its id held
// for others, but the same hub restarted on its own data folder takes it back; a hub that stopped
// frees it at once.
func TestHubIDRefusedWhileLive(t *testing.T) {
	ns := testkit.StartNATS(t)
	nc := testkit.Connect(t, ns.ClientURL())
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	cfg := func(data string) Config {
		return Config{DataDir: data, NATSURL: ns.ClientURL(), Shared: true, HubID: "x", LeaseTTL: time.Minute}
	}
	dataA, dataB := t.TempDir(), t.TempDir()
	a, stopA := startHubCfg(t, cfg(dataA))
	err := startErr(t, cfg(dataB))
	if !errors.Is(err, ErrHubIDInUse) || !strings.Contains(err.Error(), "--hub-id") || !strings.Contains(err.Error(), dataA) {
		t.Fatalf("second hub with id x: %v, want ErrHubIDInUse naming --hub-id and the live hub's data folder", err)
	}
	hubs, err := js.KeyValue(ctx, HubBucket)
	if err != nil {
		t.Fatal(err)
	}
	if e, err := hubs.Get(ctx, "x"); err != nil || !strings.Contains(string(e.Value()), dataA) {
		t.Fatalf("the live hub's entry after the refusal: %v %s", err, e.Value())
	}
	// a dies without a word: its entry stays (until the TTL, a minute here).
	a.nc.Close()
	stopA()
	if _, err := hubs.Get(ctx, "x"); err != nil {
		t.Fatalf("a dead hub's entry: %v", err)
	}
	if err := startErr(t, cfg(dataB)); !errors.Is(err, ErrHubIDInUse) {
		t.Fatalf("id x of a hub that just died, from another data folder: %v, want ErrHubIDInUse", err)
	}
	// The same hub restarted on its own data folder.
	_, stopA = startHubCfg(t, cfg(dataA))
	stopA()
	// Stopped cleanly: the id is free.
	if err := startErr(t, cfg(dataB)); err != nil {
		t.Fatalf("id x after its hub stopped: %v", err)
	}
}

// TestModesRefuseEachOther: a single-mode hub on a stream that live shared hubs use is refused
// with an error naming --mode shared; a shared hub on a stream with the single-mode consumer is
// refused with an error saying how to remove it; each starts once the other is gone.
func TestModesRefuseEachOther(t *testing.T) {
	ns := testkit.StartNATS(t)
	nc := testkit.Connect(t, ns.ClientURL())
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	shared := Config{DataDir: t.TempDir(), NATSURL: ns.ClientURL(), Shared: true, HubID: "a", LeaseTTL: time.Second}
	single := Config{DataDir: t.TempDir(), NATSURL: ns.ClientURL()}
	_, stopShared := startHubCfg(t, shared)
	err := startErr(t, single)
	if !errors.Is(err, ErrModeConflict) || !strings.Contains(err.Error(), "--mode shared") || !strings.Contains(err.Error(), "[a]") {
		t.Fatalf("single-mode hub beside shared hub a: %v, want ErrModeConflict naming --mode shared and hub a", err)
	}
	st, err := js.Stream(ctx, streamConfig().Name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Consumer(ctx, DefaultConsumer); !errors.Is(err, jetstream.ErrConsumerNotFound) {
		t.Fatalf("the refused single-mode hub left its consumer: %v", err)
	}
	stopShared()
	// The shared hub stopped (its entry deleted): single mode may start, and then a shared hub
	// may not.
	_, stopSingle := startHubCfg(t, single)
	err = startErr(t, Config{DataDir: t.TempDir(), NATSURL: ns.ClientURL(), Shared: true, HubID: "b", LeaseTTL: time.Second})
	if !errors.Is(err, ErrModeConflict) || !strings.Contains(err.Error(), "nats consumer rm PROFILEMATE pmhub") {
		t.Fatalf("shared hub beside a single-mode hub: %v, want ErrModeConflict saying how to remove the consumer", err)
	}
	hubs, _ := js.KeyValue(ctx, HubBucket)
	if _, err := hubs.Get(ctx, "b"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("the refused shared hub registered: %v", err)
	}
	stopSingle()
	if err := st.DeleteConsumer(ctx, DefaultConsumer); err != nil {
		t.Fatal(err)
	}
	if err := startErr(t, Config{DataDir: t.TempDir(), NATSURL: ns.ClientURL(), Shared: true, HubID: "b", LeaseTTL: time.Second}); err != nil {
		t.Fatalf("shared hub after the consumer was removed: %v", err)
	}
}
