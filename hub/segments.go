package hub

// Rotation: a session that lives for weeks (a vLLM server that is never restarted) is cut into
// consecutive segments of one logical session. The live segment is always the session's own
// folder, <data>/sessions/<session>/, so every reader of a running session (plugins, the HTTP
// pages, show) keeps finding it where it always was. When the live segment is due (Config.
// RotateEvery of hub time since it opened, or Config.RotateBytes of CSV), the next batch with new
// rows first closes it: its files are committed (still active), the folder renamed to
// <session>@<index, 6 digits> (a name no session id can have) and recorded there as ended
// (end_reason "rotated"), and a fresh live folder opened with the next index. Rows go to the segment that is live when they arrive;
// each process's seen sequence numbers move on with it (ProcMeta.EarlierSeqs), so an event
// redelivered after a boundary is still recognised and never written twice, and none is lost.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// segmentSep joins a session id and a closed segment's index in the segment's folder name; session
// ids never contain it (proto's name grammar), so no session folder can look like a segment.
const segmentSep = "@"

// segmentFolderName is the folder name of a closed segment: "<session>@000003".
func segmentFolderName(session string, index int) string {
	return fmt.Sprintf("%s%s%06d", session, segmentSep, index)
}

// SplitSegmentFolder parses a folder name under <data>/sessions/: a closed segment's name
// "<session>@<index>" gives its session, index and closed=true; any other name is a session's own
// (live, or only) folder: session=name, index=-1, closed=false.
func SplitSegmentFolder(name string) (session string, index int, closed bool) {
	i := strings.LastIndex(name, segmentSep)
	if i <= 0 {
		return name, -1, false
	}
	n, err := strconv.Atoi(name[i+1:])
	if err != nil || n < 0 {
		return name, -1, false
	}
	return name[:i], n, true
}

// Segments returns the folders of a logical session's segments under the hub data folder
// dataDir, oldest first: its closed segments (<data>/sessions/<session>@<index>) in index order,
// then its own folder SessionDir(dataDir, session) (the live segment, or the whole session when it
// never rotated) when it exists. Closed segments retention removed are simply not there.
// Errors: the sessions folder cannot be read; no folder of that session (wraps os.ErrNotExist).
func Segments(dataDir, session string) ([]string, error) {
	return segmentsIn(sessionsDir(dataDir), session)
}

func segmentsIn(root, session string) ([]string, error) {
	ents, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("hub: list sessions: %w", err)
	}
	type seg struct {
		index int
		name  string
	}
	var closed []seg
	live := false
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		if e.Name() == session {
			live = true
			continue
		}
		if id, idx, ok := SplitSegmentFolder(e.Name()); ok && id == session {
			closed = append(closed, seg{idx, e.Name()})
		}
	}
	sort.Slice(closed, func(i, j int) bool { return closed[i].index < closed[j].index })
	var out []string
	for _, c := range closed {
		out = append(out, filepath.Join(root, c.name))
	}
	if live {
		out = append(out, filepath.Join(root, session))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("hub: no session %q in %s: %w", session, root, os.ErrNotExist)
	}
	return out, nil
}

// rotating reports whether sessions are cut into segments.
func (s *Server) rotating() bool { return s.cfg.RotateEvery > 0 || s.cfg.RotateBytes > 0 }

// initSegment gives a new or reloaded session its segment record when rotation is on; a session
// that started before rotation was turned on becomes segment 0 from now.
func (s *Server) initSegment(ss *session, now time.Time) {
	if s.rotating() && ss.meta.Segment == nil {
		ss.meta.Segment = &SegmentMeta{StartNS: now.UnixNano()}
		if ss.segRows > 0 {
			ss.meta.Segment.FirstAlignedNS, ss.meta.Segment.LastAlignedNS = ss.alignedLo, ss.alignedHi
		}
		ss.metaDirty = true
	}
}

// rotationDue says why ss's live segment must close before more rows go in ("bytes", "age"), or
// "" when it need not. An empty segment never closes.
func (s *Server) rotationDue(ss *session, now time.Time) string {
	g := ss.meta.Segment
	if g == nil || ss.segRows == 0 {
		return ""
	}
	if s.cfg.RotateBytes > 0 && ss.meta.Bytes >= s.cfg.RotateBytes {
		return "bytes"
	}
	if s.cfg.RotateEvery > 0 && now.UnixNano()-g.StartNS >= int64(s.cfg.RotateEvery) {
		return "age"
	}
	return ""
}

// rotate closes ss's live segment and opens the next. Everything written so far (this fetch
// round's earlier messages included) is committed into the closing segment first, so an error
// leaves the session as the consumer's write errors do: its messages are handed back and the
// session is rebuilt from disk, where openSession finishes an interrupted rotation.
func (s *Server) rotate(ss *session, now time.Time, why string) error {
	// Committed while the folder is still the live one and its status still active: a plugin host
	// or reader looking at <data>/sessions/<session> never sees the session ended by a rotation.
	ss.meta.Segment.Rotated = why
	ss.metaDirty = true
	if err := ss.commit(); err != nil {
		return fmt.Errorf("close segment %d: %w", ss.meta.Segment.Index, err)
	}
	ss.closeFiles()
	return s.closeSegment(ss, now)
}

