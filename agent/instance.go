package agent

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	pmproto "github.com/profilemate/profilemate/proto"
)

// InstanceBucket is the JetStream key-value bucket that maps a multi-node vLLM instance's key to
// its session: the first agent to see a process of a new instance creates the entry, the agents
// of the other hosts read it.
const InstanceBucket = "PROFILEMATE_INSTANCES"

// instanceTimeout bounds one key-value round trip at hello; past it the process gets a session
// of its own host (logged), never a stuck hello.
const instanceTimeout = 5 * time.Second

// InstanceKey is proto.InstanceKey: the multi-node instance a `vllm serve` command line starts.
func InstanceKey(argv []string) string { return pmproto.InstanceKey(argv) }

// instanceEntry is the value of one key in InstanceBucket (JSON).
type instanceEntry struct {
	Session string `json:"session"`
	Key     string `json:"key"`
	StartNS int64  `json:"start_ns"`           // when the first agent saw the instance, Unix ns
	EndedNS int64  `json:"ended_ns,omitempty"` // when an agent saw its last process leave; never reused after
	Host    string `json:"host"`               // the agent that created the entry
	// SeenNS is when an agent with live processes of the instance last refreshed the entry
	// (every Config.InstanceRefresh), Unix ns. An entry neither ended nor refreshed for
	// instanceStaleAfter refresh periods belongs to a run whose agents all died (kill -9, a lost
	// host) and is never joined again.
	SeenNS int64 `json:"seen_ns,omitempty"`
}

// DefaultInstanceRefresh is how often an agent refreshes the registry entries of the instances it
// has live processes of (Config.InstanceRefresh when 0).
const DefaultInstanceRefresh = 10 * time.Second

// instanceStaleAfter is how many refresh periods an open entry may go without a refresh before
// it counts as ended.
const instanceStaleAfter = 3

func (a *Agent) instanceRefresh() time.Duration {
	if a.cfg.InstanceRefresh > 0 {
		return a.cfg.InstanceRefresh
	}
	return DefaultInstanceRefresh
}

// live reports whether e names a run that may still have processes: not ended, and refreshed (or
// created) within instanceStaleAfter refresh periods of now.
func (e *instanceEntry) live(now time.Time, refresh time.Duration) bool {
	if e.Session == "" || e.EndedNS != 0 {
		return false
	}
	return now.UnixNano()-max(e.StartNS, e.SeenNS) < int64(instanceStaleAfter)*int64(refresh)
}

// refreshInstances refreshes, every refresh period until ctx ends, the registry entry of each
// instance this agent has live processes of, so other agents can tell a running instance from one
// whose agents died without marking it ended.
func (a *Agent) refreshInstances(ctx context.Context) {
	t := time.NewTicker(a.instanceRefresh())
	defer t.Stop()
	warned := map[string]bool{} // keys whose failed refresh was logged: once until one succeeds
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.mu.Lock()
		live := map[string]string{} // key -> session
		for key, id := range a.instances {
			if s, ok := a.sessions[id]; ok && !s.ended && s.live > 0 {
				live[key] = id
			}
		}
		a.mu.Unlock()
		for key, id := range live {
			err := a.touchInstance(ctx, key, id)
			if err != nil && !warned[key] {
				a.log.Warn("refresh instance entry (other agents may take the instance for ended)", "instance", key, "session", id, "err", err)
			}
			warned[key] = err != nil
		}
		for key := range warned {
			if _, ok := live[key]; !ok {
				delete(warned, key)
			}
		}
	}
}

// touchInstance sets SeenNS of key's entry to now while it still names session id.
func (a *Agent) touchInstance(ctx context.Context, key, id string) error {
	ctx, cancel := context.WithTimeout(ctx, instanceTimeout)
	defer cancel()
	kv, err := a.instanceKV(ctx)
	if err != nil {
		return err
	}
	k := instanceKVKey(key)
	for try := 0; try < 3; try++ {
		e, err := kv.Get(ctx, k)
		if err != nil {
			return fmt.Errorf("get %s: %w", key, err)
		}
		var cur instanceEntry
		if json.Unmarshal(e.Value(), &cur) != nil || cur.Session != id || cur.EndedNS != 0 {
			return nil
		}
		cur.SeenNS = time.Now().UnixNano()
		val, err := json.Marshal(cur)
		if err != nil {
			return err
		}
		if _, err := kv.Update(ctx, k, val, e.Revision()); err == nil {
			return nil
		}
		// another agent of the instance refreshed it meanwhile: read again
	}
	return nil
}

