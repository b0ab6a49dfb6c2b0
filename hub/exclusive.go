package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/profilemate/profilemate/proto"
)

// Start-up refusals that keep hubs from silently sharing what only one may have: a hub id (two
// live hubs with one id would take each other's leases and overwrite each other's liveness
// entry) and the stream's readers (a single-mode hub reads every session, shared hubs own theirs:
// together they would write each session twice, in different folders).

// ErrHubIDInUse is returned by Start in shared mode when a live hub already has this hub's id.
var ErrHubIDInUse = errors.New("hub id in use by a live hub")

// ErrModeConflict is returned by Start when the stream is read in the other mode: a single-mode
// hub where shared hubs are live or hold leases, or a shared hub where the single-mode durable
// consumer exists.
var ErrModeConflict = errors.New("stream read in the other mode")

// absData is the data folder as an absolute, clean path (as given when that fails).
func absData(dir string) string {
	if a, err := filepath.Abs(dir); err == nil {
		return a
	}
	return dir
}

// entry is this hub's HubBucket value.
func (c *cluster) entry() []byte {
	host, _ := os.Hostname()
	v, _ := json.Marshal(hubEntry{Hub: c.s.cfg.HubID, StartNS: c.regNS, Data: absData(c.s.cfg.DataDir), Host: host})
	return v
}

// register puts this hub's liveness entry in HubBucket, refusing (ErrHubIDInUse) when the key is
// held by another live hub. An entry from the same host and data folder is this hub's own earlier
// run (the data folder lock says it is not running any more) and is taken over. A hub that died
// leaves its entry until the bucket's TTL (the lease TTL) ends it.
func (c *cluster) register(ctx context.Context) error {
	host, _ := os.Hostname()
	key := proto.Escape(c.s.cfg.HubID)
	c.regNS = c.s.cfg.Now().UnixNano()
	v := c.entry()
	for try := 0; try < 3; try++ {
		_, err := c.hubs.Create(ctx, key, v)
		if err == nil {
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("hub: register in %s: %w", HubBucket, err)
		}
		e, err := c.hubs.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // expired meanwhile
		}
		if err != nil {
			return fmt.Errorf("hub: register in %s: %w", HubBucket, err)
		}
		var other hubEntry
		_ = json.Unmarshal(e.Value(), &other)
		if other.Host == host && other.Data == absData(c.s.cfg.DataDir) {
			_, err := c.hubs.Put(ctx, key, v)
			if err != nil {
				return fmt.Errorf("hub: register in %s: %w", HubBucket, err)
			}
			return nil
		}
		return fmt.Errorf("hub: --hub-id %q: %w (host %q, data %q, started %s); give this hub another --hub-id, or stop that one (a hub that died keeps its id for up to %s)",
			c.s.cfg.HubID, ErrHubIDInUse, other.Host, other.Data, time.Unix(0, other.StartNS).UTC().Format(time.RFC3339), c.ttl)
	}
	return fmt.Errorf("hub: register in %s: key %q keeps changing", HubBucket, key)
}

// checkNoSharedHubs refuses single mode (ErrModeConflict) on a stream shared hubs use: live
// entries in HubBucket or sessions leased in LeaseBucket. Buckets that do not exist, or are
// empty (the shared hubs stopped and their leases expired), are no objection.
func (s *Server) checkNoSharedHubs(ctx context.Context) error {
	keysOf := func(bucket string) ([]string, error) {
		kv, err := s.js.KeyValue(ctx, bucket)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("hub: key-value bucket %s: %w", bucket, err)
		}
		keys, err := kv.Keys(ctx)
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("hub: key-value bucket %s: %w", bucket, err)
		}
		return keys, nil
	}
	hubs, err := keysOf(HubBucket)
	if err != nil {
		return err
	}
	leases, err := keysOf(LeaseBucket)
	if err != nil {
		return err
	}
	if len(hubs) == 0 && len(leases) == 0 {
		return nil
	}
	ids := make([]string, 0, len(hubs))
	for _, k := range hubs {
		if id, err := proto.Unescape(k); err == nil {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return fmt.Errorf("hub: single mode: %w: shared hubs use this stream (live hubs in %s: [%s]; sessions leased in %s: %d); a single-mode hub would write every session they own a second time: start this hub with --mode shared",
		ErrModeConflict, HubBucket, strings.Join(ids, " "), LeaseBucket, len(leases))
}

// checkNoSingleHub refuses shared mode (ErrModeConflict) on a stream that has the single-mode
// durable consumer (Config.Consumer, "pmhub"): a single-mode hub reads, or read, every session
// of it.
func (s *Server) checkNoSingleHub(ctx context.Context, st jetstream.Stream) error {
	_, err := st.Consumer(ctx, s.cfg.Consumer)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("hub: look for the single-mode consumer %s: %w", s.cfg.Consumer, err)
	}
	name := st.CachedInfo().Config.Name
	return fmt.Errorf("hub: shared mode: %w: the stream %s has the single-mode hub's durable consumer %q (a hub with --mode single, or on this cluster before shared mode); stop that hub and remove the consumer (nats consumer rm %s %s), then start the shared hubs",
		ErrModeConflict, name, s.cfg.Consumer, name, s.cfg.Consumer)
}
