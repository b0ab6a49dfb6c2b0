package sdk

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/plugins/pluginpb"
	"github.com/profilemate/profilemate/proto/pmpb"
)

// wireMajor is the EventBatch schema major version this SDK decodes (proto.SchemaMajor).
const wireMajor = 1

// GRPCPlugin is the go-plugin glue: on the plugin side it serves Impl, on the host side it hands
// out a *Client.
type GRPCPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl Profiler
}

var _ plugin.GRPCPlugin = (*GRPCPlugin)(nil)

// GRPCServer registers the profiler service (plugin side).
func (g *GRPCPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	if g.Impl == nil {
		return errors.New("sdk: no profiler to serve")
	}
	pluginpb.RegisterProfilerServer(s, &server{impl: g.Impl})
	return nil
}

// GRPCClient returns the host's handle on the plugin (a *Client).
func (g *GRPCPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &Client{c: pluginpb.NewProfilerClient(c)}, nil
}

// server adapts a Profiler to the generated gRPC service.
type server struct {
	pluginpb.UnimplementedProfilerServer
	impl Profiler
}

func (s *server) Describe(context.Context, *pluginpb.DescribeRequest) (*pluginpb.DescribeResponse, error) {
	in := s.impl.Describe()
	out := &pluginpb.DescribeResponse{
		Name: in.Name, Version: in.Version, ApiVersion: APIVersion, Description: in.Description,
		Components: in.Components, Kinds: in.Kinds,
	}
	for _, t := range in.Tables {
		pt := &pluginpb.Table{Table: t.Table, Kind: t.Kind, Since: t.Since}
		for _, c := range t.Columns {
			pt.Columns = append(pt.Columns, &pluginpb.Column{Name: c.Name, Type: c.Type, Unit: c.Unit, Meaning: c.Meaning})
		}
		out.Tables = append(out.Tables, pt)
	}
	return out, nil
}

func (s *server) OpenSession(ctx context.Context, r *pluginpb.OpenSessionRequest) (*pluginpb.OpenSessionResponse, error) {
	ss := Session{ID: r.GetSession(), StartNS: r.GetStartNs(), MetadataJSON: r.GetMetadataJson()}
	for _, p := range r.GetProcesses() {
		ss.Processes = append(ss.Processes, processFrom(p))
	}
	if err := s.impl.OpenSession(ctx, ss); err != nil {
		return nil, err
	}
	return &pluginpb.OpenSessionResponse{}, nil
}

func (s *server) Consume(ctx context.Context, r *pluginpb.ConsumeRequest) (*pluginpb.ConsumeResponse, error) {
	out := &pluginpb.ConsumeResponse{}
	fail := func(err error) {
		if out.Failed == 0 {
			out.FirstError = err.Error()
		}
		out.Failed++
	}
	// Decoding is the costly part and independent per message: spread it over the cores; the
	// plugin itself is then called one batch at a time, in stream order.
	msgs := r.GetMessages()
	batches := make([]Batch, len(msgs))
	errs := make([]error, len(msgs))
	workers := min(runtime.GOMAXPROCS(0), (len(msgs)+7)/8)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			var d decoder
			for i := w; i < len(msgs); i += workers {
				m := msgs[i]
				batches[i], errs[i] = d.decodeBatch(r.GetSession(), m.GetStreamSeq(), m.GetEventBatch())
			}
		}(w)
	}
	wg.Wait()
	for i, m := range msgs {
		if errs[i] != nil {
			fail(errs[i])
			continue
		}
		rows, err := s.impl.Consume(ctx, batches[i])
		batches[i] = Batch{} // let the events go as soon as the plugin is done with them
		if err != nil {
			fail(fmt.Errorf("stream message %d: %w", m.GetStreamSeq(), err))
			continue
		}
		for _, row := range rows {
			pr, err := rowTo(row, m.GetStreamSeq())
			if err != nil {
				fail(fmt.Errorf("stream message %d: %w", m.GetStreamSeq(), err))
				continue
			}
			out.Rows = append(out.Rows, pr)
		}
	}
	return out, nil
}

func (s *server) CloseSession(ctx context.Context, r *pluginpb.CloseSessionRequest) (*pluginpb.CloseSessionResponse, error) {
	rows, err := s.impl.CloseSession(ctx, r.GetSession())
	if err != nil {
		return nil, err
	}
	out := &pluginpb.CloseSessionResponse{}
	for _, row := range rows {
		pr, err := rowTo(row, 0)
		if err != nil {
			return nil, err
		}
		out.Rows = append(out.Rows, pr)
	}
	return out, nil
}

func (s *server) InputChanged(ctx context.Context, r *pluginpb.InputChangedRequest) (*pluginpb.InputChangedResponse, error) {
	if w, ok := s.impl.(InputWatcher); ok {
		w.InputChanged(ctx, r.GetSession(), r.GetKind(), r.GetEnabled(), r.GetReason())
	}
	return &pluginpb.InputChangedResponse{}, nil
}

// decodeGeneric reads an EventBatch with the generated decoder.
func decodeGeneric(session string, seq uint64, data []byte) (Batch, error) {
	var eb pmpb.EventBatch
	if err := proto.Unmarshal(data, &eb); err != nil {
		return Batch{}, fmt.Errorf("stream message %d: decode: %w", seq, err)
	}
	if eb.GetSchemaMajor() != wireMajor {
		return Batch{}, fmt.Errorf("stream message %d: schema major %d, this SDK reads %d", seq, eb.GetSchemaMajor(), wireMajor)
	}
	return batchFrom(session, seq, &eb), nil
}

