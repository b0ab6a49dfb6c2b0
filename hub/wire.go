package hub

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/profilemate/profilemate/internal/stream"
	"github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

// commonColumns is how many common columns start every table's header.
var commonColumns = proto.CommonColumns()

// wireSchema is the contract of proto/: table headers and the protobuf decoder. The tables known
// at start are cached; kinds declared later (proto.Registry.Declare, a plugin's derived kinds) are
// read from the registry.
type wireSchema struct {
	reg     *proto.Registry
	headers map[string][]string
	own     map[string][]string // table → its own column names in schema order
	types   map[string][]string // table → its own column types in schema order
	tables  []string
	names   map[string]string // table name → the same name, to avoid a copy per event
}

var _ Schema = (*wireSchema)(nil)
var _ Decoder = (*wireSchema)(nil)

func newWireSchema() (*wireSchema, error) { return newWireSchemaFor(proto.Default()) }

// newWireSchemaFor reads the contract of reg (Default, or a test's own registry).
func newWireSchemaFor(reg *proto.Registry) (*wireSchema, error) {
	ws := &wireSchema{reg: reg, headers: map[string][]string{}, own: map[string][]string{},
		types: map[string][]string{}, names: map[string]string{}}
	for _, t := range reg.Tables() {
		ws.headers[t.Table] = t.Header()
		for _, c := range t.Columns {
			ws.own[t.Table] = append(ws.own[t.Table], c.Name)
			ws.types[t.Table] = append(ws.types[t.Table], c.Type)
		}
		ws.tables = append(ws.tables, t.Table)
		ws.names[t.Table] = t.Table
	}
	if len(ws.tables) == 0 {
		return nil, errors.New("hub: no tables in the wire contract")
	}
	return ws, nil
}

// Header returns a table's CSV header, for the tables known at start and those declared since.
func (w *wireSchema) Header(t string) ([]string, bool) {
	if h, ok := w.headers[t]; ok {
		return h, true
	}
	h := w.reg.Header(t)
	return h, h != nil
}

func (w *wireSchema) Tables() []string { return w.tables }
func (w *wireSchema) Version() string  { return proto.SchemaVersion }

// ownColumns returns a table's own column names and types in schema order.
func (w *wireSchema) ownColumns(table string) (names, types []string, ok bool) {
	if n, ok := w.own[table]; ok {
		return n, w.types[table], true
	}
	s, ok := w.reg.Table(table)
	if !ok {
		return nil, nil, false
	}
	for _, c := range s.Columns {
		names = append(names, c.Name)
		types = append(types, c.Type)
	}
	return names, types, true
}

// Decode reads one stream message by its subject: event batch, lifecycle record or heartbeat.
func (w *wireSchema) Decode(subject string, data []byte) (any, error) {
	switch {
	case strings.HasPrefix(subject, proto.EventPrefix+"."):
		return w.decodeBatch(subject, data)
	case strings.HasPrefix(subject, proto.LifePrefix+"."):
		return decodeLife(subject, data)
	case strings.HasPrefix(subject, proto.HeartbeatPrefix+"."):
		return decodeHeartbeat(subject, data)
	}
	return nil, bad(ReasonSubject, fmt.Errorf("subject %q is not one the hub reads", subject))
}

// versionErr sorts a decode error: another major is dead-lettered, anything else is bad input.
func versionErr(err error) error {
	var ve *proto.VersionError
	if errors.As(err, &ve) {
		return fmt.Errorf("%w: %w", ErrNewerMajor, err)
	}
	return bad(ReasonDecode, err)
}

func (w *wireSchema) decodeBatch(subject string, data []byte) (any, error) {
	f, err := proto.ParseEventSubject(subject)
	if err != nil {
		return nil, bad(ReasonSubject, err)
	}
	if !w.reg.IsKind(f.Kind) {
		return nil, bad(ReasonUnknownKind, fmt.Errorf("kind %q", f.Kind))
	}
	b, major, ok := w.fastBatch(data, f)
	if ok && major != proto.SchemaMajor {
		ok = false // the generic path builds the version error
	}
	if !ok {
		if b, err = w.genericBatch(data, f); err != nil {
			return nil, err
		}
	}
	// The subject is what the stream routed on; the body must agree with it.
	if b.Session == "" {
		b.Session = f.Session
	}
	if b.Host == "" {
		b.Host = f.Host
	}
	if b.Session != f.Session || b.Host != f.Host {
		return nil, bad(ReasonDecode, fmt.Errorf("body names %s/%s, subject %s/%s", b.Session, b.Host, f.Session, f.Host))
	}
	return b, nil
}

