package agent

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// errSpoolBusy: another agent owns the spool folder.
var errSpoolBusy = errors.New("spool folder in use by another agent")

// errSpoolVersion: a segment written by a newer agent, in a format this one cannot read.
var errSpoolVersion = errors.New("spool segment of a newer format")

// Spool segment formats. Format 1 (agents before the header existed) is a bare sequence of
// records: u32 little-endian length, then the uvarint-prefixed subject, id and data. Format 2 starts
// the file with spoolMagic and the format byte, and each record is u32 length, u32 CRC-32C of the
// body, body; a record whose checksum fails ends the segment like a torn tail. A newer agent reads
// every older format; an older agent leaves a newer segment untouched (errSpoolVersion).
const (
	spoolMagic   = "PMSPOOL"
	spoolFormat  = 2
	spoolHdrSize = len(spoolMagic) + 1
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

func spoolHeader() []byte { return append([]byte(spoolMagic), spoolFormat) }

// Msg is one stream message: its subject, its Nats-Msg-Id and its encoded body.
type Msg struct {
	Subject string
	ID      string
	Data    []byte
}

func (m *Msg) size() int64 { return int64(len(m.Subject) + len(m.ID) + len(m.Data) + 16) }

// spool is an ordered on-disk queue of messages in numbered segment files. The oldest segment is
// read back whole (segments are small), the newest is appended to. A segment is removed once every
// message in it was delivered; after a crash the partly delivered segment is replayed from its
// start, and the stream's de-duplication by message id drops what was already stored.
type spool struct {
	dir    string
	max    int64
	segMax int64

	segs  []int64 // segment numbers, oldest first
	sizes map[int64]int64
	bytes int64
	count int64

	lock *os.File // flock held while this process owns the folder
	w    *os.File // appends to segs[len(segs)-1] when not nil
	wbuf *bufio.Writer
	rseg int64 // segment loaded into r, -1 when none
	r    []Msg
	rpos int

	unsynced int64   // bytes appended since the last fsync
	foreign  []int64 // segments of a newer format, left on disk untouched
}

const segFirst = int64(1) << 40 // leaves room below for segments written in front at shutdown

func openSpool(dir string, max int64) (*spool, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	s := &spool{dir: dir, max: max, segMax: 4 << 20, sizes: map[int64]int64{}, rseg: -1}
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("%w: %s", errSpoolBusy, dir)
	}
	s.lock = lock
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, "seg-") || !strings.HasSuffix(name, ".spool") {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(name, "seg-"), ".spool"), 10, 64)
		if err != nil {
			continue
		}
		msgs, size, err := s.readSeg(n)
		if errors.Is(err, errSpoolVersion) {
			s.foreign = append(s.foreign, n)
			continue
		}
		if err != nil {
			lock.Close()
			return nil, err
		}
		if len(msgs) == 0 {
			_ = os.Remove(s.path(n))
			continue
		}
		s.segs = append(s.segs, n)
		s.sizes[n] = size
		s.bytes += size
		s.count += int64(len(msgs))
	}
	sort.Slice(s.segs, func(i, j int) bool { return s.segs[i] < s.segs[j] })
	return s, nil
}

func (s *spool) path(n int64) string { return filepath.Join(s.dir, fmt.Sprintf("seg-%020d.spool", n)) }

// appendRecord appends m as a format-2 record: u32 body length, u32 CRC-32C of the body, body
// (uvarint-prefixed subject, id and data).
func appendRecord(b []byte, m *Msg) []byte {
	var hdr [8]byte
	start := len(b)
	b = append(b, hdr[:]...)
	b = binary.AppendUvarint(b, uint64(len(m.Subject)))
	b = append(b, m.Subject...)
	b = binary.AppendUvarint(b, uint64(len(m.ID)))
	b = append(b, m.ID...)
	b = binary.AppendUvarint(b, uint64(len(m.Data)))
	b = append(b, m.Data...)
	body := b[start+8:]
	binary.LittleEndian.PutUint32(b[start:], uint32(len(body)))
	binary.LittleEndian.PutUint32(b[start+4:], crc32.Checksum(body, crcTable))
	return b
}