func processFrom(p *pmpb.Process) Process {
	return Process{Host: p.GetHost(), PID: p.GetPid(), Role: p.GetRole(), DP: p.GetDp(), PP: p.GetPp(),
		TP: p.GetTp(), EP: p.GetEp(), Rank: p.GetRank(), InstanceKey: p.GetInstanceKey()}
}

func batchFrom(session string, seq uint64, eb *pmpb.EventBatch) Batch {
	b := Batch{Session: session, StreamSeq: seq, Process: processFrom(eb.GetProcess()), Dropped: eb.GetDropped(),
		Events: make([]Event, len(eb.GetEvents()))}
	for i, ev := range eb.GetEvents() {
		if b.Kind == "" {
			b.Kind = ev.GetKind()
		}
		cols := make(map[string]any, len(ev.GetCols()))
		for k, v := range ev.GetCols() {
			switch x := v.GetV().(type) {
			case *pmpb.Value_I:
				cols[k] = x.I
			case *pmpb.Value_D:
				cols[k] = x.D
			case *pmpb.Value_S:
				cols[k] = x.S
			case *pmpb.Value_B:
				cols[k] = x.B
			}
		}
		b.Events[i] = Event{Table: ev.GetTable(), Seq: ev.GetSeq(), Step: ev.GetStep(), TSNS: ev.GetTsNs(), Cols: cols}
	}
	return b
}

// ValueOf converts a Go value of a row into a wire value: int, int32, int64, uint32, uint64
// (up to MaxInt64), float32, float64, string, bool. nil gives nil (an empty cell).
func ValueOf(v any) (*pmpb.Value, error) {
	switch x := v.(type) {
	case nil:
		return nil, nil
	case int64:
		return &pmpb.Value{V: &pmpb.Value_I{I: x}}, nil
	case int:
		return &pmpb.Value{V: &pmpb.Value_I{I: int64(x)}}, nil
	case int32:
		return &pmpb.Value{V: &pmpb.Value_I{I: int64(x)}}, nil
	case uint32:
		return &pmpb.Value{V: &pmpb.Value_I{I: int64(x)}}, nil
	case uint64:
		if x > math.MaxInt64 {
			return nil, fmt.Errorf("value %d does not fit an int column", x)
		}
		return &pmpb.Value{V: &pmpb.Value_I{I: int64(x)}}, nil
	case float64:
		return &pmpb.Value{V: &pmpb.Value_D{D: x}}, nil
	case float32:
		return &pmpb.Value{V: &pmpb.Value_D{D: float64(x)}}, nil
	case string:
		return &pmpb.Value{V: &pmpb.Value_S{S: x}}, nil
	case bool:
		return &pmpb.Value{V: &pmpb.Value_B{B: x}}, nil
	}
	return nil, fmt.Errorf("unsupported value type %T", v)
}

func rowTo(r Row, inputSeq uint64) (*pluginpb.Row, error) {
	out := &pluginpb.Row{Table: r.Table, InputSeq: inputSeq, Step: r.Step, TsNs: r.TSNS,
		Dp: r.DP, Pp: r.PP, Tp: r.TP, Ep: r.EP, Cols: make(map[string]*pmpb.Value, len(r.Cols))}
	for k, v := range r.Cols {
		pv, err := ValueOf(v)
		if err != nil {
			return nil, fmt.Errorf("row of %s: column %s: %w", r.Table, k, err)
		}
		if pv != nil {
			out.Cols[k] = pv
		}
	}
	return out, nil
}

// Client is the host's handle on a running plugin (what GRPCClient returns). Every call takes the
// caller's context: its deadline is the per-call deadline.
type Client struct {
	c pluginpb.ProfilerClient
}

// Describe asks the plugin who it is; the reply's APIVersion is the SDK API it was built with.
func (c *Client) Describe(ctx context.Context) (Info, uint32, error) {
	r, err := c.c.Describe(ctx, &pluginpb.DescribeRequest{HostApiVersion: APIVersion})
	if err != nil {
		return Info{}, 0, err
	}
	in := Info{Name: r.GetName(), Version: r.GetVersion(), Description: r.GetDescription(),
		Components: r.GetComponents(), Kinds: r.GetKinds()}
	for _, t := range r.GetTables() {
		tt := Table{Table: t.GetTable(), Kind: t.GetKind(), Since: t.GetSince()}
		for _, c := range t.GetColumns() {
			tt.Columns = append(tt.Columns, Column{Name: c.GetName(), Type: c.GetType(), Unit: c.GetUnit(), Meaning: c.GetMeaning()})
		}
		in.Tables = append(in.Tables, tt)
	}
	return in, r.GetApiVersion(), nil
}

// OpenSession announces a session.
func (c *Client) OpenSession(ctx context.Context, r *pluginpb.OpenSessionRequest) error {
	_, err := c.c.OpenSession(ctx, r)
	return err
}

// Consume hands over stream messages of one session, in stream order.
func (c *Client) Consume(ctx context.Context, session string, msgs []*pluginpb.Message) (*pluginpb.ConsumeResponse, error) {
	return c.c.Consume(ctx, &pluginpb.ConsumeRequest{Session: session, Messages: msgs})
}

// CloseSession ends a session and returns its final rows (input_seq 0).
func (c *Client) CloseSession(ctx context.Context, session string) ([]*pluginpb.Row, error) {
	r, err := c.c.CloseSession(ctx, &pluginpb.CloseSessionRequest{Session: session})
	if err != nil {
		return nil, err
	}
	return r.GetRows(), nil
}

// InputChanged tells the plugin a kind it reads was switched on or off.
func (c *Client) InputChanged(ctx context.Context, session, kind string, enabled bool, reason string) error {
	_, err := c.c.InputChanged(ctx, &pluginpb.InputChangedRequest{Session: session, Kind: kind, Enabled: enabled, Reason: reason})
	return err
}
