package hub

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// AlignedColumn is the column the hub appends to every table: ts_ns moved onto the hub's clock
// with the host's measured offset. ts_ns itself stays the value the process recorded.
const AlignedColumn = "ts_aligned_ns"

// timeAlignment is the sentence metadata.json carries about AlignedColumn.
const timeAlignment = "ts_ns is the process's own wall clock; ts_aligned_ns = ts_ns + hosts[host].offset_ns (the host's latest measured offset when the row was written; 0 until one was measured)"

// Schema tells the writer each table's CSV header (common columns + the table's own, without
// AlignedColumn) and the schema version to record.
type Schema interface {
	Header(table string) ([]string, bool)
	Tables() []string
	Version() string
}

// procKey names one process of a session: its host, pid and the shim's per-start instance id
// (empty from older shims), so a pid reused on a host never shares seen-state or metadata.
type procKey struct {
	host     string
	pid      int64
	instance string
}

type proc struct {
	meta *ProcMeta
	seen seqSet
}

type tableFile struct {
	f     *os.File
	w     *bufio.Writer
	dirty bool
}

// session is one cluster-wide session folder being written. Not safe for concurrent use: the
// consumer loop owns it.
type session struct {
	id        string
	dir       string
	schema    Schema
	meta      Metadata
	procs     map[procKey]*proc
	files     map[string]*tableFile
	line      []byte
	prefix    []byte    // a batch's common columns up to ep, spelled once per batch
	last      time.Time // hub time of the last message for this session (idle detection)
	metaDirty bool
	// segRows counts the rows written into the live segment (rotation never closes an empty one);
	// alignedLo and alignedHi are their smallest and largest ts_aligned_ns.
	segRows              int64
	alignedLo, alignedHi int64
	// known holds the latest measured offset per host, hub-wide, for hosts new to this session.
	known map[string]HostMeta
}

func newSession(dir, id string, schema Schema, maxBytes int64, now time.Time) *session {
	return &session{
		id: id, dir: dir, schema: schema,
		meta: Metadata{
			SchemaVersion: schema.Version(), Session: id, Status: StatusActive,
			StartNS: now.UnixNano(), TimeAlignment: timeAlignment,
			Hosts: map[string]*HostMeta{}, Rows: map[string]int64{}, MaxBytes: maxBytes,
		},
		procs: map[procKey]*proc{}, files: map[string]*tableFile{}, last: now, metaDirty: true,
	}
}

func (s *session) proc(host string, pid int64, instance string) *proc {
	k := procKey{host, pid, instance}
	p := s.procs[k]
	if p == nil {
		p = &proc{meta: &ProcMeta{Host: host, PID: pid, Instance: instance, Ident: Ident{DP: -1, PP: -1, TP: -1, EP: -1, Rank: -1}, Rows: map[string]int64{}}}
		s.procs[k] = p
		s.meta.Processes = append(s.meta.Processes, p.meta)
		sortProcs(s.meta.Processes)
		s.metaDirty = true
	}
	return p
}

func (s *session) host(name string) *HostMeta {
	h := s.meta.Hosts[name]
	if h == nil {
		h = &HostMeta{}
		if k, ok := s.known[name]; ok && k.Measured {
			h.OffsetNS, h.UncertaintyNS, h.Measured = k.OffsetNS, k.UncertaintyNS, true
		}
		s.meta.Hosts[name] = h
		s.metaDirty = true
	}
	return h
}

// file opens (creating with its header) the table's CSV. Files are created when a table's first
// row arrives, so a session folder holds only the tables that have data.
func (s *session) file(table string) (*tableFile, error) {
	if tf := s.files[table]; tf != nil {
		return tf, nil
	}
	hdr, ok := s.schema.Header(table)
	if !ok {
		return nil, fmt.Errorf("unknown table %q", table)
	}
	if err := os.MkdirAll(s.dir, 0o750); err != nil {
		return nil, fmt.Errorf("create session folder: %w", err)
	}
	path := filepath.Join(s.dir, table+".csv")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	tf := &tableFile{f: f, w: bufio.NewWriterSize(f, 256<<10)}
	if st.Size() == 0 {
		line := appendRecord(nil, append(append([]string{}, hdr...), AlignedColumn))
		tf.w.Write(line)
		s.meta.Bytes += int64(len(line))
		tf.dirty = true
	}
	s.files[table] = tf
	return tf, nil
}

