package hub

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

// TestPreviousVersionMessages feeds a hub on a real embedded nats-server the messages a schema 1.0
// agent published (testdata/golden/v1.0_messages.jsonl, kept as that agent wrote them: every
// subject token escaped, kv_5fcache) and checks each kind's rows land in the session's CSVs: an
// agent one version behind the hub loses nothing during a rolling upgrade.
func TestPreviousVersionMessages(t *testing.T) {
	data := t.TempDir()
	s, _ := runHub(t, Config{DataDir: data, SessionIdle: time.Hour})

	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join("testdata", "golden", "v1.0_messages.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	kinds := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m struct {
			Subject string `json:"subject"`
			MsgID   string `json:"msg_id"`
			Data    string `json:"data"`
		}
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatal(err)
		}
		body, err := base64.StdEncoding.DecodeString(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		var opts []jetstream.PublishOpt
		if m.MsgID != "" {
			opts = append(opts, jetstream.WithMsgID(m.MsgID))
			sf, err := proto.ParseEventSubject(m.Subject)
			if err != nil {
				t.Fatalf("previous spelling %s: %v", m.Subject, err)
			}
			kinds[sf.Kind] = true
		}
		if _, err := js.Publish(context.Background(), m.Subject, body, opts...); err != nil {
			t.Fatalf("publish %s: %v", m.Subject, err)
		}
	}
	if len(kinds) != len(proto.Kinds()) {
		t.Fatalf("golden messages cover kinds %v, want all of %v", kinds, proto.Kinds())
	}
	dir := SessionDir(data, "20261126_205500_a1b2c3")
	for _, tab := range proto.TableNames() {
		if !kinds[tableKind(t, tab)] {
			continue
		}
		path := filepath.Join(dir, tab+".csv")
		waitFor(t, tab+" rows", func() bool {
			b, err := os.ReadFile(path)
			return err == nil && bytes.Count(b, []byte("\n")) > 1 // header and a row
		})
	}
	if c := s.Counters(); len(c.Bad) != 0 || c.DeadLettered != 0 {
		t.Errorf("previous version's messages refused: %+v", c)
	}
}

func tableKind(t *testing.T, table string) string {
	s, ok := proto.Table(table)
	if !ok {
		t.Fatalf("table %s", table)
	}
	return s.Kind
}

// TestBadEventCostsOnlyItself: on a real hub, a string in a float column refuses that event alone
// (counted under bad_value; the batch's other rows are written), and an empty payload is a decode
// error, not a message of "newer major 0.0".
func TestBadEventCostsOnlyItself(t *testing.T) {
	data := t.TempDir()
	s, _ := runHub(t, Config{DataDir: data, SessionIdle: time.Hour})
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	eb := kvEventBatch("S1", "host.a", 7, 1, 3)
	eb.Events[0].Cols["usage"] = &pmpb.Value{V: &pmpb.Value_D{D: 0.25}}
	eb.Events[1].Cols["usage"] = &pmpb.Value{V: &pmpb.Value_S{S: "lots"}}
	subj := proto.EventSubject("S1", "host.a", "w0", proto.KindKVCache)
	if _, err := js.Publish(context.Background(), subj, mustMarshal(t, eb)); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(context.Background(), subj, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both messages handled", func() bool { return s.Counters().Messages >= 2 })
	c := s.Counters()
	if c.Bad[proto.ReasonBadValue] != 1 || c.Bad[ReasonDecode] != 1 || c.Bad[ReasonNewerMajor] != 0 || c.DeadLettered != 1 {
		t.Errorf("counters %+v: want one bad_value event (its message dead-lettered) and one decode error", c)
	}
	recs := readCSV(t, filepath.Join(SessionDir(data, "S1"), "kv_cache_usage.csv"))
	if len(recs) != 3 {
		t.Fatalf("%d records, want header + the 2 good rows", len(recs))
	}
	col := -1
	for i, h := range recs[0] {
		if h == "usage" {
			col = i
		}
	}
	if recs[1][8] != "1" || recs[1][col] != "0.25" || recs[2][8] != "3" {
		t.Errorf("rows %v", recs[1:])
	}
}
