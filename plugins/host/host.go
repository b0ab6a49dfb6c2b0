// Package host runs profiler plugins inside pmhub: it watches the plugins folder (fsnotify) for
// binaries added, replaced or removed, starts each complete and allowed one with go-plugin, feeds
// it through its own durable JetStream consumer filtered to its kinds, writes its derived rows
// into the session folders exactly once, publishes them on NATS, and restarts it with backoff when
// it crashes or hangs. docs/plugins.md describes the behaviour; plugins/sdk is the plugin side.
package host

import (
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/plugins/sdk"
	"github.com/profilemate/profilemate/proto"
)

// Defaults of Config.
const (
	DefaultCallTimeout = 30 * time.Second
	DefaultSettle      = 500 * time.Millisecond
	DefaultBackoffMin  = time.Second
	DefaultBackoffMax  = time.Minute
	DefaultBatch       = 256
	DefaultPoll        = 500 * time.Millisecond
	// StatusFile, under StateDir, holds the plugins' status for pmhub plugins ls.
	StatusFile = "status.json"
)

// Config configures a Host. Zero durations and sizes take the defaults above.
type Config struct {
	Dir      string // the plugins folder watched for binaries
	StateDir string // the host's own files: running copies, per-plugin state, status.json
	DataDir  string // the hub's data folder (sessions/<id>/ receives derived tables)
	Conn     *nats.Conn
	HostName string // host token of derived rows (the hub's host)
	// HubConsumer is the hub's ingest consumer (hub.DefaultConsumer): a new plugin starts no
	// later than what the hub has not yet acknowledged.
	HubConsumer string
	// Allow, when not nil, is the sha256 allowlist (lowercase hex): other binaries are refused.
	Allow       map[string]bool
	CallTimeout time.Duration // per-call deadline of every plugin call
	Settle      time.Duration // a binary's size, mode and time must hold this long before it starts
	BackoffMin  time.Duration
	BackoffMax  time.Duration
	Batch       int           // stream messages per Consume call
	Poll        time.Duration // longest wait for new messages
	Logger      *slog.Logger
}

// Status is one plugin as pmhub plugins ls shows it (status.json).
type Status struct {
	File        string    `json:"file"` // name in the plugins folder
	Name        string    `json:"name,omitempty"`
	Version     string    `json:"version,omitempty"`
	Description string    `json:"description,omitempty"`
	Components  []string  `json:"components,omitempty"`
	Kinds       []string  `json:"kinds,omitempty"`
	Tables      []string  `json:"tables,omitempty"`
	SHA256      string    `json:"sha256,omitempty"`
	State       string    `json:"state"` // waiting, starting, running, restarting, refused
	Reason      string    `json:"reason,omitempty"`
	PID         int64     `json:"pid,omitempty"`
	Restarts    int       `json:"restarts"`
	Rows        int64     `json:"rows"`
	Failed      int64     `json:"failed"` // batches or rows the plugin could not handle
	Lag         uint64    `json:"lag"`    // messages of its kinds it has not read yet
	Sessions    int       `json:"sessions"`
	LastError   string    `json:"last_error,omitempty"`
	Since       time.Time `json:"since"`
}

// Plugin states.
const (
	StateWaiting    = "waiting"
	StateStarting   = "starting"
	StateRunning    = "running"
	StateRestarting = "restarting"
	StateRefused    = "refused"
)

// Host runs the plugins of one folder.
type Host struct {
	cfg Config
	log *slog.Logger
	js  jetstream.JetStream

	statusMu sync.Mutex // one status.json writer at a time
	mu       sync.Mutex
	status   map[string]*Status // by file name
	claims   map[string]string  // plugin name and derived table → file that owns it
	runners  map[string]*runner // by file name
	seen     map[string]fileSeen
	refused  map[string]bool        // sha256 already logged as refused
	needs    map[needKey]*needState // kinds plugins need, per session and kind
	kv       jetstream.KeyValue     // people's profiler choices, once the bucket exists
	kvLooked time.Time
	dirty    bool
}