// writeBatch appends the batch's new events; it returns how many rows were written. Events seen
// before (same host, pid, seq) are skipped; events beyond the size cap are counted as dropped.
func (s *session) writeBatch(b *Batch, now time.Time) (int, error) {
	s.last = now
	p := s.proc(b.Host, b.PID, b.Instance)
	if p.meta.Proc == "" && b.Proc != "" {
		p.meta.Proc = b.Proc
	}
	if p.meta.Ident.learn(b.Ident) {
		s.metaDirty = true
	}
	if b.Dropped > p.meta.Dropped {
		p.meta.Dropped = b.Dropped
		s.metaDirty = true
	}
	h := s.host(b.Host)
	off := int64(0)
	if h.Measured {
		off = h.OffsetNS
	}
	// The common columns up to ep are the same for every row of the batch.
	prefix := appendField(s.prefix[:0], s.id)
	prefix = appendField(prefix, b.Host)
	prefix = append(strconv.AppendInt(prefix, b.PID, 10), ',')
	prefix = appendField(prefix, b.Ident.Role)
	for _, r := range [4]int64{b.Ident.DP, b.Ident.PP, b.Ident.TP, b.Ident.EP} {
		prefix = append(strconv.AppendInt(prefix, r, 10), ',')
	}
	s.prefix = prefix
	written := 0
	// Rows are counted per run of one table (a batch is one kind, mostly one table), not per row
	// in two maps.
	runTable, run := "", int64(0)
	count := func() {
		if run > 0 {
			s.meta.Rows[runTable] += run
			p.meta.Rows[runTable] += run
		}
		run = 0
	}
	defer count()
	var tf *tableFile // the file of tfTable, looked up once per run of one table
	var tfTable string
	var err error
	for i := range b.Events {
		e := &b.Events[i]
		if p.seen.has(e.Seq) {
			s.meta.Duplicates++
			s.metaDirty = true
			continue
		}
		if tf == nil || e.Table != tfTable {
			if tf, err = s.file(e.Table); err != nil {
				return written, err
			}
			tfTable = e.Table
		}
		l := append(s.line[:0], prefix...)
		l = strconv.AppendUint(l, e.Seq, 10)
		l = append(l, ',')
		l = strconv.AppendInt(l, e.Step, 10)
		l = append(l, ',')
		tsAt := len(l)
		l = strconv.AppendInt(l, e.TsNS, 10)
		ts := l[tsAt:]
		for _, c := range e.Cols {
			l = append(l, ',')
			l = appendField(l, c)
			l = l[:len(l)-1]
		}
		l = append(l, ',')
		aligned, exact := alignTS(e.TsNS, off)
		if !exact {
			s.meta.AlignedClamped++
			s.metaDirty = true
		}
		if aligned == e.TsNS { // no offset measured (yet): the digits are ts_ns's
			l = append(l, ts...)
		} else {
			l = strconv.AppendInt(l, aligned, 10)
		}
		l = append(l, '\n')
		s.line = l
		p.seen.add(e.Seq)
		if s.meta.MaxBytes > 0 && s.meta.Bytes+int64(len(l)) > s.meta.MaxBytes {
			s.meta.DroppedByCap++
			s.metaDirty = true
			continue
		}
		if _, err := tf.w.Write(l); err != nil {
			return written, fmt.Errorf("write %s: %w", e.Table, err)
		}
		tf.dirty = true
		s.meta.Bytes += int64(len(l))
		if e.Table != runTable {
			count()
			runTable = e.Table
		}
		run++
		s.segRows++
		s.noteAligned(aligned)
		written++
	}
	if written > 0 {
		s.metaDirty = true
	}
	return written, nil
}

