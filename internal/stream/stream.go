// Package stream is the PROFILEMATE JetStream stream's configuration: the one place that links
// the NATS client's types to the contract in proto/ (proto itself depends on protobuf only). The
// agent creates the stream with it when the hub has not, the hub with its own limits, tests with
// memory storage.
package stream

import (
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/profilemate/profilemate/proto"
)

// Stream defaults: generous enough for a long session of a large fleet, bounded so a forgotten
// hub cannot fill the disk. Old messages go first when a limit is hit.
const (
	DefaultMaxBytes   = 8 << 30            // 8 GiB
	DefaultMaxAge     = 7 * 24 * time.Hour // a week to collect a session
	DefaultMaxMsgSize = 8 << 20            // one batch; the agent splits bigger ones
	DefaultDuplicates = 2 * time.Minute    // window of Nats-Msg-Id dedupe (agent re-sends)
)

// Option changes one setting of Config.
type Option func(*jetstream.StreamConfig)

// WithMaxBytes limits the stream's size in bytes (-1: unlimited).
func WithMaxBytes(n int64) Option { return func(c *jetstream.StreamConfig) { c.MaxBytes = n } }

// WithMaxAge limits how long messages are kept (0: forever).
func WithMaxAge(d time.Duration) Option {
	return func(c *jetstream.StreamConfig) { c.MaxAge = d }
}

// WithMaxMsgs limits the number of messages (-1: unlimited).
func WithMaxMsgs(n int64) Option { return func(c *jetstream.StreamConfig) { c.MaxMsgs = n } }

// WithMaxMsgSize limits one message's size in bytes.
func WithMaxMsgSize(n int32) Option {
	return func(c *jetstream.StreamConfig) { c.MaxMsgSize = n }
}

// WithDuplicates sets the Nats-Msg-Id dedupe window.
func WithDuplicates(d time.Duration) Option {
	return func(c *jetstream.StreamConfig) { c.Duplicates = d }
}

// WithReplicas sets the replica count (clustered NATS).
func WithReplicas(n int) Option { return func(c *jetstream.StreamConfig) { c.Replicas = n } }

// WithMemoryStorage keeps the stream in memory (tests, benchmarks).
func WithMemoryStorage() Option {
	return func(c *jetstream.StreamConfig) { c.Storage = jetstream.MemoryStorage }
}

// Config is the PROFILEMATE stream (proto.StreamName on proto.StreamSubjects()): event batches,
// lifecycle records and heartbeats, file storage, limits retention discarding the oldest, and a
// dedupe window for the agent's re-sends.
func Config(opts ...Option) jetstream.StreamConfig {
	c := jetstream.StreamConfig{
		Name:              proto.StreamName,
		Description:       "ProfileMate events, lifecycle and heartbeats (schema " + proto.SchemaVersion + ")",
		Subjects:          proto.StreamSubjects(),
		Retention:         jetstream.LimitsPolicy,
		Storage:           jetstream.FileStorage,
		Discard:           jetstream.DiscardOld,
		MaxBytes:          DefaultMaxBytes,
		MaxAge:            DefaultMaxAge,
		MaxMsgs:           -1,
		MaxMsgSize:        DefaultMaxMsgSize,
		MaxConsumers:      -1,
		MaxMsgsPerSubject: -1,
		Duplicates:        DefaultDuplicates,
		Replicas:          1,
	}
	for _, o := range opts {
		o(&c)
	}
	return c
}
