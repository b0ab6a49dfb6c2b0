package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/profilemate/profilemate/internal/natsclient"
	"github.com/profilemate/profilemate/internal/stream"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	pmproto "github.com/profilemate/profilemate/proto"
)

// StreamName is the JetStream stream the hub creates and the agent publishes to (the contract's
// proto.StreamName).
const StreamName = pmproto.StreamName

// NATSConfig says how to reach NATS. An empty URL means no NATS: everything stays in the spool.
type NATSConfig struct {
	URL          string
	CoreNATS     bool // plain publish without JetStream acknowledgements (no delivery guarantee)
	CreateStream bool // create the stream when missing (normally the hub's job)
	TLSCA        string
	TLSCert      string
	TLSKey       string
	User         string
	Password     string
	Creds        string
	Name         string
	AckTimeout   time.Duration
	// Options are appended to the connection's options (what internal/natsclient builds from
	// the shared CLI flags: TLS, creds, nkey, user, token).
	Options []nats.Option
}

// window is how many messages are in flight to JetStream at once.
const window = 256

// publisher moves messages from the queue to NATS, in order, retrying until each is acknowledged.
type publisher struct {
	cfg  NATSConfig
	q    *queue
	dead *deadLetters
	log  *slog.Logger

	nc *nats.Conn
	js jetstream.JetStream

	connected atomic.Bool
	streamOK  atomic.Bool
	published atomic.Int64
	lastErr   atomic.Pointer[string]
	errLogged atomic.Bool
	// authLogged: the server's refusal of the credentials was logged since the last connection.
	authLogged atomic.Bool
	// lastConnErr is why the last connection attempt failed; cleared on connecting.
	lastConnErr atomic.Pointer[error]

	stop chan struct{}
	done chan struct{}
	once sync.Once
}

func newPublisher(cfg NATSConfig, q *queue, dead *deadLetters, log *slog.Logger) *publisher {
	if cfg.AckTimeout == 0 {
		cfg.AckTimeout = 3 * time.Second
	}
	return &publisher{cfg: cfg, q: q, dead: dead, log: log, stop: make(chan struct{}), done: make(chan struct{})}
}

// maxControlLine is nats-server's default limit on a protocol line (MAX_CONTROL_LINE_SIZE): a
// publish whose "HPUB <subject> <reply> <sizes>" line is longer makes the server close the
// connection, so such a subject can never be delivered. controlLineReserve covers the reply inbox
// and the sizes.
const (
	maxControlLine     = 4096
	controlLineReserve = 160
	// MaxSubjectBytes is the longest subject the agent tries to publish.
	MaxSubjectBytes = maxControlLine - controlLineReserve
)

// permanentError is a refusal that retrying cannot change: the message is set aside.
type permanentError struct{ reason string }

func (e *permanentError) Error() string { return e.reason }

// refusal says why the server would refuse m whatever happens ("" when it would not): a subject
// the protocol cannot carry or a message over the server's max_payload.
func (p *publisher) refusal(m *Msg) string {
	switch {
	case m.Subject == "" || strings.ContainsAny(m.Subject, " \t\r\n"):
		return "invalid subject"
	case len(m.Subject) > MaxSubjectBytes:
		return fmt.Sprintf("subject too long (%d bytes, limit %d)", len(m.Subject), MaxSubjectBytes)
	}
	// The header carries the message id: "NATS/1.0\r\nNats-Msg-Id: <id>\r\n\r\n".
	if max := p.nc.MaxPayload(); max > 0 && p.nc.IsConnected() && int64(len(m.Data)+len(m.ID)+64) > max {
		return fmt.Sprintf("payload too large (%d bytes, server max_payload %d)", len(m.Data), max)
	}
	return ""
}

// setAside moves a refused message to the dead letters: counted, logged once per reason, kept in
// the capped dead-letter file.
func (p *publisher) setAside(m *Msg, reason string) {
	if p.dead.add(m, reason) {
		subj := m.Subject
		if len(subj) > 120 {
			subj = subj[:120] + "…"
		}
		p.log.Warn("message refused permanently by NATS; set aside, not retried", "reason", reason,
			"subject", subj, "bytes", len(m.Data), "dead_letters", p.dead.path)
	} else {
		p.log.Debug("message refused permanently; set aside", "reason", reason)
	}
}

