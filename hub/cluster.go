package hub

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/profilemate/profilemate/proto"
)

// Shared mode: several hubs on one NATS cluster share the sessions of one PROFILEMATE stream
// (docs/SCALING.md). Each hub
//   - says it is alive: a key in HubBucket (TTL = lease TTL), put every third of it;
//   - discovers sessions: a headers-only ordered consumer over the event and lifecycle subjects
//     (the last message of every subject, then every new one), and the session index;
//   - claims a session by creating its lease (lease.go). The live hub that ranks first for the
//     session by rendezvous hashing claims at once, the others only when it is still unclaimed
//     a grace period later;
//   - materialises an owned session with an ordered consumer filtered to the session's subjects,
//     checkpoints its folder to the Object Store (checkpoint.go) every CheckpointEvery and when
//     it ends, and updates its entry in the session index (index.go);
//   - renews its leases every third of the TTL; a lease it finds lost stops that session at once;
//   - hands an owned session over to its first choice when that hub joined later (rebalance).
// A hub that claims a session restores its latest checkpoint and consumes from the checkpoint's
// sequence + 1: the seen-sets rebuilt from the restored files skip what the files already hold,
// so a takeover writes every row exactly once.

// Buckets of shared mode, created with the stream's replica count when missing.
const (
	HubBucket        = "PROFILEMATE_HUBS"
	LeaseBucket      = "PROFILEMATE_LEASES"
	IndexBucket      = "PROFILEMATE_SESSIONS"
	CheckpointBucket = "PROFILEMATE_CHECKPOINTS"
	// InstanceBucket is the agents' multi-node instance -> session map (agent.InstanceBucket); a
	// shared hub creates it replicated so losing one NATS node does not lose it.
	InstanceBucket = "PROFILEMATE_INSTANCES"
)

// Shared-mode defaults.
const (
	DefaultLeaseTTL        = 15 * time.Second
	DefaultCheckpointEvery = 5 * time.Second
	minLeaseTTL            = time.Second
)

var hubIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// DefaultHubID is the host name (characters outside [A-Za-z0-9_.-] dropped) and 6 random hex
// digits, so two hubs on one host differ.
func DefaultHubID() string {
	host, _ := os.Hostname()
	host = strings.Map(func(r rune) rune {
		if r < 128 && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return r
		}
		return -1
	}, host)
	if host == "" || !hubIDRE.MatchString(host) {
		host = "pmhub"
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%.100s-%s", host, hex.EncodeToString(b[:]))
}

