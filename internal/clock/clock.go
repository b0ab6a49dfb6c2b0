// Package clock measures how far a host's wall clock is from the hub's, so events from many hosts
// can be put on one timeline. The exchange is proto's: the agent sends a ClockRequest with its
// send time t1 on proto.ClockSubject (core NATS request/reply); the hub answers with a ClockReply
// echoing t1 and giving its receive and reply times t2, t3 (Serve). The agent notes its receive
// time t4, asks a few times, keeps the sample with the shortest round trip and reports
// offset = ((t2 − t1) + (t3 − t4)) / 2 with uncertainty = round trip / 2, where round trip =
// (t4 − t1) − (t3 − t2) (Measure, Tracker). All times are Unix nanoseconds.
package clock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	gproto "google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/internal/natsclient"
	"github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

// legacyReply is the JSON answer of schema 1.0 hubs to an empty request. A hub still sends it to
// an agent of that version (empty request body) so a rolling upgrade keeps clock offsets; to be
// removed one minor version after 1.1.
type legacyReply struct {
	ServerNS int64 `json:"server_ns"`
}

// Serve answers ClockRequests on proto.ClockSubject with now() until ctx is cancelled. now is the
// hub's clock (time.Now when nil); tests inject a skewed one. A request whose body is not a
// ClockRequest gets no answer (the asker times out); an empty body is an agent of schema 1.0 and
// gets its JSON reply. The subscription ends when ctx ends.
func Serve(ctx context.Context, nc *nats.Conn, now func() time.Time) (*nats.Subscription, error) {
	if now == nil {
		now = time.Now
	}
	log := slog.With("component", "clock")
	sub, err := nc.Subscribe(proto.ClockSubject, func(m *nats.Msg) {
		t2 := now().UnixNano()
		if m.Reply == "" {
			return
		}
		var b []byte
		if len(m.Data) == 0 {
			b, _ = json.Marshal(legacyReply{ServerNS: t2})
		} else {
			var req pmpb.ClockRequest
			if err := gproto.Unmarshal(m.Data, &req); err != nil {
				log.Debug("clock request not decoded", "err", err)
				return
			}
			b, _ = gproto.Marshal(&pmpb.ClockReply{T1Ns: req.GetT1Ns(), T2Ns: t2, T3Ns: now().UnixNano()})
		}
		if err := m.Respond(b); err != nil {
			log.Warn("clock reply failed", "err", err)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", proto.ClockSubject, err)
	}
	go func() {
		<-ctx.Done()
		_ = sub.Unsubscribe()
	}()
	return sub, nil
}

// Offset is one measurement of the hub's clock relative to this host's: hub time ≈ local time +
// Offset, give or take Uncertainty.
type Offset struct {
	Offset      time.Duration `json:"offset_ns"`
	Uncertainty time.Duration `json:"uncertainty_ns"`
	RTT         time.Duration `json:"rtt_ns"`
	At          time.Time     `json:"at"`      // local time of the kept sample
	Samples     int           `json:"samples"` // answered requests it was chosen from
}

// ErrNoReply means no request of a measurement was answered (no hub serving the clock subject).
var ErrNoReply = errors.New("no clock reply")

// Measure asks the hub samples times (at least 1) and keeps the sample with the shortest round
// trip, the one least distorted by queueing. now is the local clock (time.Now when nil); timeout
// bounds each request. It fails with ErrNoReply (wrapped) when no request was answered, or with
// the last request's error.
func Measure(ctx context.Context, nc *nats.Conn, samples int, timeout time.Duration, now func() time.Time) (Offset, error) {
	return MeasureFor(ctx, nc, "", samples, timeout, now)
}

// MeasureFor is Measure with the asking host's name in every ClockRequest (host), so the hub can
// tell whose offset it answers; "" leaves it out.
func MeasureFor(ctx context.Context, nc *nats.Conn, host string, samples int, timeout time.Duration, now func() time.Time) (Offset, error) {
	if now == nil {
		now = time.Now
	}
	if samples < 1 {
		samples = 1
	}
	var best Offset
	var lastErr error
	for i := 0; i < samples; i++ {
		if err := ctx.Err(); err != nil {
			return Offset{}, err
		}
		rctx, cancel := context.WithTimeout(ctx, timeout)
		t1 := now()
		req, _ := gproto.Marshal(&pmpb.ClockRequest{Host: host, T1Ns: t1.UnixNano()})
		m, err := nc.RequestWithContext(rctx, proto.ClockSubject, req)
		t4 := now()
		cancel()
		if err != nil && !nc.IsConnected() {
			// Why there is no connection, not the client's "outbound buffer limit exceeded".
			err = natsclient.NotConnected(nc.LastError())
		}
		if err != nil {
			lastErr = err
			continue
		}
		var r pmpb.ClockReply
		if err := gproto.Unmarshal(m.Data, &r); err != nil || r.GetT2Ns() == 0 || r.GetT1Ns() != t1.UnixNano() {
			lastErr = fmt.Errorf("bad clock reply %.40q: %v", m.Data, err)
			continue
		}
		// Hub time spent between receiving and replying is not part of the round trip.
		rtt := t4.Sub(t1) - time.Duration(r.GetT3Ns()-r.GetT2Ns())
		if rtt < 0 || t4.Before(t1) { // a clock stepped mid-request: the sample means nothing
			continue
		}
		off := (r.GetT2Ns() - t1.UnixNano() + r.GetT3Ns() - t4.UnixNano()) / 2
		o := Offset{
			Offset:      time.Duration(off),
			Uncertainty: rtt/2 + rtt%2,
			RTT:         rtt,
			At:          t1.Add(t4.Sub(t1) / 2),
		}
		if best.Samples == 0 || o.RTT < best.RTT {
			o.Samples = best.Samples
			best = o
		}
		best.Samples++
	}
	if best.Samples == 0 {
		if lastErr == nil {
			lastErr = ErrNoReply
		}
		return Offset{}, fmt.Errorf("measure clock offset on %s: %w", proto.ClockSubject, lastErr)
	}
	return best, nil
}

// Tracker re-measures the offset every Interval and keeps the latest good one for heartbeats.
type Tracker struct {
	NC       *nats.Conn
	Interval time.Duration    // default 30 s
	Samples  int              // default 5
	Timeout  time.Duration    // per request, default 2 s
	Now      func() time.Time // local clock, default time.Now
	Host     string           // this host's name, sent in every ClockRequest

	mu     sync.Mutex
	latest Offset
	ok     bool
}

// Run measures at once and then every Interval until ctx ends. Failures are logged once per
// change of state and keep the previous value (a hub restart must not blank the offset).
func (t *Tracker) Run(ctx context.Context) {
	iv := t.Interval
	if iv <= 0 {
		iv = 30 * time.Second
	}
	log := slog.With("component", "clock")
	failing := false
	tick := time.NewTicker(iv)
	defer tick.Stop()
	for {
		o, err := t.MeasureNow(ctx)
		switch {
		case err != nil && ctx.Err() != nil:
			return
		case err != nil && !failing:
			log.Warn("clock offset not measured", "err", err)
			failing = true
		case err == nil:
			if failing {
				log.Info("clock offset measured again")
			}
			failing = false
			log.Debug("clock offset", "offset", o.Offset, "uncertainty", o.Uncertainty)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// MeasureNow takes one measurement with the tracker's settings and stores it if it succeeded.
func (t *Tracker) MeasureNow(ctx context.Context) (Offset, error) {
	n, to := t.Samples, t.Timeout
	if n <= 0 {
		n = 5
	}
	if to <= 0 {
		to = 2 * time.Second
	}
	o, err := MeasureFor(ctx, t.NC, t.Host, n, to, t.Now)
	if err != nil {
		return Offset{}, err
	}
	t.mu.Lock()
	t.latest, t.ok = o, true
	t.mu.Unlock()
	return o, nil
}

// Latest returns the last good measurement; ok is false until one succeeded.
func (t *Tracker) Latest() (o Offset, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.latest, t.ok
}

// HeartbeatFields returns what the agent's heartbeat on pm.v1.hb.<host> carries about the clock:
// the latest offset and its uncertainty in nanoseconds, and whether one was measured at all (an
// unmeasured host must not be mistaken for a host with a perfect clock).
func (t *Tracker) HeartbeatFields() (offsetNS, uncertaintyNS int64, measured bool) {
	o, ok := t.Latest()
	if !ok {
		return 0, 0, false
	}
	return int64(o.Offset), int64(o.Uncertainty), true
}
