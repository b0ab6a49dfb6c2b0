package hub

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

// TestRejectedEventsDeadLettered: with the contract's decoder, an event of a message that the
// contract refuses (a string in a float column) is counted by reason and dead-lettered with its
// reason and seq while the message's good events are written; beyond the dead-letter cap such
// messages are only counted.
func TestRejectedEventsDeadLettered(t *testing.T) {
	data := t.TempDir()
	s, _ := runHub(t, Config{DataDir: data, SessionIdle: time.Hour, DeadLetterMaxCount: 1})

	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	subj := proto.EventSubject("S1", "host.a", "w0", proto.KindKVCache)
	for i, first := range []uint64{1, 4} {
		eb := kvEventBatch("S1", "host.a", 7, first, 3)
		eb.Events[1].Cols["usage"] = &pmpb.Value{V: &pmpb.Value_S{S: "lots"}}
		if _, err := js.Publish(context.Background(), subj, mustMarshal(t, eb)); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	waitFor(t, "both messages handled", func() bool { return s.Counters().Messages >= 2 })
	c := s.Counters()
	if c.Bad[proto.ReasonBadValue] != 2 || c.DeadLettered != 1 || c.DeadLetterSkipped != 1 {
		t.Errorf("bad_value %d, dead-lettered %d, skipped %d; want 2, 1 (the cap), 1", c.Bad[proto.ReasonBadValue], c.DeadLettered, c.DeadLetterSkipped)
	}
	if c.Rows != 4 {
		t.Errorf("%d rows written, want the 4 good events", c.Rows)
	}
	notes, _ := filepath.Glob(filepath.Join(data, "deadletter", "*.json"))
	if len(notes) != 1 {
		t.Fatalf("dead-letter notes %v, want 1", notes)
	}
	b, err := os.ReadFile(notes[0])
	if err != nil {
		t.Fatal(err)
	}
	var note struct {
		Subject  string         `json:"subject"`
		Reason   string         `json:"reason"`
		Rejected []rejectedNote `json:"rejected"`
	}
	if err := json.Unmarshal(b, &note); err != nil {
		t.Fatal(err)
	}
	if note.Subject != subj || note.Reason != proto.ReasonBadValue || len(note.Rejected) != 1 ||
		note.Rejected[0].Seq != 2 || note.Rejected[0].Reason != proto.ReasonBadValue || !strings.Contains(note.Rejected[0].Column+note.Rejected[0].Error, "usage") {
		t.Errorf("note %s", b)
	}
	if _, err := os.Stat(strings.TrimSuffix(notes[0], ".json") + ".bin"); err != nil {
		t.Errorf("no message body next to the note: %v", err)
	}
}
