package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/profilemate/profilemate/internal/clock"
	pmproto "github.com/profilemate/profilemate/proto"
)

// Config is everything an agent needs; the zero value of each field has a usable default.
type Config struct {
	Host        string // host name in subjects; default os.Hostname()
	Session     string // fixed session for every process; empty: the shim's, else one per process tree
	Socket      string // Unix socket path; empty: no socket (tests drive Ingest directly)
	SocketGroup string // group owning the socket when it exists; default "profilemate"
	NATS        NATSConfig
	SpoolDir    string // empty: no disk spool (memory only, then drops)
	SpoolMax    int64  // default 1 GiB
	// SpoolSync is how often appends to the spool are fsynced (default DefaultSpoolSync): what a
	// kill -9 can lose while the stream is unreachable.
	SpoolSync time.Duration
	// DeadLetterMaxBytes and DeadLetterMaxCount cap the dead-letter file of messages NATS refused
	// permanently (defaults DefaultDeadLetterMaxBytes, DefaultDeadLetterMaxCount); beyond them
	// refused messages are only counted.
	DeadLetterMaxBytes int64
	DeadLetterMaxCount int64
	MemMax             int64 // memory queue bytes before spooling; default 32 MiB
	MaxLine            int   // bytes of one socket line; default DefaultMaxLine
	// MaxConns caps open socket connections (default DefaultMaxConns); more are closed at accept.
	MaxConns int
	// MaxBuffered caps the bytes all connections' incomplete lines hold together (default
	// DefaultMaxBuffered); a line that would pass it is read to its end, discarded and counted.
	MaxBuffered int64
	// SessionLinger ends a session this long after its last process left; 0 keeps sessions open
	// until EndSession (what `pmagent run` does: it ends the session when its command exits).
	SessionLinger time.Duration
	// InstanceRefresh is how often the agent refreshes the registry entries of the multi-node
	// instances it has live processes of; an entry not refreshed for 3 periods counts as ended
	// (instance.go). 0: DefaultInstanceRefresh.
	InstanceRefresh time.Duration
	// Resume keeps, over a restart, the sessions of processes still running at Shutdown (saved in
	// the spool folder, restored by the next agent) instead of ending them: `pmagent serve`.
	Resume    bool
	Version   string
	Heartbeat time.Duration // default DefaultHeartbeat
	// ClockSkew (tests only) is added to every reading of this agent's clock in the hub clock
	// offset measurement, so a test can give one host a known offset and recover it.
	ClockSkew time.Duration
	Logger    *slog.Logger
}

// Defaults of the agent's limits.
const (
	DefaultSpoolSync   = 200 * time.Millisecond // how often spool appends are fsynced
	DefaultMaxConns    = 256                    // open socket connections
	DefaultMaxBuffered = 64 << 20               // bytes of incomplete lines, all connections together
)

// Agent ingests shim connections and publishes what they send.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	q     *queue
	dead  *deadLetters
	pub   *publisher
	stopQ chan struct{}
	// stopQOnce closes stopQ (the spool's fsync loop).
	stopQOnce sync.Once
	started   time.Time
	ln        net.Listener

	mu       sync.Mutex
	sessions map[string]*session // by id
	renamed  map[string]string   // ended name → the id that replaced it
	// instances maps a multi-node instance key to its session here, instanceOf the reverse
	// (instance.go).
	instances  map[string]string
	instanceOf map[string]string
	layout     layouts // each process's instance key and node rank (instance.go)
	procs      map[int]*proc
	watch      map[int]bool // pids whose end the caller reports (Exited)
	conns      map[*conn]struct{}
	connWG     sync.WaitGroup

	budget       *byteBudget
	readBytes    atomic.Int64 // bytes read from the socket
	refusedConns atomic.Int64
	overBudget   atomic.Int64
	connLog      rateLog
	memPending   atomic.Bool
	memMu        sync.Mutex
	memLast      time.Time

	events    atomic.Int64 // events accepted
	dupes     atomic.Int64 // events received again after a shim reconnect, not re-published
	badLines  atomic.Int64
	badLog    rateLog // rejected socket lines
	eventLog  rateLog // refused events (a line's other events were kept)
	ctlLog    rateLog // control messages the agent could not use
	encErrors atomic.Int64
	rejected  rejectCounts // events proto refused, by reason
	lifeN     atomic.Uint64
	clock     *clock.Tracker // nil without NATS
}

