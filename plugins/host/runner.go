package host

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	gproto "google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/plugins/pluginpb"
	"github.com/profilemate/profilemate/plugins/sdk"
	"github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

// errRefused marks a plugin that must not be restarted until its binary changes (bad Describe,
// another plugin's table names, an SDK API this host does not speak).
var errRefused = errors.New("refused")

// run is one start of a plugin process: from launch to crash, hang, exit or stop.
type run struct {
	h      *Host
	file   string // name in the plugins folder
	path   string // the private copy that runs
	log    *slog.Logger
	client *plugin.Client
	p      *sdk.Client
	info   sdk.Info
	pid    int64

	state     *pluginState
	statePath string
	once      string // run this one session (pmhub plugins run); "" = live
	restarts  int

	cons    jetstream.Consumer
	opened  map[string]*sessionWriter // sessions opened in this process
	fed     map[string]uint64         // last stream sequence fed, per session
	skip    map[string]bool           // sessions the hub never made a folder for
	choices map[needKey]bool          // people's choices the plugin was told of
	pending uint64                    // messages left in the consumer after the last fetch
}

// start launches the binary, shakes hands and asks it who it is.
func (r *run) start(ctx context.Context) error {
	hl := hclog.FromStandardLogger(slog.NewLogLogger(r.log.Handler(), slog.LevelInfo), &hclog.LoggerOptions{
		Name: "plugin", Level: hclog.Info})
	r.client = plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig: sdk.Handshake, VersionedPlugins: sdk.PluginSets(nil), Cmd: exec.Command(r.path),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC}, Logger: hl, StartTimeout: r.h.cfg.CallTimeout,
	})
	cp, err := r.client.Client()
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	raw, err := cp.Dispense(sdk.PluginKey)
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	r.p = raw.(*sdk.Client)
	if rc := r.client.ReattachConfig(); rc != nil {
		r.pid = int64(rc.Pid)
	}
	cctx, cancel := context.WithTimeout(ctx, r.h.cfg.CallTimeout)
	defer cancel()
	info, api, err := r.p.Describe(cctx)
	if err != nil {
		return fmt.Errorf("describe: %w", err)
	}
	if api != sdk.APIVersion {
		return fmt.Errorf("%w: built with SDK API %d, this hub speaks %d", errRefused, api, sdk.APIVersion)
	}
	if err := info.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errRefused, err)
	}
	for _, k := range info.Kinds {
		if !proto.IsKind(k) {
			return fmt.Errorf("%w: plugin %s consumes unknown kind %q (known: %s)", errRefused, info.Name, k, strings.Join(proto.Kinds(), ", "))
		}
	}
	for _, t := range info.Tables {
		if _, seed := proto.Table(t.Table); seed {
			return fmt.Errorf("%w: plugin %s: table %s is a seed table", errRefused, info.Name, t.Table)
		}
	}
	if err := r.h.claim(r.file, info); err != nil {
		return fmt.Errorf("%w: %v", errRefused, err)
	}
	r.info = info
	r.log = r.log.With("plugin", info.Name, "version", info.Version)
	return nil
}

func (r *run) stop() {
	if r.client != nil {
		r.client.Kill()
	}
}

