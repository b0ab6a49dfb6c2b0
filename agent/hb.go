package agent

import (
	"context"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/internal/clock"
	pmproto "github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

// DefaultHeartbeat is how often the agent publishes its heartbeat.
const DefaultHeartbeat = 5 * time.Second

// startNATSSide starts what the agent does on NATS besides publishing events: the clock offset
// tracker, the heartbeat and the control subscription.
func (a *Agent) startNATSSide(ctx context.Context) {
	nc := a.pub.nc
	if nc == nil {
		return
	}
	a.clock = &clock.Tracker{NC: nc, Host: a.cfg.Host}
	if skew := a.cfg.ClockSkew; skew != 0 {
		a.clock.Now = func() time.Time { return time.Now().Add(skew) }
	}
	go a.clock.Run(ctx)
	if !a.cfg.NATS.CoreNATS {
		go a.refreshInstances(ctx) // instance.go
	}
	every := a.cfg.Heartbeat
	if every == 0 {
		every = DefaultHeartbeat
	}
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				a.heartbeat(nc)
			}
		}
	}()
	sub, err := nc.Subscribe(pmproto.ControlSubject(a.cfg.Host), func(m *nats.Msg) { a.onControl(m.Data) })
	if err != nil {
		a.log.Warn("control subscription", "err", err)
		return
	}
	go func() {
		<-ctx.Done()
		_ = sub.Unsubscribe()
	}()
}

// heartbeat publishes the agent's state; a heartbeat that cannot be sent is skipped, not queued.
func (a *Agent) heartbeat(nc *nats.Conn) {
	if !nc.IsConnected() {
		return
	}
	st := a.Status()
	hb := &pmpb.Heartbeat{Host: a.cfg.Host, AgentVersion: a.cfg.Version, TsNs: time.Now().UnixNano(),
		SpoolBytes: uint64(st.Spool.Bytes), QueueMsgs: uint64(st.Spool.MemBatches), AgentDropped: uint64(st.Dropped)}
	if off, unc, ok := a.clock.HeartbeatFields(); ok {
		hb.ClockOffsetNs, hb.ClockUncertaintyNs = off, unc
	}
	for _, p := range st.Processes {
		hb.ShimDropped += p.Dropped
		if p.Connected {
			hb.Processes++
		}
	}
	for _, s := range st.Sessions {
		if !s.Ended {
			hb.Sessions = append(hb.Sessions, s.ID)
		}
	}
	data, err := proto.Marshal(pmproto.Stamp(hb))
	if err != nil {
		return
	}
	_ = nc.Publish(pmproto.HeartbeatSubject(a.cfg.Host), data)
}

// onControl forwards a Control message from the hub to the shims it concerns.
func (a *Agent) onControl(data []byte) {
	c, err := pmproto.DecodeControl(data)
	if err != nil {
		a.ctlLog.log(a.log, "control message rejected", "err", err)
		return
	}
	switch op := c.Op.(type) {
	case *pmpb.Control_Profiler_:
		on := op.Profiler.GetEnabled()
		n := a.Control(pmproto.Ctl{Op: "profiler", Name: op.Profiler.GetName(), Enabled: &on}, c.GetSession())
		a.log.Info("control: profiler", "name", op.Profiler.GetName(), "enabled", on, "shims", n)
	case *pmpb.Control_SessionStart_:
		id := op.SessionStart.GetSession()
		if id == "" {
			id = NewSessionID(time.Now())
		}
		n := a.Control(pmproto.Ctl{Op: "session", Session: id}, c.GetSession())
		a.log.Info("control: session start", "session", id, "shims", n)
	case *pmpb.Control_SessionStop_:
		for _, s := range a.Status().Sessions {
			if !s.Ended && (c.GetSession() == "" || c.GetSession() == s.ID) {
				a.endSession(s.ID, "stopped by control")
			}
		}
	default:
		a.ctlLog.log(a.log, "control message without a known op")
	}
}