// sharedDefaults checks and fills the replica and shared-mode settings.
func (c *Config) sharedDefaults() error {
	if c.StreamReplicas < 0 {
		return errors.New("hub: stream replicas must not be negative")
	}
	if c.StreamReplicas == 0 {
		c.StreamReplicas = 1
	}
	if c.StreamReplicas > 1 && c.NATSURL == "" {
		return fmt.Errorf("hub: %d stream replicas need a NATS cluster (--nats); the embedded server is one node", c.StreamReplicas)
	}
	if !c.Shared {
		return nil
	}
	if c.HubID == "" {
		c.HubID = DefaultHubID()
	}
	if !hubIDRE.MatchString(c.HubID) {
		return fmt.Errorf("hub: hub id %q: want [A-Za-z0-9][A-Za-z0-9_.-]*, at most 128 bytes", c.HubID)
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.LeaseTTL < minLeaseTTL {
		return fmt.Errorf("hub: lease TTL %s: at least %s", c.LeaseTTL, minLeaseTTL)
	}
	if c.CheckpointEvery == 0 {
		c.CheckpointEvery = DefaultCheckpointEvery
	}
	if c.CheckpointEvery < 0 {
		return errors.New("hub: checkpoint interval must be positive")
	}
	if c.CacheMaxAge == 0 {
		c.CacheMaxAge = DefaultCacheMaxAge
	}
	if c.CacheMaxBytes == 0 {
		c.CacheMaxBytes = DefaultCacheMaxBytes
	}
	return nil
}

// cluster is a shared hub's view of the other hubs and its sessions.
type cluster struct {
	s      *Server
	hubs   jetstream.KeyValue
	index  jetstream.KeyValue
	obs    jetstream.ObjectStore
	ls     *leases
	ttl    time.Duration // the lease bucket's TTL (its creator's --lease-ttl)
	ctx    context.Context
	cancel context.CancelFunc

	mu    sync.Mutex
	owned map[string]*ownedSession
	known map[string]*knownSession
	idx   map[string]IndexEntry
	live  []string // hub ids alive at the last look, this one included
	wg    sync.WaitGroup
	// kick wakes runShared's loop to evaluate at once (buffer 1): discovery found a new session.
	kick chan struct{}
	// since is when each live hub was first seen live; moved is when this hub handed a session
	// over (rebalance).
	since map[string]time.Time
	moved map[string]time.Time
	// retaining is set while a shared retention pass runs (retention.go).
	retaining atomic.Bool
}

// knownSession is what a hub knows of a session it does not own.
type knownSession struct {
	lastSeq      uint64    // newest stream message seen for it
	checked      time.Time // last lease look-up
	holder       string    // hub holding its lease at that look-up
	unownedSince time.Time // first look-up that found no lease (zero: held)
}

// hubEntry is a HubBucket value.
type hubEntry struct {
	Hub     string `json:"hub"`
	StartNS int64  `json:"start_ns"`
	Data    string `json:"data"`
}

// bucket opens a KV bucket, creating it with cfg when missing.
func (s *Server) bucket(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, err := s.js.KeyValue(ctx, cfg.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		cfg.Replicas = s.cfg.StreamReplicas
		kv, err = s.js.CreateKeyValue(ctx, cfg)
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = s.js.KeyValue(ctx, cfg.Bucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("hub: key-value bucket %s: %w", cfg.Bucket, err)
	}
	return kv, nil
}

// startCluster opens (or creates) the shared buckets, registers this hub and loads the index.
func (s *Server) startCluster(ctx context.Context) error {
	c := &cluster{s: s, owned: map[string]*ownedSession{}, known: map[string]*knownSession{}, idx: map[string]IndexEntry{},
		kick: make(chan struct{}, 1), since: map[string]time.Time{}, moved: map[string]time.Time{}}
	var err error
	if c.hubs, err = s.bucket(ctx, jetstream.KeyValueConfig{Bucket: HubBucket, Description: "live pmhub instances", TTL: s.cfg.LeaseTTL}); err != nil {
		return err
	}
	lk, err := s.bucket(ctx, jetstream.KeyValueConfig{Bucket: LeaseBucket, Description: "session -> owning pmhub (leases)", TTL: s.cfg.LeaseTTL})
	if err != nil {
		return err
	}
	if c.index, err = s.bucket(ctx, jetstream.KeyValueConfig{Bucket: IndexBucket, Description: "ProfileMate session index"}); err != nil {
		return err
	}
	if _, err := s.bucket(ctx, jetstream.KeyValueConfig{Bucket: InstanceBucket,
		Description: "multi-node vLLM instance key -> ProfileMate session", TTL: 7 * 24 * time.Hour}); err != nil {
		return err
	}
	c.obs, err = s.js.ObjectStore(ctx, CheckpointBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		c.obs, err = s.js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: CheckpointBucket,
			Description: "ProfileMate session checkpoints", Replicas: s.cfg.StreamReplicas})
		if errors.Is(err, jetstream.ErrBucketExists) {
			c.obs, err = s.js.ObjectStore(ctx, CheckpointBucket)
		}
	}
	if err != nil {
		return fmt.Errorf("hub: object store %s: %w", CheckpointBucket, err)
	}
	st, err := lk.Status(ctx)
	if err != nil {
		return fmt.Errorf("hub: key-value bucket %s: %w", LeaseBucket, err)
	}
	c.ttl = st.TTL()
	if c.ttl != s.cfg.LeaseTTL {
		s.log.Warn("lease bucket exists with another TTL; using it", "ttl", c.ttl, "asked", s.cfg.LeaseTTL)
	}
	if c.ttl < minLeaseTTL {
		return fmt.Errorf("hub: key-value bucket %s has TTL %s: leases need at least %s", LeaseBucket, c.ttl, minLeaseTTL)
	}
	c.ls = &leases{kv: lk, hub: s.cfg.HubID, now: s.cfg.Now}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	if err := c.watchIndex(ctx); err != nil {
		c.cancel()
		return err
	}
	if err := c.alive(ctx); err != nil {
		c.cancel()
		return err
	}
	s.cl = c
	return nil
}

