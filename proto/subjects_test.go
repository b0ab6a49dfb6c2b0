package proto

import (
	"errors"
	"strings"
	"testing"
)

func TestEscapeInjective(t *testing.T) {
	inputs := []string{
		"", "_", "a", "a.b", "a_2eb", "a_b", "a-b", "a b", "a*b", "a>b", "host.dc1.example",
		"host_dc1_example", "20261126_205500_a1b2c3", "20261126.205500.a1b2c3", "ü", "\x00", "_5f", "a__b", "a_2",
	}
	seen := map[string]string{}
	for _, in := range inputs {
		tok := Escape(in)
		if prev, dup := seen[tok]; dup {
			t.Errorf("%q and %q both escape to %q", prev, in, tok)
		}
		seen[tok] = in
		if tok == "" || strings.ContainsAny(tok, ".*> \t") {
			t.Errorf("Escape(%q) = %q is not one subject token", in, tok)
		}
		back, err := Unescape(tok)
		if err != nil || back != in {
			t.Errorf("Unescape(Escape(%q)) = %q, %v", in, back, err)
		}
	}
	if Escape("node.a") != "node_2ea" || Escape("a_b") != "a_5fb" {
		t.Errorf("escapes: %s %s", Escape("node.a"), Escape("a_b"))
	}
	for _, bad := range []string{"", "a.b", "a_2", "a_zz", "a_2E", "a_41", "a*", "a_"} {
		if s, err := Unescape(bad); err == nil || !errors.Is(err, ErrSubject) {
			t.Errorf("Unescape(%q) = %q, %v; want ErrSubject", bad, s, err)
		}
	}
}

func TestSubjectsRoundTrip(t *testing.T) {
	// Sessions that differ only in escaped characters, hosts with dots.
	cases := []SubjectFields{
		{"20261126_205500_a1b2c3", "gpu-node-7.dc1.example", "w12", "kv_cache"},
		{"20261126.205500.a1b2c3", "gpu-node-7_dc1_example", "w12", "kv_cache"},
		{"20261126_205500_a1b2c3", "gpu-node-7_2edc1_2eexample", "eng0", "gpu"},
		{"s", "h", ProcAgent, KindGPU},
	}
	subs := map[string]bool{}
	for _, c := range cases {
		s := EventSubject(c.Session, c.Host, c.Proc, c.Kind)
		if subs[s] {
			t.Errorf("subject %s built twice", s)
		}
		subs[s] = true
		if n := strings.Count(s, "."); n != 6 {
			t.Errorf("%s has %d dots, want 6", s, n)
		}
		got, err := ParseEventSubject(s)
		if err != nil || got != c {
			t.Errorf("ParseEventSubject(%s) = %+v, %v; want %+v", s, got, err, c)
		}
		l := LifeSubject(c.Session, c.Host, c.Proc)
		lf, err := ParseLifeSubject(l)
		if err != nil || lf != (SubjectFields{Session: c.Session, Host: c.Host, Proc: c.Proc}) {
			t.Errorf("ParseLifeSubject(%s) = %+v, %v", l, lf, err)
		}
		if h, err := ParseHeartbeatSubject(HeartbeatSubject(c.Host)); err != nil || h != c.Host {
			t.Errorf("heartbeat host %q, %v", h, err)
		}
		if h, err := ParseControlSubject(ControlSubject(c.Host)); err != nil || h != c.Host {
			t.Errorf("control host %q, %v", h, err)
		}
	}
	for _, bad := range []string{"pm.v1.ev.a.b.c", "pm.v1.ev.a.b.c.d.e", "pm.v2.ev.a.b.c.d", "pm.v1.ev.a.b_2.c.d", "pm.v1.life.a.b.c.d", "pm.v1.ev.a..c.d"} {
		if _, err := ParseEventSubject(bad); err == nil {
			if _, err2 := ParseLifeSubject(bad); err2 == nil {
				t.Errorf("%s parsed as an event and a lifecycle subject", bad)
			}
		}
	}
	if _, err := ParseEventSubject("pm.v1.ev.a.b.c"); !errors.Is(err, ErrSubject) {
		t.Errorf("short subject: %v", err)
	}
}

// matches implements NATS's token wildcards (* one token, > the rest) for checking filters.
func matches(filter, subj string) bool {
	f, s := strings.Split(filter, "."), strings.Split(subj, ".")
	for i, ft := range f {
		if ft == ">" {
			return len(s) > i
		}
		if i >= len(s) || ft != "*" && ft != s[i] {
			return false
		}
	}
	return len(f) == len(s)
}

func TestFilters(t *testing.T) {
	a := EventSubject("S1", "h.a", "w0", "kv_cache")
	b := EventSubject("S1", "h_2ea", "w0", "kv_cache")
	c := EventSubject("S2", "h.a", "eng0", "batch_util")
	cases := []struct {
		filter string
		want   []bool
	}{
		{EventFilter("", "", "", ""), []bool{true, true, true}},
		{EventFilter("S1", "", "", ""), []bool{true, true, false}},
		{EventFilter("", "h.a", "", ""), []bool{true, false, true}},
		{EventFilter("", "", "eng0", ""), []bool{false, false, true}},
		{EventFilter("S1", "h.a", "w0", "kv_cache"), []bool{true, false, false}},
		{EventFilter("", "", "", "batch_util"), []bool{false, false, true}},
	}
	for _, c2 := range cases {
		for i, s := range []string{a, b, c} {
			if got := matches(c2.filter, s); got != c2.want[i] {
				t.Errorf("filter %s on %s = %v, want %v", c2.filter, s, got, c2.want[i])
			}
		}
	}
	for _, s := range []string{a, c} {
		if !matches(StreamSubjects()[0], s) {
			t.Errorf("stream subjects miss %s", s)
		}
	}
	if !matches(LifeFilter("S1", "", ""), LifeSubject("S1", "x.y", "api0")) || matches(LifeFilter("S1", "", ""), LifeSubject("S2", "x.y", "api0")) {
		t.Error("LifeFilter")
	}
	if !matches(HeartbeatFilter(""), HeartbeatSubject("a.b")) || !matches(StreamSubjects()[2], HeartbeatSubject("a.b")) {
		t.Error("heartbeat filter")
	}
	if !matches(ControlFilter("a.b"), ControlSubject("a.b")) || matches(ControlFilter("a.b"), ControlSubject("a_b")) {
		t.Error("control filter")
	}
	for _, s := range StreamSubjects() {
		if matches(s, ControlSubject("h")) || matches(s, ClockSubject) {
			t.Errorf("stream subject %s keeps core-NATS control or clock traffic", s)
		}
	}
}

