package proto

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Every NATS subject of ProfileMate is built here (docs/ARCHITECTURE.md "NATS").
const (
	SubjectRoot     = "pm.v1"
	EventPrefix     = SubjectRoot + ".ev"    // pm.v1.ev.<session>.<host>.<proc>.<kind>: EventBatch
	LifePrefix      = SubjectRoot + ".life"  // pm.v1.life.<session>.<host>.<proc>: Lifecycle
	HeartbeatPrefix = SubjectRoot + ".hb"    // pm.v1.hb.<host>: Heartbeat
	ControlPrefix   = SubjectRoot + ".ctl"   // pm.v1.ctl.<host>: Control (core NATS)
	ClockSubject    = SubjectRoot + ".clock" // request/reply ClockRequest → ClockReply (core NATS)
	// DerivedPrefix carries plugins' derived rows (core NATS, EventBatch): pm.v1.dv.<session>.<hub
	// host>.plugin-<name>.<kind>. It is outside the stream, so the hub's ingest never reads it back.
	DerivedPrefix = SubjectRoot + ".dv"
	StreamName    = "PROFILEMATE"
)

// StreamSubjects are the subjects the PROFILEMATE stream keeps.
func StreamSubjects() []string {
	return []string{EventPrefix + ".>", LifePrefix + ".>", HeartbeatPrefix + ".>"}
}

// Roles and the process token of agent-made records.
const (
	RoleAPIServer = "api_server"
	// RoleLauncher is the process `vllm serve --headless` runs on a follower node: it starts the
	// node's EngineCores (multi-node DP) or workers (multi-node MP) and serves no API.
	RoleLauncher   = "launcher"
	RoleEngineCore = "engine_core"
	RoleWorker     = "worker"
	RoleAgent      = "agent"
	RolePlugin     = "plugin" // derived rows of a hub plugin
	ProcAgent      = "agent"
)

// PluginProcToken is a plugin's process token in subjects and metadata: plugin-<name>.
func PluginProcToken(name string) string { return "plugin-" + name }

// ErrSubject marks a subject or token that does not parse.
var ErrSubject = errors.New("bad subject")

// Subject tokens: session and host are free-form and escaped (Escape); a process token and a kind
// come from fixed vocabularies (ProcToken, KindName) and appear as written, so
// pm.v1.ev.*.*.*.kv_cache selects one kind.