// instanceSession returns the session of h's multi-node instance (h.InstanceKey, else
// InstanceKey(h.Argv)), or "" when h names none, or when the agent has a fixed session or the
// process was started with one (h.SessionGiven): those win. A host's first process of an instance looks the key
// up in InstanceBucket: an open entry is joined, a missing or ended one is replaced by fresh (first
// writer wins when two agents race). The local binding of an instance whose processes all left is
// ended first, so a restart on the same port gets a new session. Called without a.mu.
func (a *Agent) instanceSession(h *pmproto.Hello) string {
	if a.cfg.Session != "" || h.SessionGiven {
		return ""
	}
	key := h.InstanceKey
	if key == "" {
		key = InstanceKey(h.Argv)
	}
	if key == "" {
		return ""
	}
	a.mu.Lock()
	id, bound := a.instances[key]
	var old string
	if bound {
		s, ok := a.sessions[id]
		if ok && !s.ended && s.live > 0 {
			a.mu.Unlock()
			return id
		}
		if ok && !s.ended {
			old = id
		}
		delete(a.instances, key)
	}
	a.mu.Unlock()
	if old != "" {
		// Every process of the previous run left: this process starts a new run.
		a.endSession(old, "instance restarted")
	}
	now := time.Now()
	fresh := NewSessionID(now)
	sess, err := a.joinInstance(key, fresh, now)
	if err != nil {
		a.log.Warn("instance registry unavailable; the instance's processes on this host get a session of their own",
			"instance", key, "err", err)
		sess = fresh
	}
	a.mu.Lock()
	if cur, ok := a.instances[key]; ok {
		sess = cur // another process of the instance said hello meanwhile
	} else {
		a.instances[key] = sess
		a.instanceOf[sess] = key
	}
	if h.Session != "" && h.Session != sess {
		// Children inherit the name the shim chose before the agent's answer reached it.
		a.renamed[h.Session] = sess
	}
	a.mu.Unlock()
	a.log.Info("multi-node instance", "instance", key, "session", sess, "created", sess == fresh)
	return sess
}

// instanceKV opens (creating when missing) InstanceBucket; errors when the agent publishes
// without JetStream.
func (a *Agent) instanceKV(ctx context.Context) (jetstream.KeyValue, error) {
	if a.pub == nil || a.pub.js == nil {
		return nil, errors.New("no JetStream connection")
	}
	kv, err := a.pub.js.KeyValue(ctx, InstanceBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = a.pub.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: InstanceBucket,
			Description: "multi-node vLLM instance key -> ProfileMate session", TTL: 7 * 24 * time.Hour})
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = a.pub.js.KeyValue(ctx, InstanceBucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("open key-value bucket %s: %w", InstanceBucket, err)
	}
	return kv, nil
}

// instanceKVKey encodes an instance key into the bucket's key alphabet (injective).
func instanceKVKey(key string) string { return "i" + hex.EncodeToString([]byte(key)) }

// joinInstance returns the open session of key in InstanceBucket, or records fresh as it.
func (a *Agent) joinInstance(key, fresh string, now time.Time) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), instanceTimeout)
	defer cancel()
	kv, err := a.instanceKV(ctx)
	if err != nil {
		return "", err
	}
	val, err := json.Marshal(instanceEntry{Session: fresh, Key: key, StartNS: now.UnixNano(), SeenNS: now.UnixNano(), Host: a.cfg.Host})
	if err != nil {
		return "", err
	}
	k := instanceKVKey(key)
	for try := 0; try < 8; try++ {
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			if _, err := kv.Create(ctx, k, val); err == nil {
				return fresh, nil
			} else if !errors.Is(err, jetstream.ErrKeyExists) {
				return "", fmt.Errorf("create %s: %w", key, err)
			}
			continue // another agent was first: read its entry
		}
		if err != nil {
			return "", fmt.Errorf("get %s: %w", key, err)
		}
		var cur instanceEntry
		if err := json.Unmarshal(e.Value(), &cur); err == nil && cur.live(now, a.instanceRefresh()) {
			return cur.Session, nil
		}
		// Ended, stale (its agents died) or unreadable: a new run of the instance; first writer
		// of this revision wins.
		if _, err := kv.Update(ctx, k, val, e.Revision()); err == nil {
			return fresh, nil
		}
	}
	return "", fmt.Errorf("instance %s: entry kept changing", key)
}

