// Package sdktest runs a profiler plugin in-process over real gRPC (go-plugin's test connection),
// for a plugin's own unit tests: Run feeds it batches the way pmhub does and returns its rows.
package sdktest

import (
	"context"
	"testing"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/plugins/pluginpb"
	"github.com/profilemate/profilemate/plugins/sdk"
	"github.com/profilemate/profilemate/proto/pmpb"
)

// Client connects p over an in-process gRPC connection; it is closed when the test ends.
func Client(t testing.TB, p sdk.Profiler) *sdk.Client {
	t.Helper()
	c, _ := plugin.TestPluginGRPCConn(t, false, plugin.PluginSet{sdk.PluginKey: &sdk.GRPCPlugin{Impl: p}})
	t.Cleanup(func() { _ = c.Close() })
	raw, err := c.Dispense(sdk.PluginKey)
	if err != nil {
		t.Fatalf("dispense: %v", err)
	}
	return raw.(*sdk.Client)
}

// Message encodes b as the stream message pmhub would hand over (an EventBatch of schema 1.0).
// b.StreamSeq is its key; Batch.Kind fills events that have none.
func Message(t testing.TB, b sdk.Batch) *pluginpb.Message {
	t.Helper()
	p := b.Process
	eb := &pmpb.EventBatch{SchemaMajor: 1, Process: &pmpb.Process{Session: b.Session, Host: p.Host, Pid: p.PID,
		Role: p.Role, Dp: p.DP, Pp: p.PP, Tp: p.TP, Ep: p.EP, Rank: p.Rank}, Dropped: b.Dropped}
	for _, ev := range b.Events {
		pe := &pmpb.Event{Kind: b.Kind, Table: ev.Table, Seq: ev.Seq, Step: ev.Step, TsNs: ev.TSNS, Cols: map[string]*pmpb.Value{}}
		for k, v := range ev.Cols {
			pv, err := sdk.ValueOf(v)
			if err != nil {
				t.Fatalf("event %d column %s: %v", ev.Seq, k, err)
			}
			if pv != nil {
				pe.Cols[k] = pv
			}
		}
		eb.Events = append(eb.Events, pe)
	}
	data, err := proto.Marshal(eb)
	if err != nil {
		t.Fatalf("encode batch: %v", err)
	}
	return &pluginpb.Message{StreamSeq: b.StreamSeq, EventBatch: data}
}

// Row is a derived row as the host receives it: InputSeq is the stream sequence of the batch that
// gave it (0 for CloseSession's final rows).
type Row struct {
	sdk.Row
	InputSeq uint64
}

// FromWire converts a row as the host receives it back to plain Go values.
func FromWire(r *pluginpb.Row) Row {
	out := Row{Row: sdk.Row{Table: r.GetTable(), Step: r.GetStep(), TSNS: r.GetTsNs(), DP: r.GetDp(), PP: r.GetPp(),
		TP: r.GetTp(), EP: r.GetEp(), Cols: map[string]any{}}, InputSeq: r.GetInputSeq()}
	for k, v := range r.GetCols() {
		switch x := v.GetV().(type) {
		case *pmpb.Value_I:
			out.Cols[k] = x.I
		case *pmpb.Value_D:
			out.Cols[k] = x.D
		case *pmpb.Value_S:
			out.Cols[k] = x.S
		case *pmpb.Value_B:
			out.Cols[k] = x.B
		}
	}
	return out
}

// Run opens s on p, feeds batches (each its own stream message, in order), closes s and returns
// every row, the final ones last. A failed call or a batch the plugin refused fails the test.
func Run(t testing.TB, p sdk.Profiler, s sdk.Session, batches ...sdk.Batch) []Row {
	t.Helper()
	ctx := context.Background()
	c := Client(t, p)
	if _, _, err := c.Describe(ctx); err != nil {
		t.Fatalf("describe: %v", err)
	}
	if err := c.OpenSession(ctx, &pluginpb.OpenSessionRequest{Session: s.ID, StartNs: s.StartNS, MetadataJson: s.MetadataJSON}); err != nil {
		t.Fatalf("open session: %v", err)
	}
	var out []Row
	for _, b := range batches {
		b.Session = s.ID
		r, err := c.Consume(ctx, s.ID, []*pluginpb.Message{Message(t, b)})
		if err != nil {
			t.Fatalf("consume: %v", err)
		}
		if r.GetFailed() > 0 {
			t.Fatalf("plugin refused a batch: %s", r.GetFirstError())
		}
		for _, row := range r.GetRows() {
			out = append(out, FromWire(row))
		}
	}
	final, err := c.CloseSession(ctx, s.ID)
	if err != nil {
		t.Fatalf("close session: %v", err)
	}
	for _, row := range final {
		out = append(out, FromWire(row))
	}
	return out
}