// closeSegment moves the committed live folder to its closed-segment name (unless ss was loaded
// from there), records it there as ended by rotation, and opens the next segment as the session's
// folder with its metadata written at once: a restart then finds the boundary even before the new
// segment's first row. Each step can be repeated, so a rotation a crash interrupted finishes when
// the session's next message comes (openSession).
func (s *Server) closeSegment(ss *session, now time.Time) error {
	// Writers of the live folder outside the hub (the plugin host) hold the rotation lock shared:
	// none of their writes falls between the move and the next segment's metadata.
	unlock, err := LockRotation(s.cfg.DataDir, true)
	if err != nil {
		return fmt.Errorf("close segment: %w", err)
	}
	defer unlock()
	root := sessionsDir(s.cfg.DataDir)
	live := SessionDir(s.cfg.DataDir, ss.id)
	name := segmentFolderName(ss.id, ss.meta.Segment.Index)
	if ss.dir == live {
		if err := os.Rename(live, filepath.Join(root, name)); err != nil {
			return fmt.Errorf("close segment: %w", err)
		}
		if err := syncDir(root); err != nil {
			return err
		}
		ss.dir = filepath.Join(root, name)
	}
	if ss.meta.Status != StatusEnded || ss.meta.EndReason != EndRotated {
		ss.meta.Status, ss.meta.EndReason, ss.meta.EndNS = StatusEnded, EndRotated, now.UnixNano()
		ss.meta.Segment.EndNS = now.UnixNano()
		ss.metaDirty = true
	}
	if err := ss.commit(); err != nil {
		return fmt.Errorf("close segment %d: %w", ss.meta.Segment.Index, err)
	}
	ss.dir = live
	ss.nextSegment(now, name)
	s.rotated = true
	s.log.Info("session rotated", "session", ss.id, "closed", name, "segment", ss.meta.Segment.Index)
	return ss.commit()
}

// RotationLockFile, in the hub data folder, is flock(2)ed exclusively by the hub from the moment
// it moves a live segment to its closed name until the next segment's metadata.json is written.
// A process that writes into a session's live folder besides the hub (the plugin host, pmhub
// plugins run) holds it shared around each write, so it never finds the live folder missing nor
// writes into a segment after it was recorded closed.
const RotationLockFile = "rotation.lock"

// LockRotation takes the data folder's RotationLockFile, waiting for it: exclusive for a rotation,
// shared for a writer of live folders. unlock releases it (the kernel does when the process dies).
// Errors: the file cannot be created or locked.
func LockRotation(dataDir string, exclusive bool) (unlock func(), err error) {
	path := filepath.Join(dataDir, RotationLockFile)
	// In one process (pmhub serve runs the hub and the plugin host) an RWMutex goes first: a
	// waiting rotation holds back new writers, so a stream of overlapping shared flocks cannot
	// starve it.
	abs, _ := filepath.Abs(path)
	m, _ := rotationMu.LoadOrStore(abs, &sync.RWMutex{})
	mu := m.(*sync.RWMutex)
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
		mu.Lock()
	} else {
		mu.RLock()
	}
	release := func() {
		if exclusive {
			mu.Unlock()
		} else {
			mu.RUnlock()
		}
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		release()
		return nil, fmt.Errorf("hub: rotation lock: %w", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), how)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		release()
		return nil, fmt.Errorf("hub: lock %s: %w", path, err)
	}
	return func() { f.Close(); release() }, nil
}

// rotationMu holds one *sync.RWMutex per rotation lock file (absolute path).
var rotationMu sync.Map

// markClosedSegments records as ended by rotation every closed segment a crash left between its
// move and that record (only a session's newest one can be), so no reader takes it for a live
// session. Called at start.
func (s *Server) markClosedSegments(now time.Time) {
	root := sessionsDir(s.cfg.DataDir)
	ents, err := os.ReadDir(root)
	if err != nil {
		return
	}
	newest := map[string]string{}
	idx := map[string]int{}
	for _, e := range ents {
		if id, i, ok := SplitSegmentFolder(e.Name()); ok && e.IsDir() && (newest[id] == "" || i > idx[id]) {
			newest[id], idx[id] = e.Name(), i
		}
	}
	for _, id := range sortedKeys(newest) {
		dir := filepath.Join(root, newest[id])
		m, err := ReadMetadata(dir)
		if err != nil || m.Status == StatusEnded {
			continue
		}
		m.Status, m.EndReason, m.EndNS = StatusEnded, EndRotated, now.UnixNano()
		if m.Segment != nil {
			m.Segment.EndNS = m.EndNS
		}
		b, err := json.MarshalIndent(m, "", "  ")
		if err == nil {
			err = writeFileAtomic(filepath.Join(dir, MetadataFile), append(b, '\n'))
		}
		if err != nil {
			s.log.Warn("closed segment not recorded as ended", "segment", newest[id], "err", err)
			continue
		}
		s.log.Info("interrupted rotation: closed segment recorded as ended", "segment", newest[id])
	}
}