// genericBatch decodes with the protobuf library: every input the fast path declines. Each event
// is checked on its own (its kind, its table, each value's type against its column's); a bad event
// goes to Batch.Rejected with its reason and the others are kept.
func (w *wireSchema) genericBatch(data []byte, f proto.SubjectFields) (*Batch, error) {
	eb, err := proto.DecodeEventBatch(data)
	if err != nil {
		return nil, versionErr(err)
	}
	p := eb.GetProcess()
	b := &Batch{
		Session: p.GetSession(), Host: p.GetHost(), Proc: f.Proc, PID: p.GetPid(), Instance: p.GetInstance(), Kind: f.Kind,
		Ident: identOf(p), Dropped: eb.GetDropped(),
		Events: make([]Event, 0, len(eb.GetEvents())),
	}
	for i, ev := range eb.GetEvents() {
		e, rej := w.genericEvent(ev, f.Kind)
		if rej != nil {
			rej.Index, rej.Seq, rej.Kind, rej.Table = i, ev.GetSeq(), ev.GetKind(), ev.GetTable()
			b.Rejected = append(b.Rejected, rej)
			continue
		}
		b.Events = append(b.Events, e)
	}
	return b, nil
}

func (w *wireSchema) genericEvent(ev *pmpb.Event, kind string) (Event, *proto.EventError) {
	if ev.GetKind() != "" && ev.GetKind() != kind {
		return Event{}, &proto.EventError{Reason: proto.ReasonUnknownKind, Err: fmt.Errorf("event of kind %q in a %q batch", ev.GetKind(), kind)}
	}
	own, types, ok := w.ownColumns(ev.GetTable())
	if !ok || !contains(w.reg.KindTables(kind), ev.GetTable()) {
		return Event{}, &proto.EventError{Reason: proto.ReasonUnknownTable, Err: fmt.Errorf("table %q for kind %q", ev.GetTable(), kind)}
	}
	cols := make([]string, len(own))
	for i, c := range own {
		// A column the sender does not have (older minor) stays empty; columns this hub does
		// not know (newer minor) are ignored.
		v, ok := ev.GetCols()[c]
		if !ok {
			continue
		}
		if !valueFits(types[i], v) {
			return Event{}, &proto.EventError{Column: c, Reason: proto.ReasonBadValue,
				Err: fmt.Errorf("table %s column %s: a %s column holds %T", ev.GetTable(), c, types[i], v.GetV())}
		}
		cols[i] = proto.FormatValue(v)
	}
	table := ev.GetTable()
	if n, ok := w.names[table]; ok {
		table = n
	}
	return Event{Table: table, Seq: ev.GetSeq(), Step: ev.GetStep(), TsNS: ev.GetTsNs(), Cols: cols}, nil
}

// valueFits reports whether a Value's case is the one its column's type writes (proto/README.md:
// the oneof is chosen by the column's type), so a string never lands in a float column's cells.
func valueFits(typ string, v *pmpb.Value) bool {
	switch v.GetV().(type) {
	case nil:
		return true // an entry without a value: an empty cell, as an absent column
	case *pmpb.Value_I:
		return typ == proto.TypeInt
	case *pmpb.Value_D:
		return typ == proto.TypeFloat
	case *pmpb.Value_S:
		return typ == proto.TypeString
	case *pmpb.Value_B:
		return typ == proto.TypeBool
	}
	return false
}

func identOf(p *pmpb.Process) Ident {
	return Ident{Role: p.GetRole(), DP: int64(p.GetDp()), PP: int64(p.GetPp()), TP: int64(p.GetTp()), EP: int64(p.GetEp()), Rank: int64(p.GetRank())}
}