// Escape makes a free-form name (session, host) one subject token, injectively: every byte outside [A-Za-z0-9-], '_' included,
// becomes _xx (two lowercase hex digits). "a.b" → "a_2eb", "a_2eb" → "a_5f2eb". The empty string
// becomes "_" so a token is never empty.
func Escape(s string) string {
	if s == "" {
		return "_"
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if plain(c) {
			b.WriteByte(c)
			continue
		}
		const hex = "0123456789abcdef"
		b.WriteByte('_')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

func plain(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-'
}

// Unescape reverses Escape; it rejects anything Escape cannot have produced.
func Unescape(tok string) (string, error) {
	if tok == "_" {
		return "", nil
	}
	if tok == "" {
		return "", fmt.Errorf("%w: empty token", ErrSubject)
	}
	var b strings.Builder
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if plain(c) {
			b.WriteByte(c)
			continue
		}
		if c != '_' || i+3 > len(tok) {
			return "", fmt.Errorf("%w: token %q: byte %q at %d", ErrSubject, tok, c, i)
		}
		v, err := strconv.ParseUint(tok[i+1:i+3], 16, 8)
		hx := tok[i+1 : i+3]
		if err != nil || strings.ToLower(hx) != hx || plain(byte(v)) {
			// Upper-case hex or an escaped plain byte would give a second spelling of one value.
			return "", fmt.Errorf("%w: token %q: bad escape %q", ErrSubject, tok, tok[i:i+3])
		}
		b.WriteByte(byte(v))
		i += 2
	}
	return b.String(), nil
}

// ProcToken names a process in subjects and folder names from its role and ranks: api<rank> for
// api_server (rank = api index), launch<index> for launcher, eng<dp> for engine_core, w<rank> for
// worker (global rank), agent for the agent; p<pid> when the role or the rank it needs is unknown.
func ProcToken(role string, dp, rank, pid int) string {
	switch {
	case role == RoleAPIServer && rank >= 0:
		return "api" + strconv.Itoa(rank)
	case role == RoleLauncher && rank >= 0:
		return "launch" + strconv.Itoa(rank)
	case role == RoleEngineCore && dp >= 0:
		return "eng" + strconv.Itoa(dp)
	case role == RoleWorker && rank >= 0:
		return "w" + strconv.Itoa(rank)
	case role == RoleAgent:
		return ProcAgent
	}
	return "p" + strconv.Itoa(pid)
}

// ParseProcToken splits a process token into the role it implies and its number (dp, rank or pid;
// -1 for agent). A p<pid> token gives role "".
func ParseProcToken(tok string) (role string, n int, err error) {
	if tok == ProcAgent {
		return RoleAgent, -1, nil
	}
	for _, p := range []struct{ prefix, role string }{{"api", RoleAPIServer}, {"launch", RoleLauncher}, {"eng", RoleEngineCore}, {"w", RoleWorker}, {"p", ""}} {
		if rest, ok := strings.CutPrefix(tok, p.prefix); ok {
			v, err := strconv.Atoi(rest)
			if err != nil || v < 0 || strconv.Itoa(v) != rest {
				return "", 0, fmt.Errorf("%w: process token %q", ErrSubject, tok)
			}
			return p.role, v, nil
		}
	}
	return "", 0, fmt.Errorf("%w: process token %q", ErrSubject, tok)
}

// EventSubject is pm.v1.ev.<session>.<host>.<proc>.<kind>: session and host escaped, proc and kind
// as written. A proc or kind that is not a plain token (never from ProcToken or a valid kind) is
// escaped so the subject keeps its shape; readers then reject it.
func EventSubject(session, host, proc, kind string) string {
	return EventPrefix + "." + Escape(session) + "." + Escape(host) + "." + fixed(proc) + "." + fixed(kind)
}

// DerivedSubject is pm.v1.dv.<session>.<host>.<proc>.<kind> for a plugin's derived rows: the
// tokens are those of EventSubject.
func DerivedSubject(session, host, proc, kind string) string {
	return DerivedPrefix + "." + Escape(session) + "." + Escape(host) + "." + fixed(proc) + "." + fixed(kind)
}

// DerivedFilter matches derived subjects; an empty field matches any token.
func DerivedFilter(session, host, proc, kind string) string {
	return DerivedPrefix + "." + wild(session) + "." + wild(host) + "." + wildFixed(proc) + "." + wildFixed(kind)
}

// LifeSubject is pm.v1.life.<session>.<host>.<proc>.
func LifeSubject(session, host, proc string) string {
	return LifePrefix + "." + Escape(session) + "." + Escape(host) + "." + fixed(proc)
}

// fixed writes a token of a fixed vocabulary: as written when it is one of [a-z0-9_]+.
func fixed(tok string) string {
	if tok == "" {
		return "_"
	}
	for i := 0; i < len(tok); i++ {
		if c := tok[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return Escape(tok)
		}
	}
	return tok
}

// HeartbeatSubject is pm.v1.hb.<host>.
func HeartbeatSubject(host string) string { return HeartbeatPrefix + "." + Escape(host) }

// ControlSubject is pm.v1.ctl.<host>.
func ControlSubject(host string) string { return ControlPrefix + "." + Escape(host) }

// wild escapes a free-form filter field; "" matches any token.
func wild(s string) string {
	if s == "" {
		return "*"
	}
	return Escape(s)
}

// wildFixed writes a fixed-vocabulary filter field; "" matches any token.
func wildFixed(s string) string {
	if s == "" {
		return "*"
	}
	return fixed(s)
}

// EventFilter is a subject filter over event subjects: an empty field matches any token.
func EventFilter(session, host, proc, kind string) string {
	return EventPrefix + "." + wild(session) + "." + wild(host) + "." + wildFixed(proc) + "." + wildFixed(kind)
}

// LifeFilter is a subject filter over lifecycle subjects: an empty field matches any token.
func LifeFilter(session, host, proc string) string {
	return LifePrefix + "." + wild(session) + "." + wild(host) + "." + wildFixed(proc)
}

// HeartbeatFilter matches one host's heartbeats, or every host's when host is "".
func HeartbeatFilter(host string) string { return HeartbeatPrefix + "." + wild(host) }

// ControlFilter matches one host's control messages, or every host's when host is "".
func ControlFilter(host string) string { return ControlPrefix + "." + wild(host) }

// SubjectFields are the fields of an event or lifecycle subject (Kind empty for lifecycle).
type SubjectFields struct {
	Session, Host, Proc, Kind string
}

// ParseEventSubject splits an event subject into its fields: session and host unescaped, proc a
// valid process token (ParseProcToken), kind following KindName. Subjects of schema 1.0, whose
// kind token was escaped too (kv_5fcache), still parse to their kind when that is a known one;
// this reading goes one minor version after 1.1. Errors wrap ErrSubject.
func ParseEventSubject(subj string) (SubjectFields, error) {
	t, err := splitTokens(subj, EventPrefix, 4)
	if err != nil {
		return SubjectFields{}, err
	}
	f, err := parseCommon(subj, t)
	if err != nil {
		return SubjectFields{}, err
	}
	f.Kind = t[3]
	if !IsKind(f.Kind) {
		if k, uerr := Unescape(f.Kind); uerr == nil && k != f.Kind && IsKind(k) {
			f.Kind = k // schema 1.0 spelling
		}
	}
	if err := ValidateKind(f.Kind); err != nil {
		return SubjectFields{}, fmt.Errorf("%w: %v (in %q)", ErrSubject, err, subj)
	}
	return f, nil
}

// ParseLifeSubject splits a lifecycle subject into its fields (session and host unescaped).
func ParseLifeSubject(subj string) (SubjectFields, error) {
	t, err := splitTokens(subj, LifePrefix, 3)
	if err != nil {
		return SubjectFields{}, err
	}
	return parseCommon(subj, t)
}

func parseCommon(subj string, t []string) (SubjectFields, error) {
	var f SubjectFields
	var err error
	if f.Session, err = Unescape(t[0]); err != nil {
		return f, fmt.Errorf("%w (in %q)", err, subj)
	}
	if f.Host, err = Unescape(t[1]); err != nil {
		return f, fmt.Errorf("%w (in %q)", err, subj)
	}
	if _, _, err := ParseProcToken(t[2]); err != nil {
		return f, fmt.Errorf("%w (in %q)", err, subj)
	}
	f.Proc = t[2]
	return f, nil
}

// ParseHeartbeatSubject returns the host of a heartbeat subject.
func ParseHeartbeatSubject(subj string) (string, error) {
	t, err := splitTokens(subj, HeartbeatPrefix, 1)
	if err != nil {
		return "", err
	}
	return unescapeIn(subj, t[0])
}

// ParseControlSubject returns the host of a control subject.
func ParseControlSubject(subj string) (string, error) {
	t, err := splitTokens(subj, ControlPrefix, 1)
	if err != nil {
		return "", err
	}
	return unescapeIn(subj, t[0])
}

func splitTokens(subj, prefix string, n int) ([]string, error) {
	rest, ok := strings.CutPrefix(subj, prefix+".")
	if !ok {
		return nil, fmt.Errorf("%w: %q does not start with %s.", ErrSubject, subj, prefix)
	}
	toks := strings.Split(rest, ".")
	if len(toks) != n {
		return nil, fmt.Errorf("%w: %q has %d tokens after %s, want %d", ErrSubject, subj, len(toks), prefix, n)
	}
	return toks, nil
}

func unescapeIn(subj, tok string) (string, error) {
	v, err := Unescape(tok)
	if err != nil {
		return "", fmt.Errorf("%w (in %q)", err, subj)
	}
	return v, nil
}

// MsgID is the Nats-Msg-Id of an event batch: <session>/<host>/<proc id>/<kind>/<first seq>-<last seq>,
// with <proc id> from ProcID. JetStream drops a second message with the same id inside the
// duplicate window, so a batch the agent re-sends after a lost ack is stored once, while two
// processes that share a pid (different instances) never share an id.
func MsgID(session, host string, pid int64, instance, kind string, first, last uint64) string {
	return session + "/" + host + "/" + ProcID(pid, instance) + "/" + kind + "/" +
		strconv.FormatUint(first, 10) + "-" + strconv.FormatUint(last, 10)
}

// LifeMsgID is the Nats-Msg-Id of a lifecycle record: <session>/<host>/<proc id>/life/<record>/<n>,
// with n distinguishing repeated records of one process (e.g. successive status lines).
func LifeMsgID(session, host string, pid int64, instance, record string, n uint64) string {
	return session + "/" + host + "/" + ProcID(pid, instance) + "/life/" + record + "/" + strconv.FormatUint(n, 10)
}

// ProcID names one process start on a host inside message ids: "<pid>" for shims that send no
// instance, else "<pid>.<instance>" (instance: the shim's 16 hex digits drawn at start).
func ProcID(pid int64, instance string) string {
	if instance == "" {
		return strconv.FormatInt(pid, 10)
	}
	return strconv.FormatInt(pid, 10) + "." + instance
}