func (a *Agent) nextLifeN() uint64 {
	for {
		last := a.lifeN.Load()
		n := uint64(time.Now().UnixNano())
		if n <= last {
			n = last + 1
		}
		if a.lifeN.CompareAndSwap(last, n) {
			return n
		}
	}
}

type session struct {
	id    string
	live  int
	ended bool
	timer *time.Timer
	// dropped sums the cumulative drop counters of the session's processes.
	procs map[int]*proc
}

type proc struct {
	pid int // the pid the shim reports: a label (another pid namespace in a container)
	// instance is the shim's per-start id (16 hex digits, empty from older shims): a hello for the
	// same pid with another instance is another process, whatever the kernel says.
	instance string
	sess     *session
	ident    pmproto.Ident
	token    string
	hello    *pmproto.Hello
	conn     *conn
	peer     peerCred // the process bound to this label: the peer of the connection that said hello
	// endState and endSignal: how it ended (EndClean, EndLost, EndKilled), once bye is set.
	endState  string
	endSignal string
	events    int64
	dropped   uint64
	maxSeq    uint64
	seen      bool // maxSeq is valid
	bye       bool
	// switches: the last profiler switch the agent forwarded to this process, per kind;
	// reportedOff: the kinds its last status line reported switched off (targets "disabled" with
	// "profiler switched off: k1,k2"). Both feed ProcStatus.Profilers.
	switches    map[string]ProfilerState
	reportedOff []string
}

