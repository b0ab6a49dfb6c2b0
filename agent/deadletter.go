package agent

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"sync"
)

// Dead-letter defaults: what the agent keeps of messages the stream refuses permanently.
const (
	DefaultDeadLetterMaxBytes = 64 << 20
	DefaultDeadLetterMaxCount = 10000
	deadLetterFile            = "dead-letters.spool"
)

// deadLetters keeps messages that NATS or the stream refused permanently (a subject or payload over
// the server's limits, a stream rule they break), so they are never retried and never block the
// messages behind them. They are appended to one file in the spool folder in the spool's format
// (header spoolMagic+format, records of u32 length, u32 CRC-32C, then the uvarint-prefixed subject,
// id, data and reason) until maxBytes or maxCount is reached; after that they are only counted.
// Without a spool folder they are counted and logged only.
type deadLetters struct {
	mu       sync.Mutex
	path     string // empty: count only
	maxBytes int64
	maxCount int64

	count, kept, bytes int64
	reasons            map[string]bool // reasons already logged
	err                error
}

func newDeadLetters(dir string, maxBytes, maxCount int64) *deadLetters {
	d := &deadLetters{maxBytes: maxBytes, maxCount: maxCount, reasons: map[string]bool{}}
	if dir == "" {
		return d
	}
	d.path = filepath.Join(dir, deadLetterFile)
	if info, err := os.Stat(d.path); err == nil {
		d.bytes = info.Size()
		if data, err := os.ReadFile(d.path); err == nil {
			if msgs, err := decodeSegment(data); err == nil {
				d.kept = int64(len(msgs))
			}
		}
	}
	return d
}

// add records m as refused for reason; it reports whether this reason is new (to be logged once).
func (d *deadLetters) add(m *Msg, reason string) (first bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.count++
	first = !d.reasons[reason]
	d.reasons[reason] = true
	if d.path == "" || d.err != nil {
		return first
	}
	rec := appendDeadRecord(nil, m, reason)
	hdr := int64(0)
	if d.bytes == 0 {
		hdr = int64(spoolHdrSize)
	}
	if d.kept >= d.maxCount || d.bytes+hdr+int64(len(rec)) > d.maxBytes {
		return first
	}
	f, err := os.OpenFile(d.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		d.err = fmt.Errorf("dead letters: %w", err)
		return first
	}
	defer f.Close()
	if hdr > 0 {
		rec = append(spoolHeader(), rec...)
	}
	if _, err := f.Write(rec); err != nil {
		d.err = fmt.Errorf("dead letters: %w", err)
		return first
	}
	if err := f.Sync(); err != nil {
		d.err = fmt.Errorf("dead letters: %w", err)
	}
	d.kept++
	d.bytes += int64(len(rec))
	return first
}

// appendDeadRecord is appendRecord with the reason as a fourth field; readers of plain spool
// records ignore it.
func appendDeadRecord(b []byte, m *Msg, reason string) []byte {
	start := len(b)
	b = appendRecord(b, m)
	b = binary.AppendUvarint(b, uint64(len(reason)))
	b = append(b, reason...)
	body := b[start+8:]
	binary.LittleEndian.PutUint32(b[start:], uint32(len(body)))
	binary.LittleEndian.PutUint32(b[start+4:], crc32.Checksum(body, crcTable))
	return b
}

// DeadLetterStatus says what the agent set aside.
type DeadLetterStatus struct {
	File     string `json:"file,omitempty"`
	Messages int64  `json:"messages"` // refused since the agent started
	Kept     int64  `json:"kept"`     // in the file (also from earlier runs)
	Bytes    int64  `json:"bytes"`
	Error    string `json:"error,omitempty"`
}

func (d *deadLetters) status() DeadLetterStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := DeadLetterStatus{File: d.path, Messages: d.count, Kept: d.kept, Bytes: d.bytes}
	if d.err != nil {
		st.Error = d.err.Error()
	}
	return st
}