// alive puts this hub's liveness key and reads the live hubs.
func (c *cluster) alive(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.ttl/3)
	defer cancel()
	v, _ := json.Marshal(hubEntry{Hub: c.s.cfg.HubID, StartNS: c.s.started.UnixNano(), Data: c.s.cfg.DataDir})
	if _, err := c.hubs.Put(ctx, proto.Escape(c.s.cfg.HubID), v); err != nil {
		return fmt.Errorf("hub: register in %s: %w", HubBucket, err)
	}
	keys, err := c.hubs.Keys(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
		return fmt.Errorf("hub: list %s: %w", HubBucket, err)
	}
	live := []string{c.s.cfg.HubID}
	for _, k := range keys {
		if id, err := proto.Unescape(k); err == nil && id != c.s.cfg.HubID {
			live = append(live, id)
		}
	}
	now := time.Now()
	c.mu.Lock()
	c.live = live
	since := make(map[string]time.Time, len(live))
	for _, h := range live {
		if t, ok := c.since[h]; ok {
			since[h] = t
		} else {
			since[h] = now
		}
	}
	c.since = since
	c.mu.Unlock()
	return nil
}

// rebalance hands over, at a safe point, the owned sessions whose rendezvous first choice is
// another live hub that has been live for at least one lease TTL (a hub that joined, not one
// flapping): the session's goroutine stops after its current round, commits, checkpoints and
// releases the lease (runOwned's stop path), and the first choice claims it and restores that
// checkpoint. This hub does not claim a session it handed over for one lease TTL, unless it
// ranks first on it again.
func (c *cluster) rebalance(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, o := range c.owned {
		if o.lost.Load() || o.moving.Load() {
			continue
		}
		first := firstChoice(c.live, id)
		if t, ok := c.since[first]; first == c.s.cfg.HubID || !ok || now.Sub(t) < c.ttl {
			continue
		}
		o.moving.Store(true)
		c.moved[id] = now
		c.s.log.Info("session handed over to its first choice", "session", id, "to", first)
		o.cancel()
	}
	for id, t := range c.moved {
		if now.Sub(t) >= c.ttl {
			delete(c.moved, id)
		}
	}
}

// rendezvous is session's score on hub: the highest-scoring live hub is the session's first
// choice (highest-random-weight hashing: stable, needs no coordinator, and a hub joining or
// leaving moves only the sessions it wins or held).
func rendezvous(hub, session string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(hub))
	h.Write([]byte{0})
	h.Write([]byte(session))
	x := h.Sum64()
	// splitmix64's finaliser: FNV's low bits alone spread poorly.
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// firstChoice returns the live hub session ranks first on.
func firstChoice(live []string, session string) string {
	best, bestScore := "", uint64(0)
	for _, h := range live {
		if sc := rendezvous(h, session); best == "" || sc > bestScore || (sc == bestScore && h < best) {
			best, bestScore = h, sc
		}
	}
	return best
}

// runShared is Run in shared mode.
func (s *Server) runShared(ctx context.Context) error {
	c := s.cl
	c.wg.Add(2)
	go func() { defer c.wg.Done(); c.discover(ctx) }()
	go func() { defer c.wg.Done(); c.heartbeats(ctx) }()
	tick := min(c.ttl/6, 500*time.Millisecond)
	t := time.NewTicker(tick)
	defer t.Stop()
	lastRetention, lastRenew := time.Time{}, time.Now()
	for ctx.Err() == nil {
		tick := false
		select {
		case <-ctx.Done():
		case <-t.C:
			tick = true
		case <-c.kick: // discovery found a new session: claim it now, not at the next tick
		}
		if ctx.Err() != nil {
			break
		}
		if tick {
			s.housekeep(&lastRetention)
			if time.Since(lastRenew) >= c.ttl/3 {
				lastRenew = time.Now()
				if err := c.alive(ctx); err != nil {
					s.log.Warn("liveness not renewed", "err", err)
				}
				c.renewAll(ctx)
				c.rebalance(time.Now())
			}
		}
		c.evaluate(ctx)
	}
	// Owned sessions end their consumers, checkpoint and release their leases (runOwned).
	c.wg.Wait()
	dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = c.hubs.Delete(dctx, proto.Escape(s.cfg.HubID))
	cancel()
	return nil
}

