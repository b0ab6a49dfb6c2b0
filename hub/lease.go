package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/profilemate/profilemate/proto"
)

// Session leases: one key per session in the KV bucket LeaseBucket, whose TTL (the bucket's max
// age) is the lease time. Create is the claim (first writer wins: it fails once the key exists),
// Update with the revision the holder last wrote is the renewal (it fails once the key expired or
// another hub claimed it, which is how a holder learns it lost the lease), Delete with that
// revision the release.

// ErrLeaseLost is returned by renew when the lease expired or another hub holds it now.
var ErrLeaseLost = errors.New("session lease lost")

// leaseEntry is the value of a lease key (JSON).
type leaseEntry struct {
	Hub     string `json:"hub"`
	SinceNS int64  `json:"since_ns"` // when this hub claimed the session, Unix ns
}

// leases is the lease bucket as one hub uses it.
type leases struct {
	kv  jetstream.KeyValue
	hub string
	now func() time.Time
}

// leaseKey is a session's key: the session id as a subject token (proto.Escape), which stays in
// the KV key alphabet.
func leaseKey(session string) string { return proto.Escape(session) }

// claim creates session's lease for this hub. ok is false, without error, when another hub holds
// it; rev is the revision to renew with.
func (l *leases) claim(ctx context.Context, session string) (rev uint64, ok bool, err error) {
	v, _ := json.Marshal(leaseEntry{Hub: l.hub, SinceNS: l.now().UnixNano()})
	rev, err = l.kv.Create(ctx, leaseKey(session), v)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("claim lease of %s: %w", session, err)
	}
	return rev, true, nil
}

// renew extends the lease written at rev; it returns the new revision, or ErrLeaseLost when the
// key expired or changed hands (other errors: the cluster did not answer; the lease may still
// be held).
func (l *leases) renew(ctx context.Context, session string, rev uint64) (uint64, error) {
	e, err := l.kv.Get(ctx, leaseKey(session))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted):
		return 0, ErrLeaseLost
	case err != nil:
		return 0, fmt.Errorf("renew lease of %s: %w", session, err)
	case e.Revision() != rev:
		return 0, ErrLeaseLost
	}
	nrev, err := l.kv.Update(ctx, leaseKey(session), e.Value(), rev)
	if err != nil {
		var apiErr *jetstream.APIError
		// A replicated bucket answers a revision conflict with 10164, a single replica with 10071.
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			return 0, ErrLeaseLost
		}
		return 0, fmt.Errorf("renew lease of %s: %w", session, err)
	}
	return nrev, nil
}

// release deletes the lease written at rev (no-op when it is no longer ours).
func (l *leases) release(ctx context.Context, session string, rev uint64) error {
	err := l.kv.Delete(ctx, leaseKey(session), jetstream.LastRevision(rev))
	if err != nil {
		return fmt.Errorf("release lease of %s: %w", session, err)
	}
	return nil
}

// holder returns the hub holding session's lease, "" when none does.
func (l *leases) holder(ctx context.Context, session string) (string, error) {
	e, err := l.kv.Get(ctx, leaseKey(session))
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("lease of %s: %w", session, err)
	}
	var le leaseEntry
	if err := json.Unmarshal(e.Value(), &le); err != nil {
		return "", fmt.Errorf("lease of %s: %w", session, err)
	}
	return le.Hub, nil
}