func decodeLife(subject string, data []byte) (any, error) {
	f, err := proto.ParseLifeSubject(subject)
	if err != nil {
		return nil, bad(ReasonSubject, err)
	}
	lc, err := proto.DecodeLifecycle(data)
	if err != nil {
		return nil, versionErr(err)
	}
	p := lc.GetProcess()
	l := &Life{
		Session: p.GetSession(), Host: p.GetHost(), Proc: f.Proc, PID: p.GetPid(), Instance: p.GetInstance(), Ident: identOf(p),
		PPID: p.GetPpid(), Python: p.GetPython(), VLLM: p.GetVllm(), GPUUUID: p.GetGpuUuid(),
		Title: p.GetTitle(), Argv: p.GetArgv(), StartNS: p.GetStartNs(),
		InstanceKey: p.GetInstanceKey(), NodeRank: -1,
	}
	if p.NodeRank != nil {
		l.NodeRank = int64(p.GetNodeRank())
	}
	if l.Session == "" {
		l.Session = f.Session
	}
	if l.Host == "" {
		l.Host = f.Host
	}
	if l.Session != f.Session || l.Host != f.Host {
		return nil, bad(ReasonDecode, fmt.Errorf("body names %s/%s, subject %s/%s", l.Session, l.Host, f.Session, f.Host))
	}
	switch r := lc.GetRecord().(type) {
	case *pmpb.Lifecycle_Start:
		l.Type, l.AgentVersion, l.StartNS = LifeStart, r.Start.GetAgentVersion(), r.Start.GetStartNs()
	case *pmpb.Lifecycle_Hello_:
		l.Type = LifeHello
	case *pmpb.Lifecycle_Status_:
		l.Type = LifeStatus
		for _, t := range r.Status.GetTargets() {
			l.Targets = append(l.Targets, Target{Target: t.GetTarget(), Status: t.GetStatus(), Reason: t.GetReason()})
		}
		for _, t := range r.Status.GetTables() {
			l.Tables = append(l.Tables, TableStatus{Table: t.GetTable(), Status: t.GetStatus()})
		}
	case *pmpb.Lifecycle_Bye_:
		l.Type, l.Dropped, l.LastSeq, l.EndNS, l.Clean = LifeBye, r.Bye.GetDropped(), r.Bye.GetLastSeq(), r.Bye.GetEndNs(), r.Bye.GetClean()
		l.EndState, l.EndSignal = r.Bye.GetEndState(), r.Bye.GetEndSignal()
		if l.EndState == "" {
			l.EndState = EndLost
			if l.Clean {
				l.EndState = EndClean
			}
		}
	case *pmpb.Lifecycle_End:
		l.Type, l.EndNS, l.Dropped, l.AgentDropped, l.Reason = LifeEnd, r.End.GetEndNs(), r.End.GetShimDropped(), r.End.GetAgentDropped(), r.End.GetReason()
	default:
		return nil, bad(ReasonUnknownKind, fmt.Errorf("lifecycle record %T", r))
	}
	return l, nil
}

func decodeHeartbeat(subject string, data []byte) (any, error) {
	host, err := proto.ParseHeartbeatSubject(subject)
	if err != nil {
		return nil, bad(ReasonSubject, err)
	}
	hb, err := proto.DecodeHeartbeat(data)
	if err != nil {
		return nil, versionErr(err)
	}
	if hb.GetHost() != "" && hb.GetHost() != host {
		return nil, bad(ReasonDecode, fmt.Errorf("heartbeat body names host %q, subject %q", hb.GetHost(), host))
	}
	return &Heartbeat{
		Host: host, TsNS: hb.GetTsNs(), OffsetNS: hb.GetClockOffsetNs(), UncertaintyNS: hb.GetClockUncertaintyNs(),
		Measured:     hb.GetClockUncertaintyNs() != 0,
		AgentVersion: hb.GetAgentVersion(), AgentDropped: hb.GetAgentDropped(), ShimDropped: hb.GetShimDropped(),
	}, nil
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func streamConfig() jetstream.StreamConfig { return stream.Config() }

func splitHostPort(hp string) (string, int, error) {
	h, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, fmt.Errorf("hub: listen address %q: %w", hp, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("hub: listen port %q: %w", p, err)
	}
	return h, port, nil
}