type fileSeen struct {
	size  int64
	mode  os.FileMode
	mtime time.Time
	since time.Time
	done  bool // this stable version was decided on (started, refused or found incomplete)
}

type runner struct {
	sha    string
	cancel context.CancelFunc
	done   chan struct{}
}

// New checks cfg; Run starts the work.
func New(cfg Config) (*Host, error) {
	if cfg.Dir == "" || cfg.StateDir == "" || cfg.DataDir == "" {
		return nil, errors.New("plugins: folder, state folder and data folder must be set")
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = DefaultCallTimeout
	}
	if cfg.Settle <= 0 {
		cfg.Settle = DefaultSettle
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = DefaultBackoffMin
	}
	if cfg.BackoffMax < cfg.BackoffMin {
		cfg.BackoffMax = max(DefaultBackoffMax, cfg.BackoffMin)
	}
	if cfg.Batch <= 0 {
		cfg.Batch = DefaultBatch
	}
	if cfg.Poll <= 0 {
		cfg.Poll = DefaultPoll
	}
	if cfg.HubConsumer == "" {
		cfg.HubConsumer = hub.DefaultConsumer
	}
	if cfg.HostName == "" {
		cfg.HostName, _ = os.Hostname()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	for _, d := range []string{cfg.Dir, cfg.StateDir, filepath.Join(cfg.StateDir, "bin")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("plugins: create %s: %w", d, err)
		}
	}
	h := &Host{cfg: cfg, log: cfg.Logger.With("component", "plugins"), status: map[string]*Status{},
		claims: map[string]string{}, runners: map[string]*runner{}, seen: map[string]fileSeen{}, refused: map[string]bool{}}
	if cfg.Conn != nil {
		js, err := jetstream.New(cfg.Conn)
		if err != nil {
			return nil, fmt.Errorf("plugins: jetstream: %w", err)
		}
		h.js = js
	}
	return h, nil
}

// ReadAllowlist reads a sha256 allowlist in sha256sum's format ("<hex>  <name>" per line; the
// name is optional; # starts a comment). Errors name the line.
func ReadAllowlist(path string) (map[string]bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("plugins allowlist: %w", err)
	}
	out := map[string]bool{}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		sum := strings.ToLower(strings.Fields(line)[0])
		if d, err := hex.DecodeString(sum); err != nil || len(d) != sha256.Size {
			return nil, fmt.Errorf("plugins allowlist %s line %d: %q is not a sha256", path, i+1, sum)
		}
		out[sum] = true
	}
	return out, nil
}

// Run watches the folder and runs the plugins until ctx ends; it stops them all before it returns.
func (h *Host) Run(ctx context.Context) error {
	if h.js == nil {
		return errors.New("plugins: no NATS connection")
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("plugins: watch: %w", err)
	}
	defer w.Close()
	if err := w.Add(h.cfg.Dir); err != nil {
		return fmt.Errorf("plugins: watch %s: %w", h.cfg.Dir, err)
	}
	h.log.Info("plugins folder watched", "dir", h.cfg.Dir, "allowlist", h.cfg.Allow != nil)
	tick := time.NewTicker(h.cfg.Settle / 2)
	defer tick.Stop()
	rescan := time.NewTicker(5 * time.Second)
	defer rescan.Stop()
	h.scan(ctx)
	defer h.stopAll()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			// Any change restarts the file's settle clock; the tick decides.
			h.mu.Lock()
			delete(h.seen, filepath.Base(ev.Name))
			h.mu.Unlock()
			h.check(ctx, filepath.Base(ev.Name))
		case err, ok := <-w.Errors:
			if ok {
				h.log.Warn("plugins folder watch", "err", err)
			}
		case <-tick.C:
			h.mu.Lock()
			names := make([]string, 0, len(h.seen))
			for n, s := range h.seen {
				if !s.done {
					names = append(names, n)
				}
			}
			h.mu.Unlock()
			for _, n := range names {
				h.check(ctx, n)
			}
			h.writeStatus()
		case <-rescan.C:
			// fsnotify can miss events (overflow); a periodic look catches up.
			h.scan(ctx)
		}
	}
}

