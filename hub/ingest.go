package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Ingest liveness: the hub tracks the stream sequence it has applied through, persists it in
// <data>/ingest.json, checks that its durable consumer still exists, and recreates a lost consumer
// from the next sequence, so deleting the consumer from any client cannot stop ingest silently.

// consumerCheckEvery is how often the consumer's existence and lag are checked.
const consumerCheckEvery = 2 * time.Second

// stallAfter: with messages pending, no apply for this long makes the hub unhealthy.
const stallAfter = 60 * time.Second

// ingestFile is the persisted ingest position under the data folder.
const ingestFile = "ingest.json"

// ingestState is ingest.json: the stream sequence through which every message was applied
// (acknowledged or given up on), so a lost consumer restarts at AppliedSeq+1.
type ingestState struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	AppliedSeq uint64 `json:"applied_seq"`
	UpdatedNS  int64  `json:"updated_ns"`
}

// ingest is the in-memory side of ingestState plus what /healthz reports.
type ingest struct {
	mu        sync.Mutex
	cons      jetstream.Consumer
	maxSeen   uint64
	retrying  map[uint64]bool // sequences handed back for redelivery, not applied yet
	applied   uint64
	persisted uint64
	lastApply time.Time
	lastCheck time.Time
	pending   uint64 // consumer's undelivered + unacknowledged, at the last check
	consErr   string // why the consumer is not usable, at the last check
}

func (in *ingest) consumer() jetstream.Consumer {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.cons
}

// noteRound records one fetch round's outcome: nakked are the sequences handed back for
// redelivery, the others were acknowledged or terminated.
func (in *ingest) noteRound(seqs []uint64, nakked []bool, now time.Time) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.retrying == nil {
		in.retrying = map[uint64]bool{}
	}
	for i, q := range seqs {
		if q == 0 {
			continue
		}
		if nakked[i] {
			in.retrying[q] = true
		} else {
			delete(in.retrying, q)
		}
		if q > in.maxSeen {
			in.maxSeen = q
		}
	}
	floor := in.maxSeen
	for q := range in.retrying {
		if q-1 < floor {
			floor = q - 1
		}
	}
	if floor > in.applied {
		in.applied = floor
	}
	in.lastApply = now
}

