package hub

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nats-io/nats.go/jetstream"
)

// deadLetter keeps a message of an unknown newer version in <data>/deadletter/ with a note, so a
// newer hub can read it later.
func (s *Server) deadLetter(m jetstream.Msg, cause error) error {
	dir := filepath.Join(s.cfg.DataDir, "deadletter")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("dead letter: %w", err)
	}
	var seq uint64
	if md, err := m.Metadata(); err == nil {
		seq = md.Sequence.Stream
	}
	base := filepath.Join(dir, fmt.Sprintf("%d-%d", seq, s.cfg.Now().UnixNano()))
	if err := writeFileAtomic(base+".bin", m.Data()); err != nil {
		return fmt.Errorf("dead letter: %w", err)
	}
	note, _ := json.MarshalIndent(map[string]any{
		"subject": m.Subject(), "headers": m.Headers(), "stream_seq": seq,
		"reason": ReasonNewerMajor, "error": cause.Error(), "received_ns": s.cfg.Now().UnixNano(),
	}, "", "  ")
	if err := writeFileAtomic(base+".json", append(note, '\n')); err != nil {
		return fmt.Errorf("dead letter: %w", err)
	}
	return nil
}
