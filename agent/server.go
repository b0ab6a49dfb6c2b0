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
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	pmproto "github.com/profilemate/profilemate/proto"
)

// RootSocket is the socket of a host-wide `pmagent serve` (root, or a systemd unit with
// RuntimeDirectory=profilemate).
const RootSocket = "/run/profilemate/agent.sock"

// SocketCandidates lists, in order, where a shim looks for the agent when PROFILEMATE_SOCKET names
// none; getenv reads the environment (os.Getenv) and uid is the user's id:
//
//  1. /run/profilemate/agent.sock (RootSocket)
//  2. $RUNTIME_DIRECTORY/agent.sock — systemd's RuntimeDirectory= (its first entry), when set
//  3. $XDG_RUNTIME_DIR/profilemate/agent.sock, when set
//  4. ${TMPDIR:-/tmp}/profilemate-<uid>/agent.sock
//
// The shim's own discovery (profilemate.sinks.socket_candidates) returns the same list; a test
// runs both.
func SocketCandidates(getenv func(string) string, uid int) []string {
	out := []string{RootSocket}
	if d := getenv("RUNTIME_DIRECTORY"); d != "" {
		d, _, _ = strings.Cut(d, ":")
		out = append(out, filepath.Join(d, "agent.sock"))
	}
	if d := getenv("XDG_RUNTIME_DIR"); d != "" {
		out = append(out, filepath.Join(d, "profilemate", "agent.sock"))
	}
	tmp := getenv("TMPDIR")
	if tmp == "" {
		tmp = "/tmp"
	}
	return append(out, filepath.Join(tmp, "profilemate-"+strconv.Itoa(uid), "agent.sock"))
}

// DefaultSocket is where `pmagent serve` listens unless told otherwise: RootSocket for root, else
// the first of the other SocketCandidates that applies, so a shim that searches the candidates in
// order finds it.
func DefaultSocket() string {
	c := SocketCandidates(os.Getenv, os.Getuid())
	if os.Geteuid() == 0 {
		return c[0]
	}
	return c[1]
}

// FindSocket returns the first of SocketCandidates where an agent accepts a connection, or ""
// with the candidates it tried.
func FindSocket() (string, []string) {
	cands := SocketCandidates(os.Getenv, os.Getuid())
	for _, c := range cands {
		if conn, err := net.DialTimeout("unix", c, time.Second); err == nil {
			conn.Close()
			return c, cands
		}
	}
	return "", cands
}

// errSocketFolder: the socket's folder could let another user replace the socket.
var errSocketFolder = errors.New("unsafe socket folder")

// checkSocketFolder refuses a socket folder that someone else could use to swap the socket and
// receive the shims' lines: it must be a real directory (not a symbolic link), owned by this
// process's user, and writable by nobody else (no group or other write bit).
func checkSocketFolder(dir string) error {
	info, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("socket folder: %w", err)
	}
	if info.Mode()&os.ModeSymlink != 0 || !info.IsDir() {
		return fmt.Errorf("%w: %s is not a directory of its own (a link or a file)", errSocketFolder, dir)
	}
	st, ok := info.Sys().(*syscall.Stat_t)
	if ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%w: %s belongs to uid %d, not to this agent's uid %d; remove it or choose another --socket",
			errSocketFolder, dir, st.Uid, os.Geteuid())
	}
	if perm := info.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("%w: %s has mode %04o, writable by others; want 0755 or stricter (chmod go-w)", errSocketFolder, dir, perm)
	}
	return nil
}

// listenSocket creates the Unix socket with mode 0660, owned by group when that group exists,
// in a folder checkSocketFolder accepts (created 0755 when missing). A stale socket file left by a
// crashed agent is replaced; a live one is an error.
func listenSocket(path, group string, log *slog.Logger) (net.Listener, error) {
	dir := filepath.Dir(path)
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("socket folder: %w", err)
		}
		// MkdirAll's mode is filtered by the umask; make it exact.
		if err := os.Chmod(dir, 0o755); err != nil {
			return nil, fmt.Errorf("socket folder: %w", err)
		}
	}
	if err := checkSocketFolder(dir); err != nil {
		return nil, err
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
		c := &conn{nc: nc, pids: map[int]*proc{}, peer: peerOf(nc)}
		a.mu.Lock()
		if len(a.conns) >= a.cfg.MaxConns {
			a.mu.Unlock()
			nc.Close()
			a.refusedConns.Add(1)
			a.connLog.log(a.log, "connection refused: too many connections", "limit", a.cfg.MaxConns,
				"refused_total", a.refusedConns.Load())
			continue
		}
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
	peer peerCred
	// Only the connection's own goroutine (serve) touches what follows.
	lines pmproto.LineReader // decodes its lines, reusing memory
	pend  pending            // accepted events not queued yet (batching.go)
	// more reports whether another whole line is already read and waiting (nil: never), so
	// accepted events wait for it and leave in one message per process and kind.
	more func() bool
}