// renewAll renews every owned lease; a lost one stops its session.
func (c *cluster) renewAll(ctx context.Context) {
	c.mu.Lock()
	owned := make([]*ownedSession, 0, len(c.owned))
	for _, o := range c.owned {
		owned = append(owned, o)
	}
	c.mu.Unlock()
	for _, o := range owned {
		if o.lost.Load() {
			continue // stopping
		}
		if err := o.renew(ctx, c.ls, c.ttl/3); err != nil {
			if errors.Is(err, ErrLeaseLost) {
				c.s.log.Warn("session lease lost; stopping the session here", "session", o.id)
				o.lose()
				continue
			}
			c.s.log.Warn("session lease not renewed", "session", o.id, "err", err)
		}
	}
}

// noteSeen records a stream message of session seen by discovery.
func (c *cluster) noteSeen(session string, seq uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.owned[session] != nil {
		return
	}
	k := c.known[session]
	if k == nil {
		k = &knownSession{}
		c.known[session] = k
		select {
		case c.kick <- struct{}{}:
		default: // one pending kick covers every session found until it is handled
		}
	}
	k.lastSeq = max(k.lastSeq, seq)
}

// evaluate looks at every session known to need an owner and claims those this hub should.
func (c *cluster) evaluate(ctx context.Context) {
	now := time.Now()
	grace := c.ttl / 3
	type cand struct {
		id  string
		k   knownSession
		top bool
	}
	var cands []cand
	c.mu.Lock()
	// Every session the index names as active or owned is watched, so one whose owner died (or
	// whose last index write was lost) gets an owner without waiting for a new message.
	for id, e := range c.idx {
		if !finished(e, 0) && c.owned[id] == nil && c.known[id] == nil {
			c.known[id] = &knownSession{lastSeq: e.CheckpointSeq}
		}
	}
	for id, k := range c.known {
		if c.owned[id] != nil {
			delete(c.known, id)
			continue
		}
		if ie, ok := c.idx[id]; ok && finished(ie, k.lastSeq) {
			delete(c.known, id) // finished and nothing new since its final checkpoint
			continue
		}
		if k.holder != "" && now.Sub(k.checked) < grace {
			continue
		}
		cands = append(cands, cand{id: id, k: *k, top: firstChoice(c.live, id) == c.s.cfg.HubID})
	}
	c.mu.Unlock()
	for _, cd := range cands {
		if ctx.Err() != nil {
			return
		}
		lctx, cancel := context.WithTimeout(ctx, c.ttl/3)
		holder, err := c.ls.holder(lctx, cd.id)
		cancel()
		if err != nil {
			c.s.log.Debug("lease look-up failed", "session", cd.id, "err", err)
			continue
		}
		c.mu.Lock()
		k := c.known[cd.id]
		if k == nil {
			c.mu.Unlock()
			continue
		}
		k.checked, k.holder = now, holder
		if holder != "" {
			k.unownedSince = time.Time{}
			c.mu.Unlock()
			continue
		}
		if k.unownedSince.IsZero() {
			k.unownedSince = now
		}
		_, handedOver := c.moved[cd.id]
		claim := cd.top || (now.Sub(k.unownedSince) >= grace && !handedOver)
		c.mu.Unlock()
		if claim {
			c.claim(ctx, cd.id, cd.k.lastSeq)
		}
	}
}

// claim tries to take session's lease and, when it did, starts owning the session. lastSeq is the
// newest stream message discovery saw for it: a session the index says was finished at that
// message or later needs no owner (the index is read again here: the watched copy may lag).
func (c *cluster) claim(ctx context.Context, session string, lastSeq uint64) {
	lctx, cancel := context.WithTimeout(ctx, c.ttl/3)
	defer cancel()
	if e, err := lookupIndex(lctx, c.s.js, session); err == nil && finished(e, lastSeq) {
		c.mu.Lock()
		c.idx[session] = e
		delete(c.known, session)
		c.mu.Unlock()
		return
	}
	rev, ok, err := c.ls.claim(lctx, session)
	if err != nil {
		c.s.log.Warn("session claim failed", "session", session, "err", err)
		return
	}
	if !ok {
		return
	}
	octx, ocancel := context.WithCancel(ctx)
	o := &ownedSession{id: session, rev: rev, cancel: ocancel, done: make(chan struct{})}
	c.mu.Lock()
	c.owned[session] = o
	delete(c.known, session)
	c.mu.Unlock()
	c.s.log.Info("session claimed", "session", session, "hub", c.s.cfg.HubID)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.runOwned(octx, o)
	}()
}

