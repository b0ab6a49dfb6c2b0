package agent

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	pmproto "github.com/profilemate/profilemate/proto"
)

// InstanceBucket is the JetStream key-value bucket that maps a multi-node vLLM instance's key to
// its session: the first agent to see a process of a new instance creates the entry, the agents
// of the other hosts read it.
const InstanceBucket = "PROFILEMATE_INSTANCES"

// Defaults of vLLM's rendezvous flags (vllm/config/parallel.py: master_port 29501,
// data_parallel_rpc_port 13345; master_addr and data_parallel_address 127.0.0.1).
const (
	defaultMasterAddr = "127.0.0.1"
	defaultMasterPort = "29501"
	defaultDPRPCPort  = "13345"
)

// instanceTimeout bounds one key-value round trip at hello; past it the process gets a session
// of its own host (logged), never a stuck hello.
const instanceTimeout = 5 * time.Second

// InstanceKey returns what every process of one multi-node vLLM instance shares, read from the
// command line of the process that starts it on a host (`vllm serve …` on the head and on each
// follower):
//   - multi-node MP (`--nnodes N` with N > 1): "mp:<master addr>:<master port>";
//   - multi-node DP (`--headless`, or `--data-parallel-size-local` below `--data-parallel-size`):
//     "dp:<data-parallel address>:<data-parallel RPC port>".
//
// Unset addresses and ports take vLLM's defaults. "" when argv starts no multi-node instance
// (spawned children carry spawn's argv: they join their parent's session instead).
func InstanceKey(argv []string) string {
	flags := map[string]string{}
	serve := false
	for i := 0; i < len(argv); i++ {
		a := argv[i]
		if a == "serve" {
			serve = true
			continue
		}
		if !strings.HasPrefix(a, "--") {
			continue
		}
		name, val, hasVal := strings.Cut(a[2:], "=")
		name = strings.ReplaceAll(name, "_", "-")
		if !hasVal {
			if name == "headless" {
				val = "true"
			} else if i+1 < len(argv) && !strings.HasPrefix(argv[i+1], "-") {
				val = argv[i+1]
				i++
			}
		}
		flags[name] = val
	}
	if !serve && flags["nnodes"] == "" && flags["data-parallel-address"] == "" {
		return ""
	}
	or := func(name, def string) string {
		if v := flags[name]; v != "" {
			return v
		}
		return def
	}
	if n, err := strconv.Atoi(flags["nnodes"]); err == nil && n > 1 {
		return "mp:" + or("master-addr", defaultMasterAddr) + ":" + or("master-port", defaultMasterPort)
	}
	size, _ := strconv.Atoi(flags["data-parallel-size"])
	local, errLocal := strconv.Atoi(flags["data-parallel-size-local"])
	if flags["headless"] == "true" || (errLocal == nil && size > local) {
		return "dp:" + or("data-parallel-address", defaultMasterAddr) + ":" + or("data-parallel-rpc-port", defaultDPRPCPort)
	}
	return ""
}

// instanceEntry is the value of one key in InstanceBucket (JSON).
type instanceEntry struct {
	Session string `json:"session"`
	Key     string `json:"key"`
	StartNS int64  `json:"start_ns"`           // when the first agent saw the instance, Unix ns
	EndedNS int64  `json:"ended_ns,omitempty"` // when an agent saw its last process leave; never reused after
	Host    string `json:"host"`               // the agent that created the entry
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
	val, err := json.Marshal(instanceEntry{Session: fresh, Key: key, StartNS: now.UnixNano(), Host: a.cfg.Host})
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
		if err := json.Unmarshal(e.Value(), &cur); err == nil && cur.Session != "" && cur.EndedNS == 0 {
			return cur.Session, nil
		}
		// Ended (or unreadable): a new run of the instance; first writer of this revision wins.
		if _, err := kv.Update(ctx, k, val, e.Revision()); err == nil {
			return fresh, nil
		}
	}
	return "", fmt.Errorf("instance %s: entry kept changing", key)
}

// instanceEnded marks the registry entry of session id ended (when it still names id), so that no
// later process of the same key joins it. No-op for sessions of no instance.
func (a *Agent) instanceEnded(id string) {
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