func TestProcToken(t *testing.T) {
	cases := []struct {
		role          string
		dp, rank, pid int
		want          string
	}{
		{RoleAPIServer, -1, 2, 10, "api2"},
		{RoleLauncher, -1, 0, 16, "launch0"},
		{RoleEngineCore, 3, -1, 11, "eng3"},
		{RoleWorker, 0, 17, 12, "w17"},
		{RoleAgent, -1, -1, 13, "agent"},
		{RoleWorker, 0, -1, 14, "p14"},
		{"", -1, -1, 15, "p15"},
	}
	for _, c := range cases {
		got := ProcToken(c.role, c.dp, c.rank, c.pid)
		if got != c.want {
			t.Errorf("ProcToken(%s,%d,%d,%d) = %s, want %s", c.role, c.dp, c.rank, c.pid, got, c.want)
		}
		role, n, err := ParseProcToken(got)
		wantRole, wantN := c.role, c.rank
		switch {
		case got[0] == 'p':
			wantRole, wantN = "", c.pid
		case c.role == RoleEngineCore:
			wantN = c.dp
		case c.role == RoleAgent:
			wantN = -1
		}
		if err != nil || role != wantRole || n != wantN {
			t.Errorf("ParseProcToken(%s) = %s %d %v", got, role, n, err)
		}
	}
	for _, bad := range []string{"x1", "w", "w-1", "w01", "eng", "apix"} {
		if _, _, err := ParseProcToken(bad); err == nil {
			t.Errorf("ParseProcToken(%s) accepted", bad)
		}
	}
}

func TestMsgIDs(t *testing.T) {
	if got := MsgID("S", "h.a", 42, "", "kv_cache", 5, 9); got != "S/h.a/42/kv_cache/5-9" {
		t.Errorf("MsgID = %s", got)
	}
	if LifeMsgID("S", "h", 1, "", "status", 1) == LifeMsgID("S", "h", 1, "", "status", 2) {
		t.Error("life ids of successive records collide")
	}
}

// TestFixedTokensAsWritten: kinds and process tokens appear in subjects as written, so a plain
// wildcard on the kind selects it; only session and host are escaped.
func TestFixedTokensAsWritten(t *testing.T) {
	for _, k := range Kinds() {
		s := EventSubject("20261126_205500_a1b2c3", "gpu.node_1", "w3", k)
		want := "pm.v1.ev.20261126_5f205500_5fa1b2c3.gpu_2enode_5f1.w3." + k
		if s != want {
			t.Errorf("kind %s: subject %s, want %s", k, s, want)
		}
		if !matches("pm.v1.ev.*.*.*."+k, s) {
			t.Errorf("pm.v1.ev.*.*.*.%s does not match %s", k, s)
		}
	}
	if s := LifeSubject("s", "h", "eng0"); s != "pm.v1.life.s.h.eng0" {
		t.Errorf("life subject %s", s)
	}
	// Not from the vocabulary: escaped so the subject keeps its shape, then unknown to readers.
	if s := EventSubject("s", "h", "w0", "a.b"); strings.Count(s, ".") != 6 {
		t.Errorf("odd kind broke the subject: %s", s)
	} else if f, err := ParseEventSubject(s); err == nil && (f.Kind == "a.b" || IsKind(f.Kind)) {
		t.Errorf("odd kind parsed as %q", f.Kind)
	}
	for _, bad := range []string{"pm.v1.ev.s.h.x1.kv_cache", "pm.v1.ev.s.h.w01.kv_cache", "pm.v1.ev.s.h.w0.KV", "pm.v1.ev.s.h.w0.9a"} {
		if _, err := ParseEventSubject(bad); !errors.Is(err, ErrSubject) {
			t.Errorf("%s parsed: %v", bad, err)
		}
	}
}

// TestPreviousSpellingReads: schema 1.0 agents escaped kind tokens too (kv_5fcache); a hub reads
// those subjects as the same kind for one minor version, so a rolling upgrade loses nothing.
func TestPreviousSpellingReads(t *testing.T) {
	for _, k := range Kinds() {
		old := "pm.v1.ev.20261126_5f205500_5fa1b2c3.node_2ea.w3." + Escape(k)
		f, err := ParseEventSubject(old)
		if err != nil || f.Kind != k || f.Session != "20261126_205500_a1b2c3" || f.Host != "node.a" || f.Proc != "w3" {
			t.Errorf("previous spelling %s: %+v, %v", old, f, err)
		}
	}
	// An escaped token that is not a known kind is read as written (and refused as unknown later).
	if f, err := ParseEventSubject("pm.v1.ev.s.h.w0.new_5fkind"); err != nil || f.Kind != "new_5fkind" {
		t.Errorf("unknown escaped kind: %+v, %v", f, err)
	}
}