// forget drops an owned session from the cluster's books; discovery may find it again.
func (c *cluster) forget(o *ownedSession) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.owned[o.id] == o {
		delete(c.owned, o.id)
	}
}

// discover follows the last message of every event and lifecycle subject, then every new one,
// headers only, and notes which sessions have messages.
func (c *cluster) discover(ctx context.Context) {
	s := c.s
	f := &follower{js: s.js, buffer: 1024, cfg: jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{proto.EventPrefix + ".>", proto.LifePrefix + ".>"},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy, HeadersOnly: true,
	}}
	defer f.reset()
	for ctx.Err() == nil {
		msgs, err := f.next(ctx, 1024, time.Second)
		if err != nil {
			s.log.Debug("session discovery", "err", err)
			sleepCtx(ctx, time.Second)
			continue
		}
		for _, m := range msgs {
			id, ok := sessionOfSubject(m.Subject())
			if !ok {
				continue
			}
			if md, err := m.Metadata(); err == nil {
				c.noteSeen(id, md.Sequence.Stream)
			}
		}
	}
}

// heartbeats applies every host's heartbeats (the last one of each host, then new ones) to the
// hub's clock offsets and its owned sessions.
func (c *cluster) heartbeats(ctx context.Context) {
	s := c.s
	f := &follower{js: s.js, buffer: 256, cfg: jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{proto.HeartbeatPrefix + ".>"}, DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy,
	}}
	defer f.reset()
	for ctx.Err() == nil {
		msgs, err := f.next(ctx, 256, time.Second)
		if err != nil {
			s.log.Debug("heartbeats", "err", err)
			sleepCtx(ctx, time.Second)
			continue
		}
		if len(msgs) == 0 {
			continue
		}
		dec := s.decodeAll(msgs)
		now := s.cfg.Now()
		s.mu.Lock()
		for i, m := range msgs {
			_, _, _ = s.handle(m, dec[i], now)
		}
		s.mu.Unlock()
	}
}

// sessionOfSubject returns the session of an event or lifecycle subject.
func sessionOfSubject(subj string) (string, bool) {
	t := strings.SplitN(subj, ".", 5)
	if len(t) < 5 || t[0]+"."+t[1] != proto.SubjectRoot || (t[2] != "ev" && t[2] != "life") {
		return "", false
	}
	id, err := proto.Unescape(t[3])
	if err != nil || !sessionRE.MatchString(id) {
		return "", false
	}
	return id, true
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// closeCluster stops the index watcher.
func (c *cluster) close() {
	if c != nil && c.cancel != nil {
		c.cancel()
	}
}

// sharedHealth is Health in shared mode: the cluster connection, and the newest stream sequence
// applied over the owned sessions.
func (s *Server) sharedHealth() Health {
	h := Health{Consumer: "shared:" + s.cfg.HubID, ConsumerRecreated: s.cnt.snapshot().ConsumerRecreated}
	if !s.nc.IsConnected() {
		h.Error = "not connected to NATS: " + s.nc.Status().String()
	}
	h.OK = h.Error == ""
	return h
}

// attachShared adds a shared hub's series: profilemate_hub_info{hub,mode} (1; join on it to name
// a scrape target's hub), the sessions it owns and the checkpoints it stored. Every other series
// of a shared hub covers only the sessions it owns, so sums over scrape targets (Prometheus'
// instance label) count each event once (docs/SCALING.md "Metrics").
func (m *Metrics) attachShared(s *Server) {
	mode, id := "single", ""
	if s.cfg.Shared {
		mode, id = "shared", s.cfg.HubID
	}
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "profilemate_hub_info",
		Help: "1, labelled with this hub's id (shared mode) and mode (single or shared)"}, []string{"hub", "mode"})
	info.WithLabelValues(id, mode).Set(1)
	m.reg.MustRegister(info)
	if !s.cfg.Shared {
		return
	}
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "profilemate_hub_sessions_owned",
		Help: "sessions whose lease this hub holds (shared mode)"}, func() float64 { return float64(s.Counters().Owned) }))
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "profilemate_hub_checkpoints_total",
		Help: "session checkpoints stored in the Object Store (shared mode)"}, func() float64 { return float64(s.Counters().Checkpoints) }))
}
