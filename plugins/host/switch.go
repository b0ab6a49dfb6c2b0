package host

import (
	"context"
	"encoding/json"
	"errors"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	gproto "google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

// Runtime switching of shim profilers. A person's choice (pmhub profilers on|off) is kept in the
// JetStream key-value bucket ProfilersBucket under "<session>.<kind>" ("_" for every session), so
// the hub knows it and an explicit "off" wins over a plugin's need. When a plugin opens a session,
// the host asks the session's agents (pm.v1.ctl) to switch each kind the plugin reads on, unless a
// person switched it off, in which case the plugin is told its input is off (InputChanged). Kinds
// the hub switched on because a plugin needed them (the session reported them disabled) are
// switched off again when no running plugin needs them any more.
const ProfilersBucket = "PROFILEMATE_PROFILERS"

// Choice is a person's profiler choice as stored in ProfilersBucket.
type Choice struct {
	Enabled bool   `json:"enabled"`
	By      string `json:"by,omitempty"`
	TSNS    int64  `json:"ts_ns"`
}

// ChoiceKey is the bucket key of a choice for one session ("" = every session) and kind.
func ChoiceKey(session, kind string) string {
	if session == "" {
		session = "_"
	}
	return session + "." + kind
}

// RecordChoice stores a person's choice (creating the bucket on first use).
func RecordChoice(ctx context.Context, js jetstream.JetStream, session, kind string, enabled bool, by string) error {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: ProfilersBucket,
		Description: "people's profiler choices (pmhub profilers on|off)", History: 1})
	if err != nil {
		return err
	}
	b, _ := json.Marshal(Choice{Enabled: enabled, By: by, TSNS: time.Now().UnixNano()})
	_, err = kv.Put(ctx, ChoiceKey(session, kind), b)
	return err
}

// personChoice returns a person's choice for the session and kind (the session's own before the
// every-session one); ok is false when nobody chose.
func (h *Host) personChoice(ctx context.Context, session, kind string) (Choice, bool) {
	kv, err := h.js.KeyValue(ctx, ProfilersBucket)
	if err != nil {
		return Choice{}, false
	}
	for _, key := range []string{ChoiceKey(session, kind), ChoiceKey("", kind)} {
		e, err := kv.Get(ctx, key)
		if err != nil {
			continue
		}
		var c Choice
		if json.Unmarshal(e.Value(), &c) == nil {
			return c, true
		}
	}
	return Choice{}, false
}

// sendProfiler publishes a profiler Control to each host of a session.
func (h *Host) sendProfiler(session string, hosts []string, kind string, on bool) error {
	var errs []error
	for _, host := range hosts {
		msg := proto.Stamp(&pmpb.Control{Host: host, Session: session,
			Op: &pmpb.Control_Profiler_{Profiler: &pmpb.Control_Profiler{Name: kind, Enabled: on}}})
		data, err := gproto.Marshal(msg)
		if err != nil {
			return err
		}
		errs = append(errs, h.cfg.Conn.Publish(proto.ControlSubject(host), data))
	}
	return errors.Join(errs...)
}

// disabledKinds are the kinds some process of the session reported switched off (a target
// "disabled" with the reason "profiler switched off: k1,k2").
func disabledKinds(m *hub.Metadata) map[string]bool {
	out := map[string]bool{}
	for _, p := range m.Processes {
		for _, t := range p.Targets {
			if t.Status != "disabled" {
				continue
			}
			if _, list, ok := strings.Cut(t.Reason, "switched off:"); ok {
				for _, k := range strings.Split(list, ",") {
					out[strings.TrimSpace(k)] = true
				}
			}
		}
	}
	return out
}

// need is called when a plugin opens a session: it switches the plugin's kinds on in the
// session's processes unless a person switched them off, and tells the plugin what it will not get.
func (r *run) need(ctx context.Context, session string, m *hub.Metadata) {
	if r.h.cfg.Conn == nil || r.h.js == nil {
		return
	}
	hosts := make([]string, 0, len(m.Hosts))
	for host := range m.Hosts {
		hosts = append(hosts, host)
	}
	sort.Strings(hosts)
	off := disabledKinds(m)
	for _, k := range r.info.Kinds {
		if c, ok := r.h.personChoice(ctx, session, k); ok && !c.Enabled {
			r.tell(ctx, session, k, false, "switched off by a person")
			continue
		}
		if k == proto.KindGPU || len(hosts) == 0 {
			continue
		}
		if err := r.h.sendProfiler(session, hosts, k, true); err != nil {
			r.log.Warn("profiler switch not sent", "kind", k, "err", err)
			continue
		}
		r.h.noteNeed(session, hosts, k, r.file, off[k])
		if off[k] {
			r.log.Info("profiler switched on for the plugin", "session", session, "kind", k)
			r.tell(ctx, session, k, true, "switched on for plugin "+r.info.Name)
		}
	}
}

// tell passes an input change to the plugin; it is advice, so a failure is only logged.
func (r *run) tell(ctx context.Context, session, kind string, on bool, reason string) {
	if err := r.call(ctx, "input changed", func(c context.Context) error {
		return r.p.InputChanged(c, session, kind, on, reason)
	}); err != nil {
		r.log.Debug("input change not delivered", "err", err)
	}
}

type needKey struct{ session, kind string }

type needState struct {
	hosts    []string
	files    map[string]bool // plugin files that need it
	switched bool            // the hub switched it on (it was off)
}

func (h *Host) noteNeed(session string, hosts []string, kind, file string, switched bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.needs == nil {
		h.needs = map[needKey]*needState{}
	}
	k := needKey{session, kind}
	n := h.needs[k]
	if n == nil {
		n = &needState{files: map[string]bool{}}
		h.needs[k] = n
	}
	n.hosts, n.switched = hosts, n.switched || switched
	n.files[file] = true
}

// release drops a plugin file's needs; kinds the hub had switched on and nobody needs any more
// are switched off again, unless a person switched them on.
func (h *Host) release(ctx context.Context, file string) {
	h.mu.Lock()
	var offs []needKey
	var hosts [][]string
	for k, n := range h.needs {
		if !n.files[file] {
			continue
		}
		delete(n.files, file)
		if len(n.files) == 0 {
			delete(h.needs, k)
			if n.switched {
				offs = append(offs, k)
				hosts = append(hosts, n.hosts)
			}
		}
	}
	h.mu.Unlock()
	for i, k := range offs {
		if c, ok := h.personChoice(ctx, k.session, k.kind); ok && c.Enabled {
			continue
		}
		if err := h.sendProfiler(k.session, hosts[i], k.kind, false); err == nil {
			h.log.Info("profiler switched off: no plugin needs it", "session", k.session, "kind", k.kind)
		}
	}
}

// watchChoices tells the plugin when a person switches one of its kinds in an open session.
func (r *run) watchChoices(ctx context.Context) {
	if r.h.js == nil {
		return
	}
	if r.choices == nil {
		r.choices = map[needKey]bool{}
	}
	for id := range r.opened {
		if ss := r.state.Sessions[id]; ss == nil || ss.Closed {
			continue
		}
		for _, k := range r.info.Kinds {
			c, ok := r.h.personChoice(ctx, id, k)
			if !ok {
				continue
			}
			key := needKey{id, k}
			if prev, seen := r.choices[key]; seen && prev == c.Enabled {
				continue
			}
			r.choices[key] = c.Enabled
			reason := "switched off by a person"
			if c.Enabled {
				reason = "switched on by a person"
			}
			r.tell(ctx, id, k, c.Enabled, reason)
		}
	}
}