func (h *Host) scan(ctx context.Context) {
	ents, err := os.ReadDir(h.cfg.Dir)
	if err != nil {
		h.log.Warn("plugins folder unreadable", "err", err)
		return
	}
	present := map[string]bool{}
	for _, e := range ents {
		present[e.Name()] = true
		h.check(ctx, e.Name())
	}
	h.mu.Lock()
	var gone []string
	for n := range h.status {
		if !present[n] {
			gone = append(gone, n)
		}
	}
	h.mu.Unlock()
	for _, n := range gone {
		h.check(ctx, n)
	}
}

// check decides about one file of the folder: gone → stop; still changing → wait; complete,
// allowed and new → (re)start.
func (h *Host) check(ctx context.Context, name string) {
	if name == "" || strings.HasPrefix(name, ".") || strings.HasSuffix(name, ".tmp") {
		return // the way in for atomic writers: written as a hidden or .tmp file, renamed in
	}
	path := filepath.Join(h.cfg.Dir, name)
	st, err := os.Stat(path)
	if err != nil || !st.Mode().IsRegular() {
		h.remove(name)
		return
	}
	now := time.Now()
	h.mu.Lock()
	prev, ok := h.seen[name]
	cur := fileSeen{size: st.Size(), mode: st.Mode(), mtime: st.ModTime(), since: now}
	if ok && prev.size == cur.size && prev.mode == cur.mode && prev.mtime.Equal(cur.mtime) {
		if prev.done {
			h.mu.Unlock()
			return // decided already; a change of the file comes as an event or a new fingerprint
		}
		cur.since = prev.since
	}
	h.seen[name] = cur
	h.mu.Unlock()
	decided := func() {
		h.mu.Lock()
		if s, ok := h.seen[name]; ok && s.since.Equal(cur.since) {
			s.done = true
			h.seen[name] = s
		}
		h.mu.Unlock()
	}
	if st.Mode().Perm()&0o111 == 0 {
		h.wait(name, "not executable (chmod +x when it is complete)")
		return
	}
	if prev.since.IsZero() || now.Sub(cur.since) < h.cfg.Settle {
		h.wait(name, "being written")
		return
	}
	if err := completeBinary(path, st.Size()); err != nil {
		h.wait(name, "incomplete binary: "+err.Error())
		decided()
		return
	}
	sum, err := fileSHA256(path)
	if err != nil {
		h.wait(name, err.Error())
		return
	}
	decided()
	h.mu.Lock()
	r := h.runners[name]
	if r != nil && r.sha == sum {
		h.mu.Unlock()
		return
	}
	h.mu.Unlock()
	if h.cfg.Allow != nil && !h.cfg.Allow[sum] {
		h.mu.Lock()
		logged := h.refused[sum]
		h.refused[sum] = true
		h.mu.Unlock()
		if r != nil {
			h.stop(name)
		}
		if !logged {
			h.log.Error("plugin refused: sha256 not on the allowlist", "file", name, "sha256", sum)
		}
		h.set(name, func(s *Status) {
			*s = Status{File: name, SHA256: sum, State: StateRefused, Reason: "sha256 not on the allowlist", Since: time.Now()}
		})
		return
	}
	if r != nil {
		h.log.Info("plugin binary replaced", "file", name, "sha256", sum)
		h.stop(name)
	}
	h.startRunner(ctx, name, path, sum)
}

