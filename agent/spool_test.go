package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSpoolOrderTornTailAndLock(t *testing.T) {
	dir := t.TempDir()
	s, err := openSpool(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	s.segMax = 200 // several segments
	for i := 0; i < 20; i++ {
		if ok, err := s.push(&Msg{Subject: "pm.v1.ev.x", ID: fmt.Sprint("id", i), Data: []byte{byte(i)}}); !ok || err != nil {
			t.Fatalf("push %d: %v %v", i, ok, err)
		}
	}
	got, _ := s.peek(3)
	s.pop(len(got))
	// Older messages still in memory at shutdown go in front.
	if _, err := s.close([]Msg{{Subject: "a", ID: "front", Data: []byte("f")}}); err != nil {
		t.Fatal(err)
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.spool"))
	f, err := os.OpenFile(segs[len(segs)-1], os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte{200, 0, 0, 0, 1, 2}) // a record torn by a crash
	f.Close()

	s, err = openSpool(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := openSpool(dir, 1<<20); !errors.Is(err, errSpoolBusy) {
		t.Errorf("second open: %v, want errSpoolBusy", err)
	}
	var ids []string
	for {
		msgs, err := s.peek(4)
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) == 0 {
			break
		}
		for _, m := range msgs {
			ids = append(ids, m.ID)
		}
		s.pop(len(msgs))
	}
	want := []string{"front"}
	for i := 3; i < 20; i++ {
		want = append(want, fmt.Sprint("id", i))
	}
	if strings.Join(ids, ",") != strings.Join(want, ",") {
		t.Errorf("replayed %v, want %v", ids, want)
	}
	if s.bytes != 0 || s.count != 0 {
		t.Errorf("after replay bytes %d count %d, want 0", s.bytes, s.count)
	}
}

func TestLineReader(t *testing.T) {
	in := "a\n" + strings.Repeat("x", 300) + "\nb\nlast"
	lr := newLineReader(strings.NewReader(in), 100)
	var got []string
	for {
		l, err := lr.next()
		if err != nil {
			got = append(got, "err:"+strings.SplitN(err.Error(), ":", 2)[0])
			if errors.Is(err, errLineTooLong) {
				continue
			}
			break
		}
		got = append(got, string(l))
	}
	want := "a,err:line too long,b,err:bad line"
	if strings.Join(got, ",") != want {
		t.Errorf("got %v, want %s", got, want)
	}
}
