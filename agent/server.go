package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	pmproto "github.com/profilemate/profilemate/proto"
)

// DefaultSocket picks the socket path: /run/profilemate/agent.sock for root, else under
// $XDG_RUNTIME_DIR, else under the temp folder.
func DefaultSocket() string {
	if os.Geteuid() == 0 {
		return "/run/profilemate/agent.sock"
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "profilemate", "agent.sock")
	}
	return filepath.Join(os.TempDir(), "profilemate-"+strconv.Itoa(os.Getuid()), "agent.sock")
}

// listenSocket creates the Unix socket with mode 0660, owned by group when that group exists.
// A stale socket file left by a crashed agent is replaced; a live one is an error.
func listenSocket(path, group string, log *slog.Logger) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("socket folder: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("socket %s: another agent is listening there", path)
	}
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("socket mode: %w", err)
	}
	if group != "" {
		if g, err := user.LookupGroup(group); err == nil {
			gid, _ := strconv.Atoi(g.Gid)
			if err := os.Chown(path, -1, gid); err != nil {
				log.Warn("socket group not set", "group", group, "err", err)
			}
		}
	}
	return ln, nil
}

func (a *Agent) accept() {
	a.mu.Lock()
	ln := a.ln
	a.mu.Unlock()
	if ln == nil {
		return
	}
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			a.log.Warn("accept", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		c := &conn{nc: nc, pids: map[int]*proc{}}
		a.mu.Lock()
		a.conns[c] = struct{}{}
		a.connWG.Add(1)
		a.mu.Unlock()
		go a.serve(c)
	}
}

// conn is one shim (or admin client) connection.
type conn struct {
	nc   net.Conn
	wmu  sync.Mutex
	pids map[int]*proc // guarded by Agent.mu
}

// send writes one JSON line back to the shim; a slow shim gets a short deadline, never the agent.
func (c *conn) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.nc.SetWriteDeadline(time.Now().Add(2 * time.Second))
	_, err = c.nc.Write(b)
	return err
}

func (a *Agent) serve(c *conn) {
	defer a.connWG.Done()
	defer a.connGone(c)
	defer c.nc.Close()
	lr := newLineReader(c.nc, a.cfg.MaxLine)
	for {
		line, err := lr.next()
		if err != nil {
			if errors.Is(err, errLineTooLong) || errors.Is(err, pmproto.ErrBadLine) {
				a.reject(c, err)
				if errors.Is(err, errLineTooLong) {
					continue
				}
			}
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, pmproto.ErrBadLine) {
				a.log.Debug("connection read", "err", err)
			}
			return
		}
		if len(line) == 0 {
			continue
		}
		if err := a.handle(c, line); err != nil {
			a.reject(c, err)
		}
	}
}

func (a *Agent) reject(c *conn, err error) {
	a.badLines.Add(1)
	a.badLog.log(a.log, "rejected socket line", "err", err, "rejected_total", a.badLines.Load())
}

// handle processes one line; an error rejects only that line. Lines are decoded by proto's
// shim-line codec (pmproto.ReadLine); a batch's events are checked when it is published.
func (a *Agent) handle(c *conn, raw []byte) error {
	l, err := pmproto.ReadLine(raw)
	if err != nil {
		return err
	}
	switch {
	case l.Batch != nil:
		return a.batch(c, l.Batch)
	case l.Hello != nil:
		a.hello(c, l.Hello)
	case l.Status != nil:
		a.status(l.Status)
	case l.Bye != nil:
		a.bye(l.Bye)
	case l.Admin != nil:
		switch l.Admin.Op {
		case "status":
			return c.send(a.Status())
		default:
			_ = c.send(map[string]any{"t": "error", "v": pmproto.WireVersion, "error": "unknown admin op " + strconv.Quote(l.Admin.Op)})
			return fmt.Errorf("%w: unknown admin op %q", pmproto.ErrBadLine, l.Admin.Op)
		}
	default:
		return fmt.Errorf("%w: a shim does not send %q lines", pmproto.ErrBadLine, l.T)
	}
	return nil
}

// rateLog logs at most one line per second and says how many it held back.
type rateLog struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func (r *rateLog) log(l *slog.Logger, msg string, args ...any) {
	r.mu.Lock()
	now := time.Now()
	if now.Sub(r.last) < time.Second {
		r.suppressed++
		r.mu.Unlock()
		return
	}
	n := r.suppressed
	r.last, r.suppressed = now, 0
	r.mu.Unlock()
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	l.Warn(msg, args...)
}

func pidAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