// completeBinary refuses an ELF file whose headers, sections or segments reach past its end (a
// copy still in progress). Other executables (scripts) only need a stable size and mode.
func completeBinary(path string, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	magic := make([]byte, 4)
	if _, err := io.ReadFull(f, magic); err != nil {
		return fmt.Errorf("%d bytes", size)
	}
	if string(magic) != elf.ELFMAG {
		return nil
	}
	ef, err := elf.NewFile(f)
	if err != nil {
		return err
	}
	for _, s := range ef.Sections {
		if s.Type != elf.SHT_NOBITS && s.Type != elf.SHT_NULL && int64(s.Offset+s.FileSize) > size {
			return fmt.Errorf("section %s ends at %d of %d bytes", s.Name, s.Offset+s.FileSize, size)
		}
	}
	for _, p := range ef.Progs {
		if int64(p.Off+p.Filesz) > size {
			return fmt.Errorf("segment ends at %d of %d bytes", p.Off+p.Filesz, size)
		}
	}
	return nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	hs := sha256.New()
	if _, err := io.Copy(hs, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(hs.Sum(nil)), nil
}

// copyVerified copies src to the private bin folder and checks the copy's sha256, so the binary
// that runs is the one that was checked even if the folder's file changes meanwhile.
func (h *Host) copyVerified(name, src, sum string) (string, error) {
	dst := filepath.Join(h.cfg.StateDir, "bin", name+"-"+sum[:16])
	if got, err := fileSHA256(dst); err == nil && got == sum {
		return dst, nil
	}
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return "", err
	}
	if err := out.Close(); err != nil {
		return "", err
	}
	if got, err := fileSHA256(tmp); err != nil || got != sum {
		os.Remove(tmp)
		return "", fmt.Errorf("binary changed while being copied")
	}
	return dst, os.Rename(tmp, dst)
}

func (h *Host) wait(name, reason string) {
	h.mu.Lock()
	_, running := h.runners[name]
	h.mu.Unlock()
	if running {
		return // a replacement is on its way; the old binary's copy keeps running until then
	}
	h.set(name, func(s *Status) {
		if s.State != StateWaiting || s.Reason != reason {
			*s = Status{File: name, State: StateWaiting, Reason: reason, Since: time.Now()}
		}
	})
}

func (h *Host) remove(name string) {
	h.mu.Lock()
	_, known := h.status[name]
	delete(h.seen, name)
	h.mu.Unlock()
	if !known {
		return
	}
	h.stop(name)
	h.mu.Lock()
	delete(h.status, name)
	h.dirty = true
	h.mu.Unlock()
	h.log.Info("plugin removed", "file", name)
	h.writeStatus()
}

func (h *Host) startRunner(ctx context.Context, name, path, sum string) {
	rctx, cancel := context.WithCancel(ctx)
	r := &runner{sha: sum, cancel: cancel, done: make(chan struct{})}
	h.mu.Lock()
	h.runners[name] = r
	h.mu.Unlock()
	h.set(name, func(s *Status) {
		*s = Status{File: name, SHA256: sum, State: StateStarting, Since: time.Now()}
	})
	go func() {
		defer close(r.done)
		h.supervise(rctx, name, path, sum)
	}()
}

// stop ends a file's plugin and waits until its process is gone.
func (h *Host) stop(name string) {
	h.mu.Lock()
	r := h.runners[name]
	delete(h.runners, name)
	for k, f := range h.claims {
		if f == name {
			delete(h.claims, k)
		}
	}
	h.mu.Unlock()
	if r != nil {
		r.cancel()
		<-r.done
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		h.release(ctx, name)
		cancel()
	}
}

func (h *Host) stopAll() {
	h.mu.Lock()
	names := make([]string, 0, len(h.runners))
	for n := range h.runners {
		names = append(names, n)
	}
	h.mu.Unlock()
	for _, n := range names {
		h.stop(n)
	}
	h.writeStatus()
}

// supervise runs a plugin and restarts it with exponential backoff until ctx ends or it is refused.
func (h *Host) supervise(ctx context.Context, name, src, sum string) {
	log := h.log.With("file", name)
	path, err := h.copyVerified(name, src, sum)
	if err != nil {
		log.Error("plugin not started", "err", err)
		h.set(name, func(s *Status) { s.State, s.Reason = StateWaiting, err.Error() })
		return
	}
	backoff := h.cfg.BackoffMin
	restarts := 0
	for ctx.Err() == nil {
		began := time.Now()
		err := h.runOnce(ctx, &run{h: h, file: name, path: path, log: log, restarts: restarts, opened: map[string]*sessionWriter{}}, "")
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errRefused) {
			log.Error("plugin refused", "err", err)
			h.set(name, func(s *Status) { s.State, s.Reason, s.LastError = StateRefused, err.Error(), err.Error() })
			return
		}
		if time.Since(began) > time.Minute {
			backoff = h.cfg.BackoffMin
		}
		restarts++
		log.Warn("plugin failed; restarting", "err", err, "restarts", restarts, "backoff", backoff)
		h.set(name, func(s *Status) {
			s.State, s.Reason, s.LastError, s.Restarts, s.PID = StateRestarting, "restart in "+backoff.String(), err.Error(), restarts, 0
		})
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, h.cfg.BackoffMax)
	}
}