// parseFields splits a record body into its uvarint-prefixed fields.
func parseFields(rec []byte, out [][]byte) error {
	for i := range out {
		n, k := binary.Uvarint(rec)
		if k <= 0 || uint64(len(rec)-k) < n {
			return errors.New("corrupt record")
		}
		out[i] = rec[k : k+int(n)]
		rec = rec[k+int(n):]
	}
	return nil
}

func parseRecord(rec []byte) (Msg, error) {
	var out [3][]byte
	if err := parseFields(rec, out[:]); err != nil {
		return Msg{}, err
	}
	return Msg{Subject: string(out[0]), ID: string(out[1]), Data: append([]byte(nil), out[2]...)}, nil
}

// decodeSegment returns every whole record of a segment file's contents, in any format this agent
// knows; a torn or corrupt tail (crash mid-write) ends it.
func decodeSegment(data []byte) ([]Msg, error) {
	format := 1
	if bytes.HasPrefix(data, []byte(spoolMagic)) && len(data) >= spoolHdrSize {
		format = int(data[len(spoolMagic)])
		data = data[spoolHdrSize:]
	}
	var msgs []Msg
	switch format {
	case 1:
		for len(data) >= 4 {
			l := int(binary.LittleEndian.Uint32(data))
			if len(data)-4 < l {
				break
			}
			m, err := parseRecord(data[4 : 4+l])
			if err != nil {
				break
			}
			msgs = append(msgs, m)
			data = data[4+l:]
		}
	case 2:
		for len(data) >= 8 {
			l := int(binary.LittleEndian.Uint32(data))
			if len(data)-8 < l {
				break
			}
			body := data[8 : 8+l]
			if crc32.Checksum(body, crcTable) != binary.LittleEndian.Uint32(data[4:]) {
				break
			}
			m, err := parseRecord(body)
			if err != nil {
				break
			}
			msgs = append(msgs, m)
			data = data[8+l:]
		}
	default:
		return nil, fmt.Errorf("%w: format %d, this agent reads up to %d", errSpoolVersion, format, spoolFormat)
	}
	return msgs, nil
}

// readSeg reads every whole record of segment n.
func (s *spool) readSeg(n int64) ([]Msg, int64, error) {
	data, err := os.ReadFile(s.path(n))
	if err != nil {
		return nil, 0, fmt.Errorf("spool: %w", err)
	}
	msgs, err := decodeSegment(data)
	if err != nil {
		return nil, 0, fmt.Errorf("spool %s: %w", s.path(n), err)
	}
	return msgs, int64(len(data)), nil
}

func (s *spool) empty() bool { return s.count == 0 }