// applyLife records a lifecycle message; it reports whether every known process has now ended.
func (s *session) applyLife(l *Life, now time.Time) bool {
	s.last = now
	s.metaDirty = true
	h := s.host(l.Host)
	switch l.Type {
	case LifeStart:
		h.AgentVersion, h.Started = l.AgentVersion, true
		if l.StartNS != 0 && l.StartNS < s.meta.StartNS {
			s.meta.StartNS = l.StartNS
		}
		return false
	case LifeEnd:
		h.Ended, h.EndReason = true, l.Reason
		h.AgentDropped = max(h.AgentDropped, l.AgentDropped)
		h.ShimDropped = max(h.ShimDropped, l.Dropped)
		// The agent closed the session on this host: its processes are done, said bye or not.
		for _, q := range s.procs {
			if q.meta.Host == l.Host && !q.meta.Ended {
				q.meta.Ended, q.meta.EndNS, q.meta.EndState = true, l.EndNS, EndLost
			}
		}
		return s.allEnded()
	}
	p := s.proc(l.Host, l.PID, l.Instance)
	m := p.meta
	if l.Proc != "" {
		m.Proc = l.Proc
	}
	switch l.Type {
	case LifeHello:
		m.PPID, m.Python, m.VLLM, m.GPUUUID, m.Title, m.Argv, m.StartNS = l.PPID, l.Python, l.VLLM, l.GPUUUID, l.Title, l.Argv, l.StartNS
		if l.StartNS != 0 && l.StartNS < s.meta.StartNS {
			s.meta.StartNS = l.StartNS
		}
	case LifeStatus:
		m.Targets = l.Targets
		if l.Tables != nil {
			m.Tables = l.Tables
		}
	case LifeBye:
		// The most telling account wins: the process's own goodbye, then its parent's signal.
		if endRank[l.EndState] >= endRank[m.EndState] {
			m.EndState, m.EndSignal = l.EndState, l.EndSignal
		}
		m.Ended = true
		m.EndNS = l.EndNS
		m.Dropped = max(m.Dropped, l.Dropped)
		m.LastSeq = l.LastSeq
	}
	m.Ident.learn(l.Ident)
	s.learnLayout(m, l) // layout.go
	return s.allEnded()
}

// allEnded reports whether every process that took part has ended (bye, or its host's agent
// closed the session) and every agent that opened the session on its host has closed it.
func (s *session) allEnded() bool {
	for _, h := range s.meta.Hosts {
		if h.Started && !h.Ended {
			return false
		}
	}
	for _, q := range s.procs {
		if !q.meta.Ended {
			return false
		}
	}
	return len(s.procs) > 0
}

func (s *session) applyHeartbeat(hb *Heartbeat, now time.Time) {
	h := s.host(hb.Host)
	h.Heartbeats++
	h.LastSeenNS = now.UnixNano()
	if hb.Measured {
		h.OffsetNS, h.UncertaintyNS, h.Measured = hb.OffsetNS, hb.UncertaintyNS, true
	}
	if hb.AgentVersion != "" {
		h.AgentVersion = hb.AgentVersion
	}
	h.AgentDropped = max(h.AgentDropped, hb.AgentDropped)
	h.ShimDropped = max(h.ShimDropped, hb.ShimDropped)
	s.metaDirty = true
}

// commit makes everything written so far durable: CSVs flushed and fsynced, then metadata.json.
// The consumer acknowledges messages only after commit returned nil.
func (s *session) commit() error {
	pc, err := s.prepareCommit()
	if err != nil {
		return err
	}
	return pc.finish()
}

// pendingCommit is the part of a session's commit that needs no hub-wide lock: fsync the files
// flushed before, then write the metadata encoded before (session.commit's order).
type pendingCommit struct {
	ss    *session
	files map[string]*os.File
	meta  []byte // nil: unchanged
}