// runOnce is one life of a plugin process. once names a single session to run (pmhub plugins run).
func (h *Host) runOnce(ctx context.Context, r *run, once string) error {
	defer r.stop()
	r.once = once
	if err := r.start(ctx); err != nil {
		return err
	}
	var err error
	if once == "" {
		r.statePath = statePath(h.cfg.StateDir, r.info.Name, r.info.Version)
		if r.state, err = loadState(r.statePath); err != nil {
			return err
		}
	} else {
		r.state = &pluginState{Sessions: map[string]*sessionState{}}
	}
	tables := []string{sdk.FindingsTable}
	for _, t := range r.info.Tables {
		tables = append(tables, t.Table)
	}
	h.set(r.file, func(s *Status) {
		s.Name, s.Version, s.Description, s.Components, s.Kinds, s.Tables = r.info.Name, r.info.Version, r.info.Description, r.info.Components, r.info.Kinds, tables
		s.PID, s.State, s.Reason = r.pid, StateRunning, ""
	})
	if err := r.setupConsumer(ctx); err != nil {
		return err
	}
	return r.loop(ctx)
}

// claim reserves a plugin's name and tables for one file; a second file may not take them.
func (h *Host) claim(file string, in sdk.Info) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	keys := []string{"plugin:" + in.Name}
	for _, t := range in.Tables {
		keys = append(keys, "table:"+t.Table)
	}
	for _, k := range keys {
		if f, ok := h.claims[k]; ok && f != file {
			return fmt.Errorf("%s is already taken by plugin file %s", strings.TrimPrefix(strings.TrimPrefix(k, "plugin:"), "table:"), f)
		}
	}
	for _, k := range keys {
		h.claims[k] = file
	}
	return nil
}

// set changes a plugin's state and writes status.json at once, so pmhub plugins ls never shows
// an old state (update's counters follow with the next tick).
func (h *Host) set(name string, f func(*Status)) {
	h.mu.Lock()
	s := h.status[name]
	if s == nil {
		s = &Status{File: name, Since: time.Now()}
		h.status[name] = s
	}
	f(s)
	h.dirty = true
	h.mu.Unlock()
	h.writeStatus()
}

// update changes a known plugin's status (no-op once it is removed).
func (h *Host) update(name string, f func(*Status)) {
	h.mu.Lock()
	if s := h.status[name]; s != nil {
		f(s)
		h.dirty = true
	}
	h.mu.Unlock()
}

func (h *Host) countFailed(name string, n int64) { h.update(name, func(s *Status) { s.Failed += n }) }

// Status lists the plugins by file name.
func (h *Host) Status() []Status {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]Status, 0, len(h.status))
	for _, s := range h.status {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].File < out[j].File })
	return out
}

func (h *Host) writeStatus() {
	if h.cfg.StateDir == "" {
		return
	}
	h.statusMu.Lock()
	defer h.statusMu.Unlock()
	h.mu.Lock()
	dirty := h.dirty
	h.dirty = false
	h.mu.Unlock()
	if !dirty {
		return
	}
	b, _ := json.MarshalIndent(h.Status(), "", "  ")
	if err := writeFileAtomic(filepath.Join(h.cfg.StateDir, StatusFile), append(b, '\n')); err != nil {
		h.log.Warn("plugins status not written", "err", err)
	}
}

