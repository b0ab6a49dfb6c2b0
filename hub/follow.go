package hub

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/profilemate/profilemate/proto"
)

// stallCheck: after this long without a message, a follower asks its consumer whether messages
// are waiting, and starts a new one when they are or when the consumer cannot be asked.
const stallCheck = 2 * time.Second

// follower reads the stream through an ordered consumer's message iterator (shared mode): the
// iterator checks that delivery sequences follow each other and recreates the consumer after the
// last message delivered when they do not (Fetch on an ordered consumer recreates it at every
// call and does not notice a message lost in flight). On top of that the follower notices a
// consumer that went quiet while messages wait (its server died, a reset that never completed)
// and starts a new one from the last stream sequence it returned + 1. Not safe for concurrent
// use.
type follower struct {
	js     jetstream.JetStream
	cfg    jetstream.OrderedConsumerConfig // the first consumer's; later ones start after last
	buffer int

	cons    jetstream.Consumer
	it      jetstream.MessagesContext
	last    uint64    // stream sequence of the last message returned (0: none yet)
	quiet   time.Time // since when no message came
	checked time.Time // last stall check
}

// next returns up to n messages, waiting at most wait for the first; none (and no error) when
// nothing came. An error means the consumer could not be created or read; the next call starts
// a new one.
func (f *follower) next(ctx context.Context, n int, wait time.Duration) ([]jetstream.Msg, error) {
	if f.it == nil {
		cfg := f.cfg
		if f.last > 0 {
			cfg.DeliverPolicy, cfg.OptStartSeq, cfg.OptStartTime = jetstream.DeliverByStartSequencePolicy, f.last+1, nil
		}
		cons, err := f.js.OrderedConsumer(ctx, proto.StreamName, cfg)
		if err != nil {
			return nil, err
		}
		it, err := cons.Messages(jetstream.PullMaxMessages(f.buffer))
		if err != nil {
			return nil, err
		}
		f.cons, f.it, f.quiet = cons, it, time.Now()
	}
	msgs, err := nextBatch(f.it, n, wait)
	if err != nil {
		f.reset()
		return nil, err
	}
	if len(msgs) > 0 {
		if md, err := msgs[len(msgs)-1].Metadata(); err == nil {
			f.last = md.Sequence.Stream
		}
		f.quiet = time.Now()
		return msgs, nil
	}
	if time.Since(f.quiet) >= stallCheck && time.Since(f.checked) >= stallCheck {
		f.checked = time.Now()
		ictx, cancel := context.WithTimeout(ctx, stallCheck)
		info, err := f.cons.Info(ictx)
		cancel()
		if err != nil || info.NumPending > 0 {
			f.reset()
		}
	}
	return nil, nil
}

// restart makes the next call start a new consumer after stream sequence last.
func (f *follower) restart(last uint64) {
	f.last = last
	f.reset()
}

// reset stops the iterator; the next call creates a new consumer.
func (f *follower) reset() {
	if f.it != nil {
		f.it.Stop()
	}
	f.it, f.cons = nil, nil
}

// nextBatch returns up to n messages of it: it waits at most wait for the first, then takes those
// already buffered. A timeout is no error (no messages); other errors end the iterator's use.
func nextBatch(it jetstream.MessagesContext, n int, wait time.Duration) ([]jetstream.Msg, error) {
	m, err := it.Next(jetstream.NextMaxWait(wait))
	if errors.Is(err, nats.ErrTimeout) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	msgs := []jetstream.Msg{m}
	for len(msgs) < n {
		m, err := it.Next(jetstream.NextMaxWait(time.Millisecond))
		if err != nil {
			break // a timeout: nothing buffered; anything else comes again at the next call
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// caughtUp reports whether the consumer has delivered every message matching it that the stream
// holds now (false when it cannot be asked).
func (f *follower) caughtUp(ctx context.Context) bool {
	if f.cons == nil {
		return false
	}
	ictx, cancel := context.WithTimeout(ctx, stallCheck)
	defer cancel()
	info, err := f.cons.Info(ictx)
	return err == nil && info.NumPending == 0
}