// nextSegment turns ss's in-memory state into the next segment's: the processes, hosts and seen
// sequence numbers go on; the counts start over.
func (s *session) nextSegment(now time.Time, previous string) {
	for _, p := range s.procs {
		p.meta.EarlierSeqs = p.seen.ranges()
		p.meta.Rows = map[string]int64{}
	}
	m := &s.meta
	m.Status, m.EndReason, m.EndNS = StatusActive, "", 0
	m.Rows, m.Bytes, m.DroppedByCap, m.Duplicates, m.AlignedClamped = map[string]int64{}, 0, 0, 0, 0
	m.Segment = &SegmentMeta{Index: m.Segment.Index + 1, Previous: previous, StartNS: now.UnixNano()}
	s.segRows, s.alignedLo, s.alignedHi = 0, 0, 0
	s.metaDirty = true
}

// noteAligned widens the live segment's ts_aligned_ns range by one written row; the range is kept
// whether or not rotation is on (it may be turned on at a restart) and lands in the segment record
// at commit.
func (s *session) noteAligned(a int64) {
	if s.segRows <= 1 || a < s.alignedLo {
		s.alignedLo = a
	}
	if s.segRows <= 1 || a > s.alignedHi {
		s.alignedHi = a
	}
	if g := s.meta.Segment; g != nil {
		g.FirstAlignedNS, g.LastAlignedNS = s.alignedLo, s.alignedHi
	}
}

// lastClosedSegment is the folder of the session's newest closed segment ("" when none).
func (s *Server) lastClosedSegment(id string) string {
	dirs, err := Segments(s.cfg.DataDir, id)
	if err != nil {
		return ""
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, _, closed := SplitSegmentFolder(filepath.Base(dirs[i])); closed {
			return dirs[i]
		}
	}
	return ""
}

// applySegmentRetention removes closed segments: those that closed more than SegmentsMaxAge ago,
// then each session's oldest while all its segments together hold more than SegmentsMaxBytes on
// disk. A session's live folder is never removed here (Retention ends whole sessions).
func (s *Server) applySegmentRetention(now time.Time) {
	if s.cfg.SegmentsMaxAge <= 0 && s.cfg.SegmentsMaxBytes <= 0 {
		return
	}
	root := sessionsDir(s.cfg.DataDir)
	ents, err := os.ReadDir(root)
	if err != nil {
		return
	}
	type seg struct {
		index int
		name  string
	}
	closed := map[string][]seg{}
	for _, e := range ents {
		if id, idx, ok := SplitSegmentFolder(e.Name()); ok && e.IsDir() {
			closed[id] = append(closed[id], seg{idx, e.Name()})
		}
	}
	remove := func(id, name, why string) bool {
		if err := os.RemoveAll(filepath.Join(root, name)); err != nil {
			s.log.Warn("segment retention: remove failed", "session", id, "segment", name, "err", err)
			return false
		}
		s.mu.Lock()
		delete(s.archived, name)
		s.mu.Unlock()
		s.log.Info("segment retention: segment removed", "session", id, "segment", name, "reason", why)
		return true
	}
	for _, id := range sortedKeys(closed) {
		segs := closed[id]
		sort.Slice(segs, func(i, j int) bool { return segs[i].index < segs[j].index })
		if s.cfg.SegmentsMaxAge > 0 {
			kept := segs[:0]
			for _, g := range segs {
				m, err := ReadMetadata(filepath.Join(root, g.name))
				if err == nil && m.EndNS > 0 && now.Sub(time.Unix(0, m.EndNS)) > s.cfg.SegmentsMaxAge && remove(id, g.name, "age") {
					continue
				}
				kept = append(kept, g)
			}
			segs = kept
		}
		if s.cfg.SegmentsMaxBytes > 0 {
			sizes := make([]int64, len(segs))
			total := dirSize(filepath.Join(root, id))
			for i, g := range segs {
				sizes[i] = dirSize(filepath.Join(root, g.name))
				total += sizes[i]
			}
			for i := 0; i < len(segs) && total > s.cfg.SegmentsMaxBytes; i++ {
				if remove(id, segs[i].name, "bytes") {
					total -= sizes[i]
				}
			}
		}
	}
}

// dirSize is the bytes of the regular files under dir (0 when it is gone).
func dirSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// syncDir makes a rename inside dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// archiveTotals is what Sessions() adds to a session for one of its closed segments.
type archiveTotals struct {
	session string
	rows    map[string]int64
	bytes   int64
}