// connect dials NATS; a server that is down is retried in the background forever.
func (p *publisher) connect() error {
	if p.cfg.URL == "" {
		p.q.setDown(true) // nothing to send to: straight to the spool
		return nil
	}
	opts := []nats.Option{
		nats.Name(p.cfg.Name),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		// Our own queue and spool hold what waits; the client's reconnect buffer would hide
		// failures and hold unacknowledged data in a second place.
		nats.ReconnectBufSize(-1),
		nats.ConnectHandler(func(*nats.Conn) { p.setConnected(true) }),
		nats.ReconnectHandler(func(*nats.Conn) { p.setConnected(true) }),
		nats.DisconnectErrHandler(func(c *nats.Conn, err error) {
			if c.IsClosed() { // our own Close at shutdown: nothing is kept back because of it
				p.connected.Store(false)
				return
			}
			p.setConnected(false)
			p.connErr(err)
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { p.setErr(err); p.connErr(err) }),
		// Each failed (re)connection attempt, the first ones included (RetryOnFailedConnect).
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) { p.connErr(err) }),
	}
	if p.cfg.TLSCA != "" {
		opts = append(opts, nats.RootCAs(p.cfg.TLSCA))
	}
	if p.cfg.TLSCert != "" || p.cfg.TLSKey != "" {
		opts = append(opts, nats.ClientCert(p.cfg.TLSCert, p.cfg.TLSKey))
	}
	if p.cfg.User != "" {
		opts = append(opts, nats.UserInfo(p.cfg.User, p.cfg.Password))
	}
	if p.cfg.Creds != "" {
		opts = append(opts, nats.UserCredentials(p.cfg.Creds))
	}
	opts = append(opts, p.cfg.Options...)
	nc, err := nats.Connect(p.cfg.URL, opts...)
	if err != nil {
		return fmt.Errorf("nats %s: %w", p.cfg.URL, err)
	}
	p.nc = nc
	p.setConnected(nc.IsConnected())
	p.q.setDown(!nc.IsConnected())
	if !p.cfg.CoreNATS {
		js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(window*2))
		if err != nil {
			nc.Close()
			return fmt.Errorf("jetstream: %w", err)
		}
		p.js = js
	}
	return nil
}

func (p *publisher) setConnected(v bool) {
	if p.connected.Swap(v) != v {
		if v {
			p.authLogged.Store(false)
			p.lastConnErr.Store(nil)
			p.log.Info("nats connected", "url", p.nc.ConnectedUrlRedacted())
		} else {
			p.log.Warn("nats disconnected; keeping messages in the disk spool")
			p.streamOK.Store(false)
			p.q.setDown(true)
		}
	}
}

// connErr keeps why the last connection attempt failed (what a publish while disconnected reports)
// and logs, once until the next connection, that the server refused this agent's credentials: the
// reason the events stay in the spool, named as the server gave it.
func (p *publisher) connErr(err error) {
	if err == nil {
		return
	}
	p.lastConnErr.Store(&err)
	if natsclient.IsAuthError(err) && !p.authLogged.Swap(true) {
		p.setErr(err)
		p.log.Error(natsclient.AuthHint+"; retrying, events wait in the spool", "err", err, "url", natsclient.Redact(p.cfg.URL))
	}
}

// notConnected is the error of a send while disconnected, naming the last connection error.
func (p *publisher) notConnected() error {
	var last error
	if e := p.lastConnErr.Load(); e != nil {
		last = *e
	} else {
		last = p.nc.LastError()
	}
	return natsclient.NotConnected(last)
}

func (p *publisher) setErr(err error) {
	s := err.Error()
	p.lastErr.Store(&s)
}

func (p *publisher) lastError() string {
	if s := p.lastErr.Load(); s != nil {
		return *s
	}
	return ""
}