// New prepares an agent: it opens the spool and connects to NATS (in the background when the
// server is not up yet). Start serves the socket. Errors: a host or session name outside proto's
// grammar (wrapping pmproto.ErrName), or a spool that cannot be opened.
func New(cfg Config) (*Agent, error) {
	if cfg.Host == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("agent: host name: %w", err)
		}
		cfg.Host = h
	}
	if err := pmproto.ValidateHost(cfg.Host); err != nil {
		return nil, fmt.Errorf("agent: %w (set another with --host / PROFILEMATE_HOST)", err)
	}
	if cfg.Session != "" {
		if err := pmproto.ValidateSession(cfg.Session); err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
	}
	if cfg.SocketGroup == "" {
		cfg.SocketGroup = "profilemate"
	}
	if cfg.SpoolMax == 0 {
		cfg.SpoolMax = 1 << 30
	}
	if cfg.MemMax == 0 {
		cfg.MemMax = 32 << 20
	}
	if cfg.SpoolSync <= 0 {
		cfg.SpoolSync = DefaultSpoolSync
	}
	if cfg.DeadLetterMaxBytes == 0 {
		cfg.DeadLetterMaxBytes = DefaultDeadLetterMaxBytes
	}
	if cfg.DeadLetterMaxCount == 0 {
		cfg.DeadLetterMaxCount = DefaultDeadLetterMaxCount
	}
	if cfg.MaxLine == 0 {
		cfg.MaxLine = DefaultMaxLine
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.MaxBuffered == 0 {
		cfg.MaxBuffered = DefaultMaxBuffered
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.NATS.Name == "" {
		cfg.NATS.Name = "pmagent@" + cfg.Host
	}
	a := &Agent{
		cfg: cfg, log: cfg.Logger.With("component", "agent"),
		started: time.Now(), sessions: map[string]*session{}, renamed: map[string]string{},
		instances: map[string]string{}, instanceOf: map[string]string{},
		procs: map[int]*proc{}, conns: map[*conn]struct{}{}, stopQ: make(chan struct{}), watch: map[int]bool{},
		budget: &byteBudget{max: cfg.MaxBuffered},
	}
	a.budget.full = a.returnMemory
	var sp *spool
	if cfg.SpoolDir != "" {
		var err error
		// Concurrent `pmagent run`s on one host share the default folder: each takes a free slot.
		dir := cfg.SpoolDir
		for i := 1; ; i++ {
			sp, err = openSpool(dir, cfg.SpoolMax)
			if !errors.Is(err, errSpoolBusy) || i > 16 {
				break
			}
			dir = filepath.Join(cfg.SpoolDir, "slot-"+strconv.Itoa(i))
		}
		if err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
		a.cfg.SpoolDir = dir
		if sp.count > 0 {
			a.log.Info("replaying spool from an earlier run", "dir", dir, "messages", sp.count, "bytes", sp.bytes)
		}
		for _, n := range sp.foreign {
			a.log.Warn("spool segment written by a newer agent left untouched", "file", sp.path(n))
		}
	}
	if sp != nil && a.cfg.Resume {
		a.loadResume()
	}
	a.q = newQueue(cfg.MemMax, sp)
	deadDir := ""
	if sp != nil {
		deadDir = a.cfg.SpoolDir
	}
	a.dead = newDeadLetters(deadDir, a.cfg.DeadLetterMaxBytes, a.cfg.DeadLetterMaxCount)
	a.pub = newPublisher(cfg.NATS, a.q, a.dead, a.log)
	if cfg.NATS.URL == "" {
		a.log.Info("no NATS configured: events are kept in the spool for a later run with --nats", "spool", cfg.SpoolDir)
	}
	if err := a.pub.connect(); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	return a, nil
}

// Start listens on the socket (when configured) and starts publishing.
func (a *Agent) Start(ctx context.Context) error {
	if a.cfg.Socket != "" {
		ln, err := listenSocket(a.cfg.Socket, a.cfg.SocketGroup, a.log)
		if err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		a.ln = ln
		go a.accept()
	}
	go a.pub.run()
	go a.q.syncEvery(a.cfg.SpoolSync, a.stopQ)
	a.startNATSSide(ctx)
	go a.reap(ctx)
	go func() {
		<-ctx.Done()
		a.stopListening()
	}()
	return nil
}

// Socket is the path the agent listens on.
func (a *Agent) Socket() string { return a.cfg.Socket }

// Host is the host name the agent publishes under.
func (a *Agent) Host() string { return a.cfg.Host }

func (a *Agent) stopListening() {
	a.mu.Lock()
	ln := a.ln
	a.ln = nil
	a.mu.Unlock()
	if ln != nil {
		ln.Close()
		_ = os.Remove(a.cfg.Socket)
	}
}

// WaitIdle waits until no shim is connected or ctx is done; `pmagent run` calls it after its
// command exited so the last lines of every process are read.
func (a *Agent) WaitIdle(ctx context.Context) bool {
	for {
		a.mu.Lock()
		n := len(a.conns)
		a.mu.Unlock()
		if n == 0 {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Report is what Shutdown could not deliver.
type Report struct {
	Published int64 // messages acknowledged by the stream during this run
	Spooled   int64 // messages left in the spool for a later run
	Dropped   int64 // messages lost (queue and spool full)
	ShimDrops uint64
}

// Shutdown stops the socket, closes the remaining connections, ends every open session, sends
// what it can until ctx is done and leaves the rest in the spool.
func (a *Agent) Shutdown(ctx context.Context) (Report, error) {
	a.stopListening()
	a.mu.Lock()
	for c := range a.conns {
		c.nc.Close()
	}
	a.mu.Unlock()
	a.connWG.Wait()
	a.mu.Lock()
	var keep map[string]bool
	if a.cfg.Resume && a.cfg.SpoolDir != "" && a.q.spool != nil {
		var err error
		if keep, err = a.saveResume(); err != nil {
			a.log.Warn("sessions of running processes end now", "err", err)
		} else if len(keep) > 0 {
			a.log.Info("sessions of running processes stay open for the next agent", "sessions", len(keep))
		}
	}
	var ids []string
	for id, s := range a.sessions {
		if !s.ended && !keep[id] {
			ids = append(ids, id)
		}
	}
	a.mu.Unlock()
	for _, id := range ids {
		a.EndSession(id)
	}
	a.pub.drain(ctx)
	a.stopQOnce.Do(func() { close(a.stopQ) })
	kept, _, err := a.q.close()
	a.pub.close()
	st := a.q.stats()
	var shim uint64
	a.mu.Lock()
	for _, p := range a.procs {
		shim += p.dropped
	}
	a.mu.Unlock()
	return Report{Published: a.pub.published.Load(), Spooled: kept, Dropped: st.Dropped, ShimDrops: shim}, err
}

// NewSessionID returns a fresh session id: YYYYMMDD_HHMMSS_<6 hex>.
func NewSessionID(now time.Time) string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return now.UTC().Format("20060102_150405") + "_" + hex.EncodeToString(b[:])
}

// resolveSession picks the session of a process that says hello (a.mu held).
// inst is the session of the process's multi-node instance ("" for none; instance.go).
func (a *Agent) resolveSession(h *pmproto.Hello, inst string) *session {
	name := a.cfg.Session
	if name == "" {
		name = inst
	}
	if name == "" {
		name = h.Session
	}
	if name == "" {
		if parent, ok := a.procs[h.PPID]; ok && !parent.sess.ended {
			return parent.sess
		}
	}
	if name == "" {
		name = NewSessionID(time.Now())
	}
	if id, ok := a.renamed[name]; ok {
		name = id
	}
	s, ok := a.sessions[name]
	if ok && s.ended {
		id := NewSessionID(time.Now())
		a.renamed[name] = id
		a.log.Info("session already ended; continuing under a new id", "session", name, "new", id)
		name = id
		s, ok = nil, false
	}
	if !ok {
		s = a.newSession(name)
	}
	return s
}

// newSession registers a session and publishes its start record (a.mu held).
func (a *Agent) newSession(id string) *session {
	s := &session{id: id, procs: map[int]*proc{}}
	a.sessions[id] = s
	a.log.Info("session started", "session", id)
	a.publishLife(&Life{Type: "start", Session: id, Host: a.cfg.Host, Proc: "agent", AgentVersion: a.cfg.Version, EndNS: time.Now().UnixNano()})
	return s
}

// EndSession closes a session: it publishes its end record and later hellos naming it get a new id.
func (a *Agent) EndSession(id string) { a.endSession(id, "closed") }

func (a *Agent) endSession(id, reason string) {
	a.mu.Lock()
	s, ok := a.sessions[id]
	if !ok || s.ended {
		a.mu.Unlock()
		return
	}
	s.ended = true
	if s.timer != nil {
		s.timer.Stop()
	}
	var dropped, last uint64
	for _, p := range s.procs {
		dropped += p.dropped
	}
	a.mu.Unlock()
	a.publishLife(&Life{Type: "end", Session: id, Host: a.cfg.Host, Proc: "agent", Dropped: dropped,
		LastSeq: last, EndNS: time.Now().UnixNano(), AgentDropped: a.q.stats().Dropped, Reason: reason})
	a.log.Info("session ended", "session", id)
	a.instanceEnded(id)
}

// Sessions lists the ids of the sessions the agent has seen.
func (a *Agent) Sessions() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	ids := make([]string, 0, len(a.sessions))
	for id := range a.sessions {
		ids = append(ids, id)
	}
	return ids
}

func (a *Agent) publishLife(l *Life) {
	a.layout.fill(l)
	data, err := encodeLife(l)
	if err != nil {
		a.encErrors.Add(1)
		a.log.Error("encode lifecycle record", "err", err)
		return
	}
	// n tells repeated records of one process apart (a hello after each reconnect, every status);
	// it is time-based so that records of an agent restarted within the dedupe window differ too.
	n := a.nextLifeN()
	id := pmproto.LifeMsgID(l.Session, l.Host, int64(l.PID), l.Instance, l.Type, n)
	a.q.push(Msg{Subject: pmproto.LifeSubject(l.Session, l.Host, l.Proc), ID: id, Data: data})
}

// claim binds process p to connection c (a.mu held). A label stays with the process that said
// hello on it: another connection may take it over only when the kernel says it comes from the
// same process (a shim that reconnected). Otherwise the line is refused, so no connection can
// write into another process's events, drop counts or end.
func (a *Agent) claim(c *conn, p *proc) error {
	if p.conn == c {
		return nil
	}
	if !c.peer.sameProcess(p.peer) && (p.conn != nil || (p.peer.OK && pidAlive(int(p.peer.Pid)))) {
		return fmt.Errorf("%w: pid %d is bound to the connection of process %d", pmproto.ErrBadLine, p.pid, p.peer.Pid)
	}
	if p.conn != nil {
		delete(p.conn.pids, p.pid)
	}
	p.conn, p.peer = c, c.peer
	c.pids[p.pid] = p
	return nil
}

// reused reports whether a label's process is gone and a new one uses the pid (a.mu held): its
// bound process exited while disconnected.
func reused(p *proc, c *conn) bool {
	return p.conn == nil && p.peer.OK && !c.peer.sameProcess(p.peer) && !pidAlive(int(p.peer.Pid))
}

// hello registers a process (again, after a reconnect) and returns the session it belongs to.
func (a *Agent) hello(c *conn, h *pmproto.Hello) error {
	inst := a.instanceSession(h)
	a.mu.Lock()
	p, ok := a.procs[h.PID]
	var gone *Life
	if ok && (p.sess.ended || p.bye || reused(p, c) || (h.Instance != "" && p.instance != "" && h.Instance != p.instance)) {
		// A new process reusing the pid (its instance differs, or the kernel says so), or one
		// that outlived its session.
		if !p.bye {
			gone = a.lostLife(p)
		}
		ok = false
	}
	var emptied string
	if ok {
		if err := a.claim(c, p); err != nil {
			a.mu.Unlock()
			return err
		}
		if inst != "" && inst != p.sess.id && a.cfg.Session == "" {
			emptied = a.joinLate(p, inst) // instance.go
		}
	}
	if !ok {
		s := a.resolveSession(h, inst)
		p = &proc{pid: h.PID, sess: s, peer: c.peer}
		a.procs[h.PID] = p
		s.procs[h.PID] = p
		s.live++
		if s.timer != nil {
			s.timer.Stop()
			s.timer = nil
		}
	}
	p.ident, p.hello, p.conn = h.Ident(), h, c
	if h.Instance != "" {
		p.instance = h.Instance
	}
	p.token = a.uniqueToken(p)
	c.pids[h.PID] = p
	sess := p.sess.id
	a.mu.Unlock()
	if gone != nil {
		a.publishLife(gone)
	}
	if emptied != "" {
		a.endSession(emptied, "joined instance")
	}

	if h.Session != sess {
		c.send(pmproto.Ctl{T: pmproto.LineCtl, V: pmproto.WireVersion, Op: "session", Session: sess})
	}
	a.layout.learn(h, sess, c.peer.OK && int(c.peer.Pid) == h.PID)
	a.publishLife(&Life{Type: "hello", Session: sess, Host: a.cfg.Host, Proc: p.token, PID: h.PID, Instance: p.instance, Ident: p.ident, Hello: h})
	return nil
}

// uniqueToken keeps proc tokens unique inside a session (two processes claiming the same rank).
func (a *Agent) uniqueToken(p *proc) string {
	t := pmproto.ProcToken(p.ident.Role, p.ident.DP, p.ident.Rank, p.pid)
	for _, o := range p.sess.procs {
		if o != p && o.token == t && !o.bye {
			return "p" + fmt.Sprint(p.pid)
		}
	}
	return t
}

// batch publishes a shim batch as one message per kind. Each event is checked against its table
// and encoded once (proto's codec); refused events are counted by reason and the others are
// published. A batch whose every event is refused changes nothing and is an error.
func (a *Agent) batch(c *conn, b *pmproto.Batch) error {
	good, bad := pmproto.EncodeEvents(b.Events)
	a.rejected.add(bad, a.log, &a.eventLog)
	if len(good) == 0 && len(bad) > 0 {
		// Refused for good: a replay would be refused again, so the shim may let go of it (once
		// what came before it is queued).
		a.flush(c)
		a.ack(c, b)
		return fmt.Errorf("%w: all %d events refused, first: %v", pmproto.ErrBadLine, len(bad), bad[0])
	}
	a.mu.Lock()
	p, ok := a.procs[b.PID]
	if ok && !p.bye && !p.sess.ended && reused(p, c) {
		gone := a.lostLife(p)
		a.mu.Unlock()
		a.publishLife(gone)
		a.mu.Lock()
		p, ok = a.procs[b.PID]
	}
	if ok && !p.bye && !p.sess.ended {
		if err := a.claim(c, p); err != nil {
			a.mu.Unlock()
			return err
		}
	}
	if !ok || p.bye || p.sess.ended {
		// Events before (or without) a hello: a shim that reconnected to a restarted agent.
		h := &pmproto.Hello{PID: b.PID, PPID: -1, Role: "", DP: -1, PP: -1, TP: -1, EP: -1, Rank: -1}
		if b.Ident != nil {
			h.Role, h.DP, h.PP, h.TP, h.EP, h.Rank = b.Ident.Role, b.Ident.DP, b.Ident.PP, b.Ident.TP, b.Ident.EP, b.Ident.Rank
		}
		a.mu.Unlock()
		if err := a.hello(c, h); err != nil {
			return err
		}
		a.mu.Lock()
		p = a.procs[b.PID]
		if p.conn != c {
			a.mu.Unlock()
			return fmt.Errorf("%w: pid %d is bound to another connection", pmproto.ErrBadLine, b.PID)
		}
	}
	if b.Ident != nil && *b.Ident != p.ident {
		p.ident = *b.Ident
		// vLLM sets a worker's ranks in Worker.__init__, after the shim's hello: a process still
		// named by its pid takes its rank token (w<rank>, eng<dp>) as soon as it is known.
		if p.token == "p"+strconv.Itoa(p.pid) {
			p.token = a.uniqueToken(p)
		}
	}
	// Leave out what this process already sent (it resends its buffer after a reconnect).
	seen, maxSeq := p.seen, p.maxSeq
	kept := make([]pmproto.EncodedEvent, 0, len(good))
	for i := range good {
		if seen && good[i].Seq <= maxSeq {
			continue
		}
		seen, maxSeq = true, good[i].Seq
		kept = append(kept, good[i])
	}
	dropped := p.dropped
	if b.Dropped > dropped {
		dropped = b.Dropped
	}
	head := BatchHead{Session: p.sess.id, Host: a.cfg.Host, Proc: p.token, PID: p.pid, Instance: p.instance, Ident: p.ident, Dropped: dropped}
	p.seen, p.maxSeq, p.dropped = seen, maxSeq, dropped
	p.events += int64(len(kept))
	a.mu.Unlock()

	// Queued with the connection's next flush, which acknowledges the line (batching.go).
	a.add(c, &head, kept, lastSeq(b))
	a.dupes.Add(int64(len(good) - len(kept)))
	return nil
}

// lastSeq is the highest seq of b's events (0 for none).
func lastSeq(b *pmproto.Batch) uint64 {
	var last uint64
	for i := range b.Events {
		last = max(last, b.Events[i].Seq)
	}
	return last
}

// ack tells the shim that every event of b is queued durably (in memory, spooled on shutdown,
// or on disk) or refused for good: {"t":"ctl","v":1,"op":"ack","seq":<last seq of b>}. A shim
// keeps unacknowledged batches and replays them after a reconnect, so lines an agent never read
// (still in its socket buffer when it stopped) are not lost; the agent drops replayed events it
// already has (maxSeq), the hub by message id. Batches the queue could not keep get no ack.
func (a *Agent) ack(c *conn, b *pmproto.Batch) { a.ackSeq(c, b.PID, lastSeq(b)) }

func (a *Agent) ackSeq(c *conn, pid int, last uint64) {
	if last == 0 {
		return
	}
	if err := c.sendAck(last); err != nil {
		a.log.Debug("ack not sent", "pid", pid, "err", err)
	}
}

// encodeEvents checks and encodes the agent's own events (GPU samples) into one message per kind;
// an event proto refuses is an error (a defect of the agent, not of a shim).
func (a *Agent) encodeEvents(head *BatchHead, evs []pmproto.Event) ([]Msg, error) {
	good, bad := pmproto.EncodeEvents(evs)
	if len(bad) > 0 {
		return nil, bad[0]
	}
	return splitBatch(head, good), nil
}

// MaxBatchData is the most encoded event data one stream message carries. A bigger shim batch is
// split, in order, into several messages (each with its own seq range as message id), so a large
// batch stays under NATS's max_payload (1 MiB by default) instead of being refused.
const MaxBatchData = 512 << 10

// splitBatch is batchMsgs over consecutive runs of evs of at most MaxBatchData bytes.
func splitBatch(head *BatchHead, evs []pmproto.EncodedEvent) []Msg {
	var msgs []Msg
	start, size := 0, 0
	for i := range evs {
		sz := len(evs[i].Data) + 4
		if i > start && size+sz > MaxBatchData {
			msgs = append(msgs, batchMsgs(head, evs[start:i])...)
			start, size = i, 0
		}
		size += sz
	}
	if start < len(evs) {
		msgs = append(msgs, batchMsgs(head, evs[start:])...)
	}
	return msgs
}

func (a *Agent) status(c *conn, s *pmproto.Status) error {
	a.mu.Lock()
	p, ok := a.procs[s.PID]
	if !ok {
		a.mu.Unlock()
		return nil
	}
	if err := a.claim(c, p); err != nil {
		a.mu.Unlock()
		return err
	}
	p.reportedOff = switchedOffKinds(s.Targets)
	l := &Life{Type: "status", Session: p.sess.id, Host: a.cfg.Host, Proc: p.token, PID: p.pid, Instance: p.instance, Ident: p.ident, Targets: s.Targets, Tables: s.Tables}
	a.mu.Unlock()
	a.publishLife(l)
	return nil
}

func (a *Agent) bye(c *conn, b *pmproto.Bye) error {
	a.mu.Lock()
	p, ok := a.procs[b.PID]
	if !ok || p.bye {
		a.mu.Unlock()
		return nil
	}
	if err := a.claim(c, p); err != nil {
		a.mu.Unlock()
		return err
	}
	if b.Dropped > p.dropped {
		p.dropped = b.Dropped
	}
	l := &Life{Type: "bye", Session: p.sess.id, Host: a.cfg.Host, Proc: p.token, PID: p.pid, Instance: p.instance, Ident: p.ident,
		Dropped: p.dropped, LastSeq: b.LastSeq, EndNS: b.EndNS, Clean: true, EndState: EndClean}
	if b.EndState == EndKilled {
		// The shim saw a signal end it after its last flush.
		l.EndState, l.EndSignal = EndKilled, b.EndSignal
	}
	p.endState, p.endSignal = l.EndState, l.EndSignal
	a.leave(p)
	a.mu.Unlock()
	a.publishLife(l)
	return nil
}

// leave marks a process gone (a.mu held) and schedules its session's end when it was the last.
func (a *Agent) leave(p *proc) {
	if p.bye {
		return
	}
	p.bye = true
	s := p.sess
	s.live--
	if s.live == 0 && a.cfg.SessionLinger > 0 && !s.ended {
		id := s.id
		s.timer = time.AfterFunc(a.cfg.SessionLinger, func() {
			a.mu.Lock()
			idle := s.live == 0
			a.mu.Unlock()
			if idle {
				a.endSession(id, "idle")
			}
		})
	}
}

// End states of a process, in its bye record (proto Lifecycle.Bye.end_state).
const (
	EndClean  = "clean"  // the shim said bye
	EndLost   = "lost"   // its connection or process went away without a bye
	EndKilled = "killed" // its parent saw it die of a signal (Lifecycle.Bye.end_signal)
)

// lostLife is the bye record of a process that went away without a bye (a.mu held); it marks
// the process gone.
func (a *Agent) lostLife(p *proc) *Life {
	l := &Life{Type: "bye", Session: p.sess.id, Host: a.cfg.Host, Proc: p.token, PID: p.pid, Instance: p.instance, Ident: p.ident,
		Dropped: p.dropped, LastSeq: p.maxSeq, EndNS: time.Now().UnixNano(), EndState: EndLost}
	p.endState = EndLost
	a.leave(p)
	return l
}

// watched reports whether the caller reports p's end itself (Exited) (a.mu held).
func (a *Agent) watched(p *proc) bool {
	return a.watch[p.pid] || (p.peer.OK && a.watch[int(p.peer.Pid)])
}

// Watch says that the caller is the parent of process pid and reports its end with Exited, so
// the agent does not record it as lost when its connection closes (`pmagent run` for its command).
func (a *Agent) Watch(pid int) {
	a.mu.Lock()
	a.watch[pid] = true
	a.mu.Unlock()
}

// Exited records the end of a watched process from its wait status: killed with the signal when
// a signal ended it, else lost unless it said bye (its own clean end stands).
func (a *Agent) Exited(pid int, ws syscall.WaitStatus) {
	a.mu.Lock()
	delete(a.watch, pid)
	var ls []*Life
	for _, p := range a.procs {
		if p.bye || !(p.pid == pid || (p.peer.OK && int(p.peer.Pid) == pid)) {
			continue
		}
		l := a.lostLife(p)
		if ws.Signaled() {
			l.EndState, l.EndSignal = EndKilled, signalName(ws.Signal())
			p.endState, p.endSignal = EndKilled, l.EndSignal
		}
		ls = append(ls, l)
	}
	a.mu.Unlock()
	for _, l := range ls {
		a.publishLife(l)
	}
}

// signalName is a signal's name as the shim writes it ("SIGKILL"); "signal N" when unknown.
func signalName(s syscall.Signal) string {
	if n := unix.SignalName(s); n != "" {
		return n
	}
	return fmt.Sprintf("signal %d", int(s))
}

// connGone handles a connection that closed: processes that are no longer alive have left
// (without a bye); live ones may reconnect.
func (a *Agent) connGone(c *conn) {
	a.mu.Lock()
	delete(a.conns, c)
	var byes []*Life
	for _, p := range c.pids {
		if p.conn == c {
			p.conn = nil
			if !p.bye && !a.watched(p) && !p.alive() {
				byes = append(byes, a.lostLife(p))
			}
		}
	}
	a.mu.Unlock()
	for _, l := range byes {
		a.publishLife(l)
	}
}

// reap marks processes gone that disconnected while alive and have exited since, so their
// sessions can end.
func (a *Agent) reap(ctx context.Context) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.mu.Lock()
		var byes []*Life
		for _, p := range a.procs {
			if p.conn == nil && !p.bye && !a.watched(p) && !p.alive() {
				byes = append(byes, a.lostLife(p))
			}
		}
		a.mu.Unlock()
		for _, l := range byes {
			a.publishLife(l)
		}
	}
}