// ReadStatus reads the status a running host last wrote under stateDir.
func ReadStatus(stateDir string) ([]Status, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, StatusFile))
	if err != nil {
		return nil, err
	}
	var out []Status
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("%s: %w", StatusFile, err)
	}
	return out, nil
}

// activeSessions are the sessions the hub has on disk and not ended.
func (h *Host) activeSessions() []string {
	ents, _ := os.ReadDir(filepath.Join(h.cfg.DataDir, "sessions"))
	var out []string
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		if m, err := hub.ReadMetadata(hub.SessionDir(h.cfg.DataDir, e.Name())); err == nil && m.Status != hub.StatusEnded {
			out = append(out, e.Name())
		}
	}
	return out
}

// hasSegments reports whether any folder of the session is on disk: its live folder, or a closed
// segment while a rotation is between moving the live folder and making the next one.
func (h *Host) hasSegments(session string) bool {
	dirs, err := hub.Segments(h.cfg.DataDir, session)
	return err == nil && len(dirs) > 0
}

// hubPast reports whether the hub's ingest consumer has acknowledged stream sequence seq.
func (h *Host) hubPast(ctx context.Context, seq uint64) bool {
	c, err := h.js.Consumer(ctx, proto.StreamName, h.cfg.HubConsumer)
	if err != nil {
		return false
	}
	ci, err := c.Info(ctx)
	return err == nil && ci.AckFloor.Stream >= seq
}

// firstSeq is the stream's first sequence (above 1 once limits removed old messages).
func (h *Host) firstSeq(ctx context.Context) (uint64, error) {
	st, err := h.js.Stream(ctx, proto.StreamName)
	if err != nil {
		return 0, err
	}
	si, err := st.Info(ctx)
	if err != nil {
		return 0, err
	}
	return si.State.FirstSeq, nil
}

func readFileLimit(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, limit))
}

// RunSession runs the plugin binary at path over one session from its first event still in the
// stream, writes the rows that are not there yet and returns when the plugin closed the session
// (pmhub plugins run). It works on ended sessions too.
func (h *Host) RunSession(ctx context.Context, path, session string) (Status, error) {
	if h.js == nil {
		return Status{}, errors.New("plugins: no NATS connection")
	}
	name := filepath.Base(path)
	sum, err := fileSHA256(path)
	if err != nil {
		return Status{}, fmt.Errorf("plugins run: %w", err)
	}
	if h.cfg.Allow != nil && !h.cfg.Allow[sum] {
		return Status{}, fmt.Errorf("plugins run: %s: sha256 %s not on the allowlist", name, sum)
	}
	h.set(name, func(s *Status) { *s = Status{File: name, SHA256: sum, State: StateStarting, Since: time.Now()} })
	r := &run{h: h, file: name, path: path, log: h.log.With("file", name), opened: map[string]*sessionWriter{}}
	err = h.runOnce(ctx, r, session)
	st := h.Status()
	for _, s := range st {
		if s.File == name {
			return s, err
		}
	}
	return Status{}, err
}

// Inspect starts the binary at path, shakes hands, asks it who it is and stops it: what pmhub
// plugins add checks before it moves a binary into the folder. Errors say what is wrong with it.
func Inspect(ctx context.Context, path string, timeout time.Duration) (sdk.Info, string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return sdk.Info{}, "", err
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return sdk.Info{}, "", fmt.Errorf("%s is not an executable file", path)
	}
	if err := completeBinary(path, st.Size()); err != nil {
		return sdk.Info{}, "", fmt.Errorf("%s is not a complete binary: %w", path, err)
	}
	sum, err := fileSHA256(path)
	if err != nil {
		return sdk.Info{}, "", err
	}
	if timeout <= 0 {
		timeout = DefaultCallTimeout
	}
	h := &Host{cfg: Config{CallTimeout: timeout}, claims: map[string]string{}, status: map[string]*Status{}}
	r := &run{h: h, file: filepath.Base(path), path: path, log: slog.New(slog.DiscardHandler)}
	defer r.stop()
	if err := r.start(ctx); err != nil {
		return sdk.Info{}, sum, err
	}
	return r.info, sum, nil
}