// prepareCommit flushes the session's buffered rows to its files and encodes its metadata;
// finish makes both durable. The caller holds the hub-wide lock. Errors name the table.
func (ss *session) prepareCommit() (pendingCommit, error) {
	pc := pendingCommit{ss: ss, files: map[string]*os.File{}}
	var errs []error
	for t, tf := range ss.files {
		if !tf.dirty {
			continue
		}
		if err := tf.w.Flush(); err != nil {
			errs = append(errs, fmt.Errorf("flush %s: %w", t, err))
			continue
		}
		pc.files[t] = tf.f
		tf.dirty = false
	}
	if len(errs) > 0 {
		return pc, errors.Join(errs...)
	}
	if !ss.metaDirty {
		return pc, nil
	}
	for _, p := range ss.procs {
		p.meta.Gaps = p.seen.gaps(p.meta.LastSeq)
		if p.meta.Gaps == nil {
			p.meta.Gaps = [][2]uint64{}
		}
	}
	b, err := json.MarshalIndent(&ss.meta, "", "  ")
	if err != nil {
		return pc, fmt.Errorf("encode metadata: %w", err)
	}
	pc.meta = append(b, '\n')
	ss.metaDirty = false
	return pc, nil
}

// finish fsyncs the flushed files, then writes metadata.json (atomically).
func (pc pendingCommit) finish() error {
	var errs []error
	for t, f := range pc.files {
		if err := f.Sync(); err != nil {
			errs = append(errs, fmt.Errorf("sync %s: %w", t, err))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if pc.meta == nil {
		return nil
	}
	if err := os.MkdirAll(pc.ss.dir, 0o750); err != nil {
		return fmt.Errorf("create session folder: %w", err)
	}
	return writeFileAtomic(filepath.Join(pc.ss.dir, MetadataFile), pc.meta)
}

// reopen makes an ended session active again: something new arrived for it (a late host, a
// process started after the others ended).
func (s *session) reopen() {
	if s.meta.Status == StatusEnded {
		s.meta.Status, s.meta.EndReason, s.meta.EndNS = StatusActive, "", 0
		s.metaDirty = true
	}
}

// end marks the session ended for reason and closes its files.
func (s *session) end(reason string, now time.Time) error {
	if s.meta.Status != StatusEnded {
		s.meta.Status, s.meta.EndReason, s.meta.EndNS = StatusEnded, reason, now.UnixNano()
		s.metaDirty = true
	}
	err := s.commit()
	s.closeFiles()
	return err
}

func (s *session) closeFiles() {
	for t, tf := range s.files {
		tf.w.Flush()
		tf.f.Close()
		delete(s.files, t)
	}
}

// loadSession rebuilds a session from its folder after a restart: metadata.json for what only it
// knows (hosts, process details), the CSV files for what was really written (which sequence
// numbers, how many rows, how many bytes). A torn last line (crash mid-write) is cut off; its
// event is not in the seen-state, so its redelivery writes it again, once.
func loadSession(dir, id string, schema Schema, maxBytes int64, now time.Time) (*session, error) {
	s := newSession(dir, id, schema, maxBytes, now)
	if m, err := ReadMetadata(dir); err == nil {
		s.meta = *m
		s.meta.MaxBytes = maxBytes
		if s.meta.Hosts == nil {
			s.meta.Hosts = map[string]*HostMeta{}
		}
		s.meta.Processes = nil
		for _, pm := range m.Processes {
			p := &proc{meta: pm}
			// Events written in earlier segments stay seen: a redelivery is not written again.
			p.seen.addRanges(pm.EarlierSeqs)
			s.procs[procKey{pm.Host, pm.PID, pm.Instance}] = p
			s.meta.Processes = append(s.meta.Processes, pm)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	// The CSVs are the truth for counts; metadata may lag them by one commit.
	s.meta.Rows = map[string]int64{}
	s.meta.Bytes = 0

	for _, p := range s.procs {
		p.meta.Rows = map[string]int64{}
	}
	for _, t := range schema.Tables() {
		if err := s.scanTable(t); err != nil {
			return nil, err
		}
	}
	s.last = now
	s.metaDirty = true
	return s, nil
}

func (s *session) scanTable(table string) error {
	path := filepath.Join(s.dir, table+".csv")
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	good := int64(bytes.LastIndexByte(data, '\n') + 1)
	r := csv.NewReader(bytes.NewReader(data[:good]))
	r.FieldsPerRecord = -1
	r.ReuseRecord = true
	hdr, err := r.Read()
	if err != nil {
		// Not even a complete header: start the file over.
		good = 0
	} else {
		idx := map[string]int{}
		for i, c := range hdr {
			idx[c] = i
		}
		hi, pi, si := idx["host"], idx["pid"], idx["seq"]
		ai, hasAligned := idx[AlignedColumn]
		for {
			off := r.InputOffset()
			rec, err := r.Read()
			if err == io.EOF {
				break
			}
			if err != nil || len(rec) != len(hdr) {
				good = off // a broken record: keep only what came before it
				break
			}
			pid, err1 := strconv.ParseInt(rec[pi], 10, 64)
			seq, err2 := strconv.ParseUint(rec[si], 10, 64)
			if err1 != nil || err2 != nil {
				good = off
				break
			}
			p := s.proc(strings.Clone(rec[hi]), pid, s.latestInstance(rec[hi], pid))
			p.seen.add(seq)
			p.meta.Rows[table]++
			s.meta.Rows[table]++
			s.segRows++
			if hasAligned {
				if a, err := strconv.ParseInt(rec[ai], 10, 64); err == nil {
					s.noteAligned(a)
				}
			}
		}
	}
	if good < int64(len(data)) {
		if err := f.Truncate(good); err != nil {
			return fmt.Errorf("truncate torn tail of %s: %w", path, err)
		}
		if err := f.Sync(); err != nil {
			return fmt.Errorf("sync %s: %w", path, err)
		}
	}
	s.meta.Bytes += good
	return nil
}

// appendField appends v as one CSV field followed by a comma, quoting only when needed.
func appendField(l []byte, v string) []byte {
	if needsQuotes(v) {
		l = append(l, '"')
		l = append(l, strings.ReplaceAll(v, `"`, `""`)...)
		l = append(l, '"', ',')
		return l
	}
	l = append(l, v...)
	return append(l, ',')
}

// needsQuotes reports whether v holds a comma, a quote or a line break.
func needsQuotes(v string) bool {
	for i := 0; i < len(v); i++ {
		switch v[i] {
		case ',', '"', '\r', '\n':
			return true
		}
	}
	return false
}

func appendRecord(l []byte, fields []string) []byte {
	for _, f := range fields {
		l = appendField(l, f)
	}
	l[len(l)-1] = '\n'
	return l
}

// alignTS returns ts+off, the event's time on the hub's clock, clamped to [0, MaxInt64] when the
// sum would leave it (exact=false): a wild clock offset or a ts near the int64 limit never wraps
// an aligned time negative. A negative ts (itself invalid) stays as the arithmetic gives it.
func alignTS(ts, off int64) (aligned int64, exact bool) {
	sum := ts + off
	switch {
	case off > 0 && sum < ts: // overflow past MaxInt64
		return math.MaxInt64, false
	case off < 0 && sum > ts: // overflow past MinInt64
		return 0, false
	case ts >= 0 && sum < 0:
		return 0, false
	}
	return sum, true
}

// End states of a process (proto Lifecycle.Bye.end_state).
const (
	EndClean  = "clean"
	EndLost   = "lost"
	EndKilled = "killed"
)

// endRank orders end states by how much their observer knew.
var endRank = map[string]int{"": 0, EndLost: 1, EndKilled: 2, EndClean: 3}

// latestInstance is the instance of the latest-started process host/pid in the metadata (the
// rows' CSV carries no instance; empty when none is known), so seen-state rebuilt from the CSV
// after a restart lands on the process whose batches will follow.
func (s *session) latestInstance(host string, pid int64) string {
	inst, start := "", int64(-1)
	for _, pm := range s.meta.Processes {
		if pm.Host == host && pm.PID == pid && pm.StartNS >= start {
			inst, start = pm.Instance, pm.StartNS
		}
	}
	return inst
}