// run sends until stopped. Without NATS it only leaves the queue to fill the spool.
func (p *publisher) run() {
	defer close(p.done)
	if p.nc == nil {
		<-p.stop
		return
	}
	backoff := 100 * time.Millisecond
	for {
		msgs := p.q.peek(window)
		if len(msgs) == 0 {
			select {
			case <-p.stop:
				return
			case <-p.q.wake:
			}
			continue
		}
		// A message the server can never take is set aside; the ones before it go first.
		if reason := p.refusal(&msgs[0]); reason != "" {
			p.setAside(&msgs[0], reason)
			p.q.pop(1)
			continue
		}
		for i := 1; i < len(msgs); i++ {
			if p.refusal(&msgs[i]) != "" {
				msgs = msgs[:i]
				break
			}
		}
		n, err := p.send(msgs)
		p.q.pop(n)
		p.published.Add(int64(n))
		var perm *permanentError
		if errors.As(err, &perm) && n < len(msgs) {
			p.setAside(&msgs[n], perm.reason)
			p.q.pop(1)
			continue
		}
		if err == nil {
			backoff = 100 * time.Millisecond
			p.errLogged.Store(false)
			p.q.setDown(false)
			continue
		}
		// The stream is unreachable: from now on what waits is kept on disk.
		p.q.setDown(true)
		p.q.spill()
		p.setErr(err)
		if !p.errLogged.Swap(true) {
			p.log.Warn("publish failed; keeping messages and retrying", "err", err, "queued", p.q.pending())
		}
		select {
		case <-p.stop:
			return
		case <-time.After(backoff):
		}
		if backoff < 2*time.Second {
			backoff *= 2
		}
	}
}

// send publishes msgs in order and returns how many of the first ones were acknowledged.
func (p *publisher) send(msgs []Msg) (int, error) {
	if !p.nc.IsConnected() {
		return 0, p.notConnected()
	}
	if p.cfg.CreateStream && !p.streamOK.Load() && p.js != nil {
		if err := p.ensureStream(); err != nil {
			return 0, err
		}
	}
	if p.cfg.CoreNATS {
		for i := range msgs {
			m := nats.NewMsg(msgs[i].Subject)
			m.Header.Set(nats.MsgIdHdr, msgs[i].ID)
			m.Data = msgs[i].Data
			if err := p.nc.PublishMsg(m); err != nil {
				return 0, err
			}
		}
		if err := p.nc.FlushTimeout(p.cfg.AckTimeout); err != nil {
			return 0, err
		}
		return len(msgs), nil
	}
	futs := make([]jetstream.PubAckFuture, 0, len(msgs))
	var sendErr error
	for i := range msgs {
		m := &nats.Msg{Subject: msgs[i].Subject, Data: msgs[i].Data, Header: nats.Header{}}
		f, err := p.js.PublishMsgAsync(m, jetstream.WithMsgID(msgs[i].ID))
		if err != nil {
			sendErr = err
			if errors.Is(err, nats.ErrBadSubject) || errors.Is(err, nats.ErrMaxPayload) {
				sendErr = &permanentError{reason: err.Error()}
			}
			break
		}
		futs = append(futs, f)
	}
	timer := time.NewTimer(p.cfg.AckTimeout)
	defer timer.Stop()
	for i, f := range futs {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return i, p.classify(err)
		case <-timer.C:
			return i, errors.New("no acknowledgement from the stream in time")
		}
	}
	if sendErr != nil {
		return len(futs), sendErr
	}
	p.streamOK.Store(true)
	return len(futs), nil
}

// classify tells a stream that is not there (retry) from a refusal of this one message by the
// stream (status 400/413: over its message or header size, against its rules), which is permanent.
func (p *publisher) classify(err error) error {
	if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) {
		p.streamOK.Store(false)
		return fmt.Errorf("stream %s not reachable (not created yet?): %w", StreamName, err)
	}
	var api *jetstream.APIError
	if errors.As(err, &api) && (api.Code == 400 || api.Code == 413) {
		return &permanentError{reason: fmt.Sprintf("stream refused it: %s (code %d)", api.Description, api.ErrorCode)}
	}
	return err
}

func (p *publisher) ensureStream() error {
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.AckTimeout)
	defer cancel()
	_, err := p.js.CreateOrUpdateStream(ctx, stream.Config())
	if err != nil {
		return fmt.Errorf("create stream %s: %w", StreamName, err)
	}
	p.streamOK.Store(true)
	return nil
}

// drain keeps sending until the queue is empty or the deadline passes, then stops the sender.
func (p *publisher) drain(ctx context.Context) {
	if p.nc != nil {
		for p.q.pending() > 0 {
			if p.q.stats().SpoolErr != "" {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
				continue
			}
			break
		}
	}
	p.once.Do(func() { close(p.stop) })
	<-p.done
}

func (p *publisher) close() {
	p.once.Do(func() { close(p.stop) })
	<-p.done
	if p.nc != nil {
		p.nc.Close()
	}
}
