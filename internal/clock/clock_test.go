package clock

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	gproto "google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/internal/testkit"
	"github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

func startNATS(t *testing.T) *nats.Conn {
	t.Helper()
	return testkit.Connect(t, testkit.StartNATS(t).ClientURL())
}

func TestMeasureSkewedHub(t *testing.T) {
	for _, skew := range []time.Duration{0, 3*time.Second + 700*time.Millisecond, -42 * time.Minute} {
		t.Run(skew.String(), func(t *testing.T) {
			hub := startNATS(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if _, err := Serve(ctx, hub, func() time.Time { return time.Now().Add(skew) }); err != nil {
				t.Fatal(err)
			}
			if err := hub.Flush(); err != nil {
				t.Fatal(err)
			}
			agent, err := nats.Connect(hub.ConnectedUrl())
			if err != nil {
				t.Fatal(err)
			}
			defer agent.Close()
			o, err := Measure(ctx, agent, 5, 5*time.Second, nil)
			if err != nil {
				t.Fatal(err)
			}
			if o.Samples != 5 {
				t.Errorf("samples: got %d, want 5", o.Samples)
			}
			if o.Uncertainty <= 0 || o.Uncertainty < o.RTT/2 {
				t.Errorf("uncertainty %v must cover half the round trip %v", o.Uncertainty, o.RTT)
			}
			diff := o.Offset - skew
			if diff < 0 {
				diff = -diff
			}
			if diff > o.Uncertainty {
				t.Errorf("offset: got %v ± %v, want %v", o.Offset, o.Uncertainty, skew)
			}
		})
	}
}

func TestTrackerKeepsValueAndReportsNoHub(t *testing.T) {
	nc := startNATS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tr := &Tracker{NC: nc, Samples: 2, Timeout: 200 * time.Millisecond}
	if _, ok := tr.Latest(); ok {
		t.Fatal("latest must be unset before a measurement")
	}
	if _, _, measured := tr.HeartbeatFields(); measured {
		t.Fatal("heartbeat must say unmeasured before a measurement")
	}
	// Nobody serves the subject yet: a clear error, nothing stored.
	if _, err := tr.MeasureNow(ctx); !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("without hub: got %v, want no responders", err)
	}
	if _, ok := tr.Latest(); ok {
		t.Fatal("a failed measurement must not be stored")
	}
	sctx, stop := context.WithCancel(ctx)
	skew := -5 * time.Second
	sub, err := Serve(sctx, nc, func() time.Time { return time.Now().Add(skew) })
	if err != nil {
		t.Fatal(err)
	}
	go tr.Run(ctx)
	// Poll until the tracker's first successful round lands.
	deadline := time.Now().Add(10 * time.Second)
	var o Offset
	for ok := false; !ok; o, ok = tr.Latest() {
		if time.Now().After(deadline) {
			t.Fatal("tracker never measured")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if d := (o.Offset - skew).Abs(); d > o.Uncertainty {
		t.Errorf("tracker offset: got %v ± %v, want %v", o.Offset, o.Uncertainty, skew)
	}
	if off, unc, measured := tr.HeartbeatFields(); !measured || off != int64(o.Offset) || unc != int64(o.Uncertainty) {
		t.Errorf("heartbeat fields: got %d %d %v, want %d %d true", off, unc, measured, o.Offset, o.Uncertainty)
	}
	// Hub gone: the last good value stays.
	stop()
	for sub.IsValid() {
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := tr.MeasureNow(ctx); err == nil {
		t.Fatal("measurement without a hub must fail")
	}
	if got, ok := tr.Latest(); !ok || got != o {
		t.Errorf("latest after failure: got %v %v, want %v", got, ok, o)
	}
}

// TestExchangeIsProtoMessages checks the wire of the exchange: a ClockRequest on proto's
// ClockSubject is answered with a ClockReply echoing t1, and an empty request (an agent of schema
// 1.0) still gets that version's JSON reply.
func TestExchangeIsProtoMessages(t *testing.T) {
	nc := startNATS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hubNow := time.Unix(0, 1_800_000_000_000_000_000)
	if _, err := Serve(ctx, nc, func() time.Time { return hubNow }); err != nil {
		t.Fatal(err)
	}
	req, _ := gproto.Marshal(&pmpb.ClockRequest{Host: "gpu-1", T1Ns: 42})
	m, err := nc.Request(proto.ClockSubject, req, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var r pmpb.ClockReply
	if err := gproto.Unmarshal(m.Data, &r); err != nil {
		t.Fatal(err)
	}
	if r.GetT1Ns() != 42 || r.GetT2Ns() != hubNow.UnixNano() || r.GetT3Ns() != hubNow.UnixNano() {
		t.Errorf("reply %v: want t1 echoed and hub times", &r)
	}
	m, err = nc.Request(proto.ClockSubject, nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var legacy struct {
		ServerNS int64 `json:"server_ns"`
	}
	if err := json.Unmarshal(m.Data, &legacy); err != nil || legacy.ServerNS != hubNow.UnixNano() {
		t.Errorf("legacy reply %q: %v", m.Data, err)
	}
}
