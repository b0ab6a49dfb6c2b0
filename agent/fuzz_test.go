package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"

	pmproto "github.com/profilemate/profilemate/proto"
)

// FuzzSocketLines drives the agent's production socket path — the line reader with its limits,
// the line decoder and the handler of every line type — with arbitrary bytes from one connection.
// Every line is accepted or rejected with ErrBadLine (or a line-limit error); nothing panics, and
// the agent's status stays readable. Seeds are the hostile cases of the boundary tests.
func FuzzSocketLines(f *testing.F) {
	seeds := []string{
		`{"t":"hello","v":1,"session":"s","pid":901,"ppid":1,"role":"worker","dp":0,"pp":0,"tp":0,"ep":-1,"rank":0}` + "\n" +
			`{"t":"batch","v":1,"pid":901,"events":[{"kind":"kv_cache","table":"kv_cache_usage","seq":1,"step":1,"ts_ns":1,"cols":{"usage":0.5}}]}` + "\n",
		`{"t":"batch","v":1,"pid":901,"events":[{"kind":"kv_cache","table":"kv_cache_usage","seq":18446744073709551615,"step":1,"ts_ns":1,"cols":{"usage":1}}]}` + "\n",
		`{"t":"bye","v":1,"pid":901,"last_seq":18446744073709551615,"dropped":18446744073709551615}` + "\n",
		`{"t":"hello","v":1,"session":"` + strings.Repeat("a", 4100) + `","pid":7}` + "\n",
		`{"t":"hello","v":1,"pid":-1}` + "\n" + `{"t":"hello","v":1,"pid":0}` + "\n",
		`{"t":"batch","v":2,"pid":5,"events":[]}` + "\n",
		`{"t":"batch","v":1,"pid":5,"events":[{"kind":"kv_cache","table":"kv_cache_usage","seq":1,"cols":3}]}` + "\n",
		`{"t":"batch","v":1,"pid":5,"events":[{"kind":"kv_cache","table":"kv_cache_usage","seq":1,"cols":{"usage":"high"}}]}` + "\n",
		`{"t":"status","v":1,"pid":901,"targets":[{"target":"x","status":"patched"}]}` + "\n",
		`{"t":"admin","v":1,"op":"status"}` + "\n" + `{"t":"admin","v":1,"op":"nope"}` + "\n",
		"garbage\n\n\xff\xfe\n",
		`{"t":"batch","v":1` + "\n",
		`{"t":"batch","v":1,"pid":5,"events":[{"kind":"kv_cache"`, // no newline: truncated
		strings.Repeat("x", 70<<10) + "\n",                        // over the fuzz reader's line limit
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		a, err := New(Config{Host: "fuzz", Logger: testLogger(t), MaxLine: 64 << 10, MaxBuffered: 128 << 10})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		if err := a.Start(ctx); err != nil {
			t.Fatal(err)
		}
		ours, theirs := net.Pipe()
		defer ours.Close()
		go io.Copy(io.Discard, theirs)
		c := &conn{nc: ours, pids: map[int]*proc{}}
		lr := newLineReader(bytes.NewReader(in), a.cfg.MaxLine)
		lr.budget = a.budget
		for {
			line, err := lr.next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				if !errors.Is(err, pmproto.ErrBadLine) && !errors.Is(err, errLineTooLong) && !errors.Is(err, errLineOverBudget) {
					t.Fatalf("reader error %v", err)
				}
				if errors.Is(err, pmproto.ErrBadLine) {
					break // a truncated last line ends the input
				}
				continue
			}
			if len(line) == 0 {
				continue
			}
			if err := a.handle(c, line); err != nil && !errors.Is(err, pmproto.ErrBadLine) {
				t.Fatalf("line %q: error without ErrBadLine: %v", line, err)
			}
		}
		lr.close()
		if a.budget.used.Load() != 0 {
			t.Fatalf("budget still holds %d bytes", a.budget.used.Load())
		}
		a.connGone(c)
		_ = a.Status()
		theirs.Close()
		if _, err := a.Shutdown(t.Context()); err != nil {
			t.Fatal(err)
		}
	})
}