// Control sends a control line to every connected shim (of one session when session is set) and
// returns how many got it. A session change also moves those processes to the new session here, so
// their next events are published under it; a profiler switch is kept per process for status
// (ProcStatus.Profilers, By SwitchedByHub: the only sender of controls is the hub's pm.v1.ctl).
func (a *Agent) Control(ctl pmproto.Ctl, session string) int {
	ctl.T, ctl.V = pmproto.LineCtl, pmproto.WireVersion
	now := time.Now().UnixNano()
	a.mu.Lock()
	var cs []*conn
	for c := range a.conns {
		matched := false
		for _, p := range c.pids {
			if p.bye || (session != "" && p.sess.id != session) {
				continue
			}
			matched = true
			if ctl.Op == "profiler" && ctl.Name != "" && ctl.Enabled != nil {
				if p.switches == nil {
					p.switches = map[string]ProfilerState{}
				}
				p.switches[ctl.Name] = ProfilerState{Kind: ctl.Name, Enabled: *ctl.Enabled, By: SwitchedByHub, AtNS: now}
			}
			if ctl.Op == "session" && ctl.Session != "" && p.sess.id != ctl.Session {
				a.moveProc(p, ctl.Session)
			}
		}
		if matched {
			cs = append(cs, c)
		}
	}
	a.mu.Unlock()
	n := 0
	for _, c := range cs {
		if c.send(ctl) == nil {
			n++
		}
	}
	return n
}

// moveProc puts a live process into session id (a.mu held).
func (a *Agent) moveProc(p *proc, id string) {
	old := p.sess
	delete(old.procs, p.pid)
	old.live--
	s, ok := a.sessions[id]
	if !ok || s.ended {
		s = a.newSession(id)
		delete(a.renamed, id)
	}
	s.procs[p.pid] = p
	s.live++
	p.sess = s
	p.token = a.uniqueToken(p)
}