func readIngest(data string) (ingestState, error) {
	var st ingestState
	b, err := os.ReadFile(filepath.Join(data, ingestFile))
	if err != nil {
		if os.IsNotExist(err) {
			return st, nil
		}
		return st, fmt.Errorf("hub: %s: %w", ingestFile, err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("hub: %s: %w", ingestFile, err)
	}
	return st, nil
}

// persistIngest writes ingest.json when the applied sequence moved.
func (s *Server) persistIngest() {
	in := &s.ing
	in.mu.Lock()
	applied, done := in.applied, in.applied == in.persisted
	in.mu.Unlock()
	if done {
		return
	}
	b, _ := json.MarshalIndent(ingestState{Stream: streamConfig().Name, Consumer: s.cfg.Consumer,
		AppliedSeq: applied, UpdatedNS: s.cfg.Now().UnixNano()}, "", "  ")
	if err := writeFileAtomic(filepath.Join(s.cfg.DataDir, ingestFile), append(b, '\n')); err != nil {
		s.log.Warn("ingest position not saved", "err", err)
		return
	}
	in.mu.Lock()
	in.persisted = applied
	in.mu.Unlock()
}

// consumerConfig is the hub's durable consumer; start > 0 makes a new one begin at that stream
// sequence instead of the first message.
func (s *Server) consumerConfig(start uint64) jetstream.ConsumerConfig {
	cc := jetstream.ConsumerConfig{
		Durable:       s.cfg.Consumer,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       60 * time.Second,
		MaxAckPending: 64 * s.cfg.Fetch,
		MaxDeliver:    -1,
	}
	if start > 1 {
		cc.DeliverPolicy, cc.OptStartSeq = jetstream.DeliverByStartSequencePolicy, start
	}
	return cc
}

// openConsumer adopts the durable consumer when it exists (its start position kept, the rest of
// its settings updated) or creates it at the persisted position.
func (s *Server) openConsumer(ctx context.Context, st jetstream.Stream) error {
	saved, err := readIngest(s.cfg.DataDir)
	if err != nil {
		return err
	}
	applied := saved.AppliedSeq
	var cons jetstream.Consumer
	cur, err := st.Consumer(ctx, s.cfg.Consumer)
	switch {
	case err == nil && cur.CachedInfo().NumAckPending > 0:
		// Delivered to a hub that is gone and never acknowledged: recreate the consumer at its ack
		// floor so they come again now, not after the acknowledgement wait. Rows already written
		// are recognised by (host, pid, seq).
		info := cur.CachedInfo()
		applied = max(applied, info.AckFloor.Stream)
		if err := st.DeleteConsumer(ctx, s.cfg.Consumer); err != nil {
			return fmt.Errorf("hub: durable consumer %s: %w", s.cfg.Consumer, err)
		}
		if cons, err = st.CreateOrUpdateConsumer(ctx, s.consumerConfig(applied+1)); err != nil {
			return fmt.Errorf("hub: durable consumer %s: %w", s.cfg.Consumer, err)
		}
		s.log.Info("redelivering what the previous run had not acknowledged", "consumer", s.cfg.Consumer,
			"from_seq", applied+1, "unacknowledged", info.NumAckPending)
	case err == nil:
		info := cur.CachedInfo()
		applied = max(applied, info.AckFloor.Stream)
		cc := s.consumerConfig(0)
		cc.DeliverPolicy, cc.OptStartSeq, cc.OptStartTime = info.Config.DeliverPolicy, info.Config.OptStartSeq, info.Config.OptStartTime
		if cons, err = st.UpdateConsumer(ctx, cc); err != nil {
			s.log.Warn("durable consumer kept with its own settings", "consumer", s.cfg.Consumer, "err", err)
			cons = cur
		}
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		if cons, err = st.CreateOrUpdateConsumer(ctx, s.consumerConfig(saved.AppliedSeq+1)); err != nil {
			return fmt.Errorf("hub: durable consumer %s: %w", s.cfg.Consumer, err)
		}
		if saved.AppliedSeq > 0 {
			s.log.Warn("durable consumer was missing; created from the last applied stream sequence",
				"consumer", s.cfg.Consumer, "start_seq", saved.AppliedSeq+1)
			s.cnt.add(func(c *Counters) { c.ConsumerRecreated++ })
		}
	default:
		return fmt.Errorf("hub: durable consumer %s: %w", s.cfg.Consumer, err)
	}
	s.ing.mu.Lock()
	s.ing.cons = cons
	s.ing.applied, s.ing.persisted, s.ing.maxSeen = applied, saved.AppliedSeq, applied
	s.ing.mu.Unlock()
	return nil
}

// checkConsumer looks the consumer up (at most every consumerCheckEvery unless force), records
// its lag, and recreates it from the applied sequence when it is gone.
func (s *Server) checkConsumer(ctx context.Context, force bool) {
	in := &s.ing
	now := time.Now()
	in.mu.Lock()
	if !force && now.Sub(in.lastCheck) < consumerCheckEvery {
		in.mu.Unlock()
		return
	}
	in.lastCheck = now
	cons := in.cons
	in.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	info, err := cons.Info(ctx)
	if err == nil {
		in.mu.Lock()
		in.pending, in.consErr = info.NumPending+uint64(info.NumAckPending), ""
		in.mu.Unlock()
		return
	}
	if !errors.Is(err, jetstream.ErrConsumerNotFound) {
		in.mu.Lock()
		in.consErr = err.Error()
		in.mu.Unlock()
		return
	}
	in.mu.Lock()
	start := in.applied + 1
	in.mu.Unlock()
	st, err := s.js.Stream(ctx, streamConfig().Name)
	if err == nil {
		cons, err = st.CreateOrUpdateConsumer(ctx, s.consumerConfig(start))
	}
	if err != nil {
		s.log.Error("durable consumer lost and not recreated", "consumer", s.cfg.Consumer, "err", err)
		in.mu.Lock()
		in.consErr = "consumer lost: " + err.Error()
		in.mu.Unlock()
		return
	}
	s.log.Warn("durable consumer was deleted; recreated from the last applied stream sequence",
		"consumer", s.cfg.Consumer, "start_seq", start)
	s.cnt.add(func(c *Counters) { c.ConsumerRecreated++ })
	in.mu.Lock()
	in.cons, in.consErr = cons, ""
	in.mu.Unlock()
}

// Health is the hub's ingest health, what /healthz reports.
type Health struct {
	OK       bool   `json:"ok"`
	Consumer string `json:"consumer"`
	// AppliedSeq: every stream message up to this sequence was applied (or given up on).
	AppliedSeq uint64 `json:"applied_seq"`
	// LastApplyNS: when the last fetch round was applied (Unix ns; 0: none since start).
	LastApplyNS int64 `json:"last_apply_ns"`
	// Lag: messages the consumer has not delivered or not had acknowledged yet.
	Lag               uint64 `json:"lag"`
	ConsumerRecreated int64  `json:"consumer_recreated"`
	Error             string `json:"error,omitempty"`
}

// Health checks the consumer now and reports: not OK when the consumer cannot be read or
// recreated, or when messages wait and nothing was applied for stallAfter.
func (s *Server) Health(ctx context.Context) Health {
	if s.cl != nil {
		return s.sharedHealth()
	}
	s.checkConsumer(ctx, true)
	return s.healthFromState()
}

// healthFromState is Health from what the last consumer check and apply recorded.
func (s *Server) healthFromState() Health {
	in := &s.ing
	in.mu.Lock()
	h := Health{Consumer: s.cfg.Consumer, AppliedSeq: in.applied, Lag: in.pending, Error: in.consErr}
	last := in.lastApply
	in.mu.Unlock()
	if !last.IsZero() {
		h.LastApplyNS = last.UnixNano()
	}
	h.ConsumerRecreated = s.cnt.snapshot().ConsumerRecreated
	now := s.cfg.Now()
	since := now.Sub(last)
	if last.IsZero() {
		since = now.Sub(s.started)
	}
	if h.Error == "" && h.Lag > 0 && since > stallAfter {
		h.Error = fmt.Sprintf("%d messages waiting, nothing applied for %s", h.Lag, since.Round(time.Second))
	}
	h.OK = h.Error == ""
	return h
}