// push appends m; it reports false (and writes nothing) when the spool is full.
func (s *spool) push(m *Msg) (bool, error) {
	rec := appendRecord(nil, m)
	if s.bytes+int64(len(rec)) > s.max {
		return false, nil
	}
	if s.w == nil || s.sizes[s.segs[len(s.segs)-1]] >= s.segMax {
		if err := s.closeWriter(); err != nil {
			return false, err
		}
		n := segFirst
		if len(s.segs) > 0 {
			n = s.segs[len(s.segs)-1] + 1
		}
		for _, f := range s.foreign {
			if f >= n {
				n = f + 1
			}
		}
		f, err := os.OpenFile(s.path(n), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
		if err != nil {
			return false, fmt.Errorf("spool: %w", err)
		}
		s.w, s.wbuf = f, bufio.NewWriterSize(f, 64<<10)
		s.segs = append(s.segs, n)
		if _, err := s.wbuf.Write(spoolHeader()); err != nil {
			return false, fmt.Errorf("spool: %w", err)
		}
		s.sizes[n] += int64(spoolHdrSize)
		s.bytes += int64(spoolHdrSize)
	}
	if _, err := s.wbuf.Write(rec); err != nil {
		return false, fmt.Errorf("spool: %w", err)
	}
	n := s.segs[len(s.segs)-1]
	s.sizes[n] += int64(len(rec))
	s.bytes += int64(len(rec))
	s.unsynced += int64(len(rec))
	s.count++
	return true, nil
}

// sync writes what push buffered to the segment file and fsyncs it, so a crash or kill -9 after
// it loses nothing pushed before it.
func (s *spool) sync() error {
	if s.w == nil || s.unsynced == 0 {
		return nil
	}
	if err := s.wbuf.Flush(); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	if err := s.w.Sync(); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	s.unsynced = 0
	return nil
}

func (s *spool) closeWriter() error {
	if s.w == nil {
		return nil
	}
	err := s.wbuf.Flush()
	if serr := s.w.Sync(); err == nil {
		err = serr
	}
	if cerr := s.w.Close(); err == nil {
		err = cerr
	}
	s.w, s.wbuf = nil, nil
	s.unsynced = 0
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	return nil
}

// peek returns up to n of the oldest messages without removing them.
func (s *spool) peek(n int) ([]Msg, error) {
	if s.count == 0 {
		return nil, nil
	}
	if s.rseg < 0 {
		first := s.segs[0]
		if s.w != nil && first == s.segs[len(s.segs)-1] {
			if err := s.closeWriter(); err != nil {
				return nil, err
			}
		}
		msgs, _, err := s.readSeg(first)
		if err != nil {
			return nil, err
		}
		s.rseg, s.r, s.rpos = first, msgs, 0
		if len(msgs) == 0 { // unreadable segment: nothing in it can be replayed
			s.dropSeg()
			return s.peek(n)
		}
	}
	end := s.rpos + n
	if end > len(s.r) {
		end = len(s.r)
	}
	return s.r[s.rpos:end], nil
}

// pop removes the k oldest messages, which the last peek returned.
func (s *spool) pop(k int) {
	s.rpos += k
	s.count -= int64(k)
	if s.rpos >= len(s.r) {
		s.dropSeg()
	}
}

func (s *spool) dropSeg() {
	n := s.segs[0]
	_ = os.Remove(s.path(n))
	s.bytes -= s.sizes[n]
	delete(s.sizes, n)
	s.segs = s.segs[1:]
	s.rseg, s.r, s.rpos = -1, nil, 0
}

// close persists the spool. Messages still in memory (older than anything spooled) are written
// as a new segment in front, and a partly delivered segment is rewritten without its delivered part.
func (s *spool) close(front []Msg) (written int, err error) {
	defer func() {
		if s.lock != nil {
			s.lock.Close() // releases the flock
			s.lock = nil
		}
	}()
	if err := s.closeWriter(); err != nil {
		return 0, err
	}
	if s.rseg >= 0 && s.rpos > 0 {
		if err := s.writeSeg(s.rseg, s.r[s.rpos:]); err != nil {
			return 0, err
		}
	}
	s.rseg, s.r, s.rpos = -1, nil, 0
	return s.pushFront(front)
}

// pushFront writes msgs (older than everything spooled) as a new segment in front of the others
// and returns how many fitted under the size limit. Nothing may be loaded for reading (rseg < 0).
func (s *spool) pushFront(front []Msg) (int, error) {
	if len(front) == 0 {
		return 0, nil
	}
	n := segFirst
	if len(s.segs) > 0 {
		n = s.segs[0] - 1
	}
	var keep []Msg
	size := int64(spoolHdrSize)
	for i := range front {
		sz := int64(len(appendRecord(nil, &front[i])))
		if s.bytes+size+sz > s.max {
			break
		}
		size += sz
		keep = append(keep, front[i])
	}
	if len(keep) == 0 {
		return 0, nil
	}
	if err := s.writeSeg(n, keep); err != nil {
		return 0, err
	}
	s.segs = append([]int64{n}, s.segs...)
	s.sizes[n] = size
	s.bytes += size
	s.count += int64(len(keep))
	return len(keep), nil
}

func (s *spool) writeSeg(n int64, msgs []Msg) error {
	b := spoolHeader()
	for i := range msgs {
		b = appendRecord(b, &msgs[i])
	}
	tmp := s.path(n) + ".tmp"
	if err := writeFileSync(tmp, b); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	if err := os.Rename(tmp, s.path(n)); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	if old, ok := s.sizes[n]; ok {
		s.bytes += int64(len(b)) - old
		s.sizes[n] = int64(len(b))
	}
	return nil
}

func writeFileSync(name string, b []byte) error {
	f, err := os.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