// peerCred is the process at the other end of a connection as the kernel reports it
// (SO_PEERCRED, in the agent's pid namespace): the identity a connection's processes are bound
// to. The pid a shim reports stays a label; in a container it differs from Pid.
type peerCred struct {
	Pid, UID, GID int32
	OK            bool
}

func peerOf(nc net.Conn) peerCred {
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		return peerCred{}
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return peerCred{}
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil || cerr != nil || cred == nil {
		return peerCred{}
	}
	return peerCred{Pid: cred.Pid, UID: int32(cred.Uid), GID: int32(cred.Gid), OK: true}
}

// sameProcess reports whether two peers are known to be one process.
func (p peerCred) sameProcess(o peerCred) bool { return p.OK && o.OK && p.Pid == o.Pid }

// byteBudget bounds the bytes every connection's incomplete lines hold together; a nil budget
// allows everything.
type byteBudget struct {
	used atomic.Int64
	max  int64
	full func() // called when a take fails (the agent returns the garbage of long lines)
}

func (b *byteBudget) take(n int64) bool {
	if b == nil {
		return true
	}
	if b.used.Add(n) > b.max {
		b.used.Add(-n)
		if b.full != nil {
			b.full()
		}
		return false
	}
	return true
}

func (b *byteBudget) give(n int64) {
	if b != nil && n != 0 {
		b.used.Add(-n)
	}
}

// countingReader counts the bytes read from the socket.
type countingReader struct {
	r net.Conn
	n *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// send writes one JSON line back to the shim; a slow shim gets a short deadline, never the agent.
func (c *conn) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return c.write(append(b, '\n'))
}

// sendAck writes {"t":"ctl","v":1,"op":"ack","seq":<seq>} (what send of the pmproto.Ctl
// writes) without encoding/json: one per flush of a busy connection.
func (c *conn) sendAck(seq uint64) error {
	var buf [64]byte
	b := append(buf[:0], `{"t":"ctl","v":`...)
	b = strconv.AppendInt(b, pmproto.WireVersion, 10)
	b = append(b, `,"op":"ack","seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	return c.write(append(b, '}', '\n'))
}

func (c *conn) write(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.nc.SetWriteDeadline(time.Now().Add(2 * time.Second))
	_, err := c.nc.Write(b)
	return err
}

func (a *Agent) serve(c *conn) {
	defer a.connWG.Done()
	defer a.connGone(c)
	defer c.nc.Close()
	lr := newLineReader(countingReader{c.nc, &a.readBytes}, a.cfg.MaxLine)
	lr.budget = a.budget
	c.more = lr.lineBuffered
	// What the connection's last lines gave is queued before the connection counts as gone.
	defer a.flush(c)
	defer func() {
		big := lr.held > 0 || cap(lr.buf) > 0
		lr.close()
		if big {
			a.returnMemory()
		}
	}()
	for {
		line, err := lr.next()
		if err != nil {
			if errors.Is(err, errLineTooLong) || errors.Is(err, errLineOverBudget) || errors.Is(err, pmproto.ErrBadLine) {
				a.reject(c, err)
				if errors.Is(err, errLineTooLong) || errors.Is(err, errLineOverBudget) {
					if errors.Is(err, errLineOverBudget) {
						a.overBudget.Add(1)
					}
					a.returnMemory()
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
// shim-line codec (pmproto.LineReader, as pmproto.ReadLine); a batch's events are checked and
// encoded at once and queued with the connection's next flush (batching.go): when no further
// line is waiting, before any other line, or at the size and age bounds.
func (a *Agent) handle(c *conn, raw []byte) error {
	l, err := c.lines.Read(raw)
	if err != nil {
		return err
	}
	if l.Batch != nil {
		err := a.batch(c, l.Batch)
		if c.more == nil || !c.more() || c.pend.full() {
			a.flush(c)
		}
		return err
	}
	// Lifecycle lines and replies follow the events before them.
	a.flush(c)
	switch {
	case l.Hello != nil:
		return a.hello(c, l.Hello)
	case l.Status != nil:
		return a.status(c, l.Status)
	case l.Bye != nil:
		return a.bye(c, l.Bye)
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

// returnMemory gives the memory of large lines back to the system soon after they are gone
// (the runtime would keep it for minutes): at most once per second, the last call always honoured.
func (a *Agent) returnMemory() {
	if !a.memPending.CompareAndSwap(false, true) {
		return
	}
	go func() {
		a.memMu.Lock()
		defer a.memMu.Unlock()
		if d := time.Until(a.memLast.Add(time.Second)); d > 0 {
			time.Sleep(d)
		}
		a.memPending.Store(false)
		debug.FreeOSMemory()
		a.memLast = time.Now()
	}()
}

func pidAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