// call runs one plugin call under the per-call deadline; a missed deadline or a dead process
// is an error that restarts the plugin.
func (r *run) call(ctx context.Context, what string, f func(context.Context) error) error {
	cctx, cancel := context.WithTimeout(ctx, r.h.cfg.CallTimeout)
	defer cancel()
	err := f(cctx)
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(cctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("%s: missed the %s deadline", what, r.h.cfg.CallTimeout)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// consumerName is the plugin's durable consumer on the stream.
func consumerName(plugin string) string { return "plugin_" + plugin }

// filters are the subjects of the plugin's kinds (of one session when once is set).
func (r *run) filters() []string {
	var f []string
	for _, k := range r.info.Kinds {
		f = append(f, proto.EventFilter(r.once, "", "", k))
	}
	return f
}

// setupConsumer (re)creates the plugin's consumer at its replay point: the first event of the
// earliest session it has open (so a restarted plugin rebuilds its state; rows it already gave
// are skipped by key), of every session the hub still has active (back-fill), or what the hub
// has not yet consumed, whichever comes first.
func (r *run) setupConsumer(ctx context.Context) error {
	js := r.h.js
	st, err := js.Stream(ctx, proto.StreamName)
	if err != nil {
		return fmt.Errorf("stream: %w", err)
	}
	if r.once != "" {
		c, err := js.OrderedConsumer(ctx, proto.StreamName, jetstream.OrderedConsumerConfig{FilterSubjects: r.filters()})
		if err != nil {
			return fmt.Errorf("consumer: %w", err)
		}
		r.cons = c
		return nil
	}
	var start uint64
	pick := func(s uint64) {
		if s > 0 && (start == 0 || s < start) {
			start = s
		}
	}
	for _, ss := range r.state.Sessions {
		if !ss.Closed && !ss.Skipped {
			pick(ss.FirstSeq)
		}
	}
	// Everything the hub has not acknowledged may belong to sessions it has not written yet.
	if ci, err := js.Consumer(ctx, proto.StreamName, r.h.cfg.HubConsumer); err == nil {
		if info, err := ci.Info(ctx); err == nil {
			pick(info.AckFloor.Stream + 1)
		}
	}
	if start == 0 {
		if si, err := st.Info(ctx); err == nil {
			pick(si.State.LastSeq + 1)
		}
	}
	for _, id := range r.h.activeSessions() {
		if ss := r.state.Sessions[id]; ss != nil {
			continue
		}
		m, err := st.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(proto.EventFilter(id, "", "", "")+""))
		if err == nil {
			pick(m.Sequence)
		}
	}
	if start == 0 {
		start = 1
	}
	name := consumerName(r.info.Name)
	_ = js.DeleteConsumer(ctx, proto.StreamName, name)
	c, err := st.CreateConsumer(ctx, jetstream.ConsumerConfig{
		Durable: name, Description: "pmhub plugin " + r.info.Name + " " + r.info.Version,
		FilterSubjects: r.filters(), DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: start,
		AckPolicy: jetstream.AckAllPolicy, AckWait: 2*r.h.cfg.CallTimeout + time.Minute, MaxAckPending: -1, MaxDeliver: -1,
	})
	if err != nil {
		return fmt.Errorf("consumer %s: %w", name, err)
	}
	r.cons = c
	r.log.Info("plugin reading", "from_stream_seq", start, "kinds", r.info.Kinds)
	return nil
}

// loop feeds the plugin until ctx ends (nil), the plugin fails (error) or, for a one-session
// run, the session is done (nil).
func (r *run) loop(ctx context.Context) error {
	lastClose := time.Time{}
	for ctx.Err() == nil {
		if r.client.Exited() {
			return errors.New("plugin process exited")
		}
		msgs, err := r.fetch(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("fetch: %w", err)
		}
		if len(msgs) > 0 {
			if err := r.feed(ctx, msgs); err != nil {
				return err
			}
		}
		if len(msgs) == 0 || time.Since(lastClose) > time.Second {
			lastClose = time.Now()
			done, err := r.closeEnded(ctx)
			if err != nil {
				return err
			}
			if done {
				return nil
			}
			if r.once == "" {
				r.watchChoices(ctx, false)
			}
		}
		r.h.update(r.file, func(s *Status) { s.Lag = r.pending; s.Sessions = r.openCount() })
	}
	return nil
}

func (r *run) openCount() int {
	n := 0
	for id := range r.opened {
		if ss := r.state.Sessions[id]; ss != nil && !ss.Closed {
			n++
		}
	}
	return n
}

func (r *run) fetch(ctx context.Context) ([]jetstream.Msg, error) {
	get := func(b jetstream.MessageBatch, err error) ([]jetstream.Msg, error) {
		if err != nil {
			return nil, err
		}
		var out []jetstream.Msg
		for m := range b.Messages() {
			out = append(out, m)
		}
		return out, nil
	}
	msgs, err := get(r.cons.FetchNoWait(r.h.cfg.Batch))
	if err == nil && len(msgs) == 0 {
		msgs, err = get(r.cons.Fetch(1, jetstream.FetchMaxWait(r.h.cfg.Poll)))
	}
	if len(msgs) > 0 {
		if md, err := msgs[len(msgs)-1].Metadata(); err == nil {
			r.pending = md.NumPending
		}
	} else if err == nil {
		r.pending = 0
	}
	return msgs, err
}

// feed hands a fetch round to the plugin, session by session in stream order, writes the rows
// that are new, and acknowledges the round once they are on disk.
func (r *run) feed(ctx context.Context, msgs []jetstream.Msg) error {
	i := 0
	for i < len(msgs) {
		f, err := proto.ParseEventSubject(msgs[i].Subject())
		if err != nil {
			i++
			continue
		}
		j := i + 1
		for j < len(msgs) {
			g, err := proto.ParseEventSubject(msgs[j].Subject())
			if err != nil || g.Session != f.Session {
				break
			}
			j++
		}
		if err := r.feedSession(ctx, f.Session, msgs[i:j]); err != nil {
			return err
		}
		i = j
	}
	if r.once != "" {
		return nil // an ordered consumer: nothing to acknowledge
	}
	if err := msgs[len(msgs)-1].Ack(); err != nil && ctx.Err() == nil {
		r.log.Warn("ack failed", "err", err)
	}
	return nil
}

func (r *run) feedSession(ctx context.Context, session string, msgs []jetstream.Msg) error {
	md, err := msgs[0].Metadata()
	if err != nil {
		return fmt.Errorf("message metadata: %w", err)
	}
	w, err := r.open(ctx, session, md.Sequence.Stream)
	if err != nil || w == nil {
		return err
	}
	req := make([]*pluginpb.Message, 0, len(msgs))
	for _, m := range msgs {
		md, err := m.Metadata()
		if err != nil {
			continue
		}
		req = append(req, &pluginpb.Message{StreamSeq: md.Sequence.Stream, Subject: m.Subject(), EventBatch: m.Data()})
		if r.fed == nil {
			r.fed = map[string]uint64{}
		}
		r.fed[session] = max(r.fed[session], md.Sequence.Stream)
	}
	var resp *pluginpb.ConsumeResponse
	if err := r.call(ctx, "consume", func(c context.Context) error {
		var err error
		resp, err = r.p.Consume(c, session, req)
		return err
	}); err != nil {
		return err
	}
	if resp.GetFailed() > 0 {
		r.h.countFailed(r.file, int64(resp.GetFailed()))
		r.log.Warn("plugin refused batches", "session", session, "batches", resp.GetFailed(), "first_error", resp.GetFirstError())
	}
	return r.write(w, resp.GetRows())
}

// open makes sure the session is open in this plugin process; nil writer: skip its messages.
func (r *run) open(ctx context.Context, session string, seq uint64) (*sessionWriter, error) {
	if w := r.opened[session]; w != nil {
		return w, nil
	}
	if r.skip[session] {
		return nil, nil
	}
	ss := r.state.Sessions[session]
	if ss != nil && (ss.Skipped || ss.Closed) && r.once == "" {
		return nil, nil
	}
	dir := hub.SessionDir(r.h.cfg.DataDir, session)
	// The hub writes the session's folder first: wait for its metadata, so the plugin never runs
	// ahead of the hub into a folder the hub has not made.
	var meta []byte
	var m *hub.Metadata
	for {
		var err error
		if m, err = hub.ReadMetadata(dir); err == nil {
			meta, _ = readFile(dir, hub.MetadataFile)
			break
		}
		if r.client.Exited() {
			return nil, errors.New("plugin process exited")
		}
		if r.h.hubPast(ctx, seq) && !r.h.hasSegments(session) {
			// The hub has consumed this message and made no folder for it (a session id it
			// refuses, say): nothing to write beside, so the plugin does not see it either.
			if r.skip == nil {
				r.skip = map[string]bool{}
			}
			r.skip[session] = true
			r.log.Warn("session has no folder at the hub: skipped", "session", session)
			return nil, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	if ss == nil || r.once != "" {
		if ss == nil && r.once == "" && m.Status == hub.StatusEnded {
			r.state.Sessions[session] = &sessionState{FirstSeq: seq, Skipped: true}
			r.log.Info("session ended before the plugin came: not replayed (pmhub plugins run does)", "session", session)
			return nil, r.state.save(r.statePath)
		}
		if ss == nil {
			ss = &sessionState{FirstSeq: seq}
			r.state.Sessions[session] = ss
		}
		ss.Closed = false
		if err := r.state.save(r.statePath); err != nil {
			return nil, err
		}
	}
	req := &pluginpb.OpenSessionRequest{Session: session, StartNs: m.StartNS, MetadataJson: meta}
	for _, p := range m.Processes {
		req.Processes = append(req.Processes, &pmpb.Process{Session: session, Host: p.Host, Pid: p.PID, Ppid: p.PPID,
			Role: p.Role, Dp: int32(p.DP), Pp: int32(p.PP), Tp: int32(p.TP), Ep: int32(p.EP), Rank: int32(p.Rank), Python: p.Python, Vllm: p.VLLM,
			GpuUuid: p.GPUUUID, Title: p.Title, StartNs: p.StartNS, InstanceKey: p.InstanceKey})
	}
	if err := r.call(ctx, "open session", func(c context.Context) error { return r.p.OpenSession(c, req) }); err != nil {
		return nil, err
	}
	w, err := newSessionWriter(r.h.cfg.DataDir, session, r.info, r.h.cfg.HostName)
	if err != nil {
		return nil, err
	}
	w.pid = r.pid
	r.opened[session] = w
	e := r.sessionEntry(w, ss)
	if m.StartNS > 0 {
		// Retention cut the start when the stream's first message is newer than the session's start.
		if first, err := r.h.firstSeq(ctx); err == nil && first > 1 && ss.FirstSeq <= first {
			e.RetentionCut = true
		}
	}
	if err := updateSessionPlugins(w, r.info.Name, e); err != nil {
		r.log.Warn("plugins.json not written", "session", session, "err", err)
	}
	r.log.Info("session opened in plugin", "session", session, "from_stream_seq", ss.FirstSeq)
	if r.once == "" && m.Status != hub.StatusEnded {
		r.need(ctx, session, m)
	}
	return w, nil
}

func (r *run) sessionEntry(w *sessionWriter, ss *sessionState) SessionPlugin {
	rows := map[string]int64{}
	for t, n := range w.rows {
		if t != sdk.FindingsTable {
			rows[t] = n
		}
	}
	return SessionPlugin{Version: r.info.Version, Rows: rows, Restarts: r.restarts, FirstSeq: ss.FirstSeq,
		Closed: ss.Closed, Findings: w.rows[sdk.FindingsTable]}
}

// write stores the rows that are new and publishes them on the derived subjects.
func (r *run) write(w *sessionWriter, rows []*pluginpb.Row) error {
	if len(rows) == 0 {
		return nil
	}
	out, err := w.write(rows, time.Now().UnixNano())
	if errors.Is(err, errWrite) {
		// The disk, not the plugin: start the run again, which reads back what is on disk and
		// feeds the session again from its first event, so no row is lost or written twice.
		return err
	}
	if err != nil {
		// Rows that do not fit the plugin's own tables are the plugin's fault: log them, keep going.
		r.log.Warn("plugin rows not written", "session", w.session, "err", err)
		r.h.countFailed(r.file, 1)
		return nil
	}
	var n int64
	tables := make([]string, 0, len(out))
	for t, evs := range out {
		n += int64(len(evs))
		tables = append(tables, t)
	}
	sort.Strings(tables)
	r.h.update(r.file, func(s *Status) { s.Rows += n })
	if ss := r.state.Sessions[w.session]; w.rotated && ss != nil {
		// The session rotated: its plugins.json went with the closed segment; the live one gets
		// this plugin's entry (counts over all segments) again.
		w.rotated = false
		if err := updateSessionPlugins(w, r.info.Name, r.sessionEntry(w, ss)); err != nil {
			r.log.Warn("plugins.json not written", "session", w.session, "err", err)
		}
	}
	for _, t := range tables {
		r.publish(w, out[t])
	}
	return nil
}

// publish sends derived rows as one EventBatch on pm.v1.dv.<session>.<hub host>.plugin-<name>.<kind>.
func (r *run) publish(w *sessionWriter, evs []*pmpb.Event) {
	if len(evs) == 0 || r.h.cfg.Conn == nil {
		return
	}
	b := &pmpb.EventBatch{SchemaMajor: proto.SchemaMajor, SchemaMinor: proto.SchemaMinor,
		Process: &pmpb.Process{Session: w.session, Host: r.h.cfg.HostName, Pid: r.pid, Role: proto.RolePlugin,
			Dp: -1, Pp: -1, Tp: -1, Ep: -1, Rank: -1, Title: r.info.Name + " " + r.info.Version},
		Events: evs}
	data, err := gproto.Marshal(b)
	if err != nil {
		return
	}
	subj := proto.DerivedSubject(w.session, r.h.cfg.HostName, proto.PluginProcToken(r.info.Name), evs[0].Kind)
	if err := r.h.cfg.Conn.Publish(subj, data); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		r.log.Debug("derived rows not published", "err", err)
	}
}

// closeEnded closes, in the plugin, every open session the hub has ended once the plugin has
// read all of it. For a one-session run it reports done when that session is closed.
func (r *run) closeEnded(ctx context.Context) (bool, error) {
	ids := make([]string, 0, len(r.opened))
	for id := range r.opened {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		ss := r.state.Sessions[id]
		if ss == nil || ss.Closed {
			continue
		}
		if r.once == "" {
			m, err := hub.ReadMetadata(hub.SessionDir(r.h.cfg.DataDir, id))
			if err != nil || m.Status != hub.StatusEnded {
				continue
			}
		}
		// Every event of the session (of the plugin's kinds) must have been fed: the hub ended it
		// after its events reached the stream, so the last one there is the last one.
		if last := r.lastInStream(ctx, id); last == 0 && r.pending > 0 || last > r.fed[id] {
			continue
		}
		if r.once == "" {
			r.watchChoices(ctx, true) // a choice made before the end reaches the plugin before its final rows
		}
		var rows []*pluginpb.Row
		if err := r.call(ctx, "close session", func(c context.Context) error {
			var err error
			rows, err = r.p.CloseSession(c, id)
			return err
		}); err != nil {
			return false, err
		}
		w := r.opened[id]
		if err := r.write(w, rows); err != nil {
			return false, err
		}
		ss.Closed = true
		if err := r.state.save(r.statePath); err != nil {
			return false, err
		}
		if err := updateSessionPlugins(w, r.info.Name, r.sessionEntry(w, ss)); err != nil {
			r.log.Warn("plugins.json not written", "session", id, "err", err)
		}
		r.log.Info("session closed in plugin", "session", id, "rows", w.rows)
	}
	if r.once != "" {
		ss := r.state.Sessions[r.once]
		return ss != nil && ss.Closed || r.opened[r.once] == nil, nil
	}
	return false, nil
}

// lastInStream is the stream sequence of the session's last event of the plugin's kinds (0: none
// or unknown).
func (r *run) lastInStream(ctx context.Context, session string) uint64 {
	st, err := r.h.js.Stream(ctx, proto.StreamName)
	if err != nil {
		return 0
	}
	var last uint64
	for _, k := range r.info.Kinds {
		m, err := st.GetLastMsgForSubject(ctx, proto.EventFilter(session, "", "", k))
		if err == nil && m.Sequence > last {
			last = m.Sequence
		}
	}
	return last
}

func readFile(dir, name string) ([]byte, error) {
	return readFileLimit(dir+"/"+name, 4<<20)
}