// instanceEnded marks the registry entry of session id ended (when it still names id), so that no
// later process of the same key joins it. No-op for sessions of no instance.
func (a *Agent) instanceEnded(id string) {
	a.layout.forget(id)
	a.mu.Lock()
	key, ok := a.instanceOf[id]
	delete(a.instanceOf, id)
	if ok && a.instances[key] == id {
		delete(a.instances, key)
	}
	a.mu.Unlock()
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), instanceTimeout)
	defer cancel()
	kv, err := a.instanceKV(ctx)
	if err != nil {
		return
	}
	k := instanceKVKey(key)
	e, err := kv.Get(ctx, k)
	if err != nil {
		return
	}
	var cur instanceEntry
	if json.Unmarshal(e.Value(), &cur) != nil || cur.Session != id || cur.EndedNS != 0 {
		return
	}
	cur.EndedNS = time.Now().UnixNano()
	if val, err := json.Marshal(cur); err == nil {
		if _, err := kv.Update(ctx, k, val, e.Revision()); err != nil {
			a.log.Warn("mark instance ended", "instance", key, "session", id, "err", err)
		}
	}
}

// joinLate moves a live process into its instance's session inst when it learns its instance
// after its first hello (a Ray actor receives PROFILEMATE_INSTANCE_KEY only after it started; its
// shim then says hello again). Returns the id of the session it left when that one has no process
// left, for the caller to end (a.mu held).
func (a *Agent) joinLate(p *proc, inst string) string {
	old := p.sess
	a.moveProc(p, inst)
	a.log.Info("process joined its multi-node instance", "pid", p.pid, "session", inst, "left", old.id)
	if old.live == 0 && len(old.procs) == 0 && !old.ended {
		return old.id
	}
	return ""
}

// layouts is where each process of this host sits in its multi-node instance: the instance key
// and node rank its hello's command line or PROFILEMATE_INSTANCE_KEY names, else its parent's
// (EngineCore and workers are spawned with spawn's argv); the agent's own records of a session
// take that of the session's first process that named one. Its own lock: filled at hello, read
// by every lifecycle record.
type layouts struct {
	mu    sync.Mutex
	procs map[int]procLayout    // by pid
	sess  map[string]procLayout // by session: the first process's that named an instance
}

type procLayout struct {
	key, session string
	node         int // -1: unknown
}

// learn records the layout of the process that said hello h into session sess. sameNS says the
// process's pids are the agent's (its connection's peer pid is its own pid): then an ancestor
// that said no hello (a headless `vllm serve` whose process never imported a vLLM target) is
// read from /proc.
func (l *layouts) learn(h *pmproto.Hello, sess string, sameNS bool) {
	pl := procLayout{key: h.InstanceKey, session: sess, node: -1}
	if k := pmproto.InstanceKey(h.Argv); k != "" {
		if pl.key == "" || pl.key == k {
			pl.key, pl.node = k, pmproto.NodeRank(h.Argv)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.procs == nil {
		l.procs, l.sess = map[int]procLayout{}, map[string]procLayout{}
	}
	if pl.key == "" {
		if par, ok := l.procs[h.PPID]; ok && par.key != "" && par.session == sess {
			pl.key, pl.node = par.key, par.node
		} else if !ok && sameNS {
			pl.key, pl.node = ancestorInstance(h.PPID)
		}
	}
	if pl.key != "" {
		if _, ok := l.sess[sess]; !ok {
			l.sess[sess] = pl
		}
	}
	l.procs[h.PID] = pl
}

// procRoot is where ancestorInstance reads processes (a variable for tests).
var procRoot = "/proc"

// ancestorInstance reads the command lines of pid and up to three of its ancestors from /proc and
// returns the instance key and node rank of the first that starts a multi-node instance ("" and
// -1 when none does or /proc cannot be read).
func ancestorInstance(pid int) (string, int) {
	for i := 0; i < 4 && pid > 1; i++ {
		b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "cmdline"))
		if err != nil {
			return "", -1
		}
		argv := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if k := pmproto.InstanceKey(argv); k != "" {
			return k, pmproto.NodeRank(argv)
		}
		st, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "status"))
		if err != nil {
			return "", -1
		}
		next := 0
		for _, line := range strings.Split(string(st), "\n") {
			if v, ok := strings.CutPrefix(line, "PPid:"); ok {
				next, _ = strconv.Atoi(strings.TrimSpace(v))
			}
		}
		pid = next
	}
	return "", -1
}

// fill sets rec's InstanceKey and NodeRank from its process's layout (agent records: its
// session's).
func (l *layouts) fill(rec *Life) {
	l.mu.Lock()
	defer l.mu.Unlock()
	pl, ok := l.procs[rec.PID]
	if !ok || pl.session != rec.Session {
		pl, ok = l.sess[rec.Session]
		if !ok || rec.Proc != "agent" {
			return
		}
	}
	rec.InstanceKey = pl.key
	if pl.node >= 0 {
		n := int32(pl.node)
		rec.NodeRank = &n
	}
}

// forget drops the layouts of session id (ended).
func (l *layouts) forget(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.sess, id)
	for pid, pl := range l.procs {
		if pl.session == id {
			delete(l.procs, pid)
		}
	}
}
