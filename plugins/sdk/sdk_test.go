package sdk_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"github.com/profilemate/profilemate/plugins/pluginpb"
	"github.com/profilemate/profilemate/plugins/sdk"
	"github.com/profilemate/profilemate/plugins/sdk/sdktest"
	"github.com/profilemate/profilemate/proto"
)

// allowedDeps are the module paths an SDK user may pull in: go-plugin and what it needs, gRPC,
// protobuf, and ProfileMate's generated messages. Anything else (NATS, the hub, the proto package
// with its JetStream config, CLI or metrics libraries) fails the test.
var allowedDeps = []string{
	"github.com/profilemate/profilemate/plugins/sdk",
	"github.com/profilemate/profilemate/plugins/pluginpb",
	"github.com/profilemate/profilemate/proto/pmpb",
	"github.com/hashicorp/go-plugin",
	"github.com/hashicorp/go-hclog",
	"github.com/hashicorp/yamux",
	"github.com/oklog/run",
	"github.com/fatih/color",
	"github.com/mattn/go-colorable",
	"github.com/mattn/go-isatty",
	"google.golang.org/grpc",
	"google.golang.org/protobuf",
	"github.com/golang/protobuf", // the older protobuf API go-plugin still uses
	"google.golang.org/genproto/googleapis/rpc",
	"golang.org/x/net",
	"golang.org/x/sys",
	"golang.org/x/text",
}

func TestSDKDependencies(t *testing.T) {
	for _, pkg := range []string{"./plugins/sdk", "./plugins/example"} {
		t.Run(pkg, func(t *testing.T) {
			cmd := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", pkg)
			cmd.Dir = "../.."
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("go list: %v\n%s", err, out)
			}
			var n int
			for _, p := range strings.Fields(string(out)) {
				if p == "github.com/profilemate/profilemate/plugins/example" {
					continue
				}
				n++
				ok := false
				for _, a := range allowedDeps {
					if p == a || strings.HasPrefix(p, a+"/") {
						ok = true
						break
					}
				}
				if !ok {
					t.Errorf("%s pulls in %s, which is not go-plugin, gRPC or protobuf", pkg, p)
				}
			}
			if n < 5 {
				t.Fatalf("go list found only %d dependencies: %s", n, out)
			}
		})
	}
}

// The SDK decodes EventBatch of one schema major; it must follow the contract's.
func TestWireMajorFollowsContract(t *testing.T) {
	p := recorder{}
	c := sdktest.Client(t, &p)
	m := sdktest.Message(t, sdk.Batch{StreamSeq: 7, Kind: "kv_cache", Events: []sdk.Event{{Table: "kv_cache_usage", Seq: 1}}})
	if proto.SchemaMajor != 1 {
		t.Fatalf("contract major is %d; the SDK's wireMajor and sdktest.Message must follow", proto.SchemaMajor)
	}
	r, err := c.Consume(context.Background(), "s", []*pluginpb.Message{m})
	if err != nil || r.GetFailed() != 0 {
		t.Fatalf("consume: %v %s", err, r.GetFirstError())
	}
}

func TestInfoValidate(t *testing.T) {
	good := sdk.Info{Name: "skew", Version: "1.2.0", Kinds: []string{"forward_pass"}, Tables: []sdk.Table{
		{Table: "skew_steps", Kind: "skew", Columns: []sdk.Column{{Name: "skew_ms", Type: sdk.TypeFloat}}}}}
	tests := []struct {
		name string
		edit func(*sdk.Info)
		want string // substring of the error; "" = valid
	}{
		{"valid", func(*sdk.Info) {}, ""},
		{"upper-case name", func(i *sdk.Info) { i.Name = "Skew" }, "plugin name"},
		{"dash in name", func(i *sdk.Info) { i.Name = "my-plugin" }, "plugin name"},
		{"no version", func(i *sdk.Info) { i.Version = "" }, "version"},
		{"version with slash", func(i *sdk.Info) { i.Version = "1/2" }, "version"},
		{"no kinds", func(i *sdk.Info) { i.Kinds = nil }, "no kinds"},
		{"findings declared", func(i *sdk.Info) { i.Tables[0].Table = sdk.FindingsTable }, "declared twice"},
		{"reserved column", func(i *sdk.Info) { i.Tables[0].Columns[0].Name = "input_seq" }, "reserved"},
		{"bad type", func(i *sdk.Info) { i.Tables[0].Columns[0].Type = "double" }, "type"},
		{"no columns", func(i *sdk.Info) { i.Tables[0].Columns = nil }, "no columns"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := good
			in.Tables = []sdk.Table{{Table: good.Tables[0].Table, Kind: good.Tables[0].Kind,
				Columns: append([]sdk.Column(nil), good.Tables[0].Columns...)}}
			tt.edit(&in)
			err := in.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("got %v, want valid", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("got %v, want an error about %q", err, tt.want)
			}
		})
	}
}

// recorder keeps what it was given and answers with rows of every value type.
type recorder struct {
	opened  []sdk.Session
	batches []sdk.Batch
	closed  []string
	inputs  []string
	bad     bool // answer a row with a value type the wire cannot carry
}

func (r *recorder) Describe() sdk.Info {
	return sdk.Info{Name: "rec", Version: "0.1", Kinds: []string{"kv_cache"}, Tables: []sdk.Table{{Table: "rec_rows", Kind: "rec",
		Columns: []sdk.Column{{Name: "i", Type: sdk.TypeInt}, {Name: "f", Type: sdk.TypeFloat}, {Name: "s", Type: sdk.TypeString}, {Name: "b", Type: sdk.TypeBool}}}}}
}
func (r *recorder) OpenSession(_ context.Context, s sdk.Session) error {
	r.opened = append(r.opened, s)
	return nil
}
func (r *recorder) Consume(_ context.Context, b sdk.Batch) ([]sdk.Row, error) {
	r.batches = append(r.batches, b)
	if len(b.Events) == 0 {
		return nil, errors.New("empty batch")
	}
	cols := map[string]any{"i": len(b.Events), "f": 0.5, "s": b.Kind, "b": true}
	if r.bad {
		cols["i"] = struct{}{}
	}
	return []sdk.Row{sdk.NewRow("rec_rows", cols)}, nil
}
func (r *recorder) CloseSession(_ context.Context, s string) ([]sdk.Row, error) {
	r.closed = append(r.closed, s)
	return []sdk.Row{sdk.Finding{Severity: sdk.SeverityWarning, Title: "t", Numbers: map[string]float64{"b": 2, "a": 1}, Ranks: []int{3, 1}, FirstStep: 4, LastStep: 9}.Row()}, nil
}
func (r *recorder) InputChanged(_ context.Context, session, kind string, on bool, reason string) {
	r.inputs = append(r.inputs, session+"/"+kind+"/"+map[bool]string{true: "on", false: "off"}[on]+"/"+reason)
}

func TestRoundTripInProcess(t *testing.T) {
	rec := &recorder{}
	batches := []sdk.Batch{
		{StreamSeq: 10, Kind: "kv_cache", Process: sdk.Process{Host: "h1", PID: 42, Role: "engine_core", DP: 0, PP: -1, TP: -1, EP: -1, Rank: -1},
			Events: []sdk.Event{{Table: "kv_cache_usage", Seq: 1, Step: 3, TSNS: 99, Cols: map[string]any{"used_blocks": int64(5), "usage": 0.25, "note": "x", "flag": true}}}},
		{StreamSeq: 12, Kind: "kv_cache", Process: sdk.Process{Host: "h1", PID: 42}, Events: []sdk.Event{{Table: "kv_cache_usage", Seq: 2}, {Table: "kv_cache_usage", Seq: 3}}},
	}
	rows := sdktest.Run(t, rec, sdk.Session{ID: "20261130_050000_abcdef", StartNS: 5}, batches...)
	if len(rec.opened) != 1 || rec.opened[0].ID != "20261130_050000_abcdef" || rec.opened[0].StartNS != 5 {
		t.Fatalf("opened %+v", rec.opened)
	}
	if len(rec.batches) != 2 {
		t.Fatalf("got %d batches, want 2", len(rec.batches))
	}
	b0 := rec.batches[0]
	if b0.StreamSeq != 10 || b0.Kind != "kv_cache" || b0.Process.PID != 42 || b0.Process.Role != "engine_core" || b0.Events[0].Step != 3 || b0.Events[0].TSNS != 99 {
		t.Fatalf("batch 0 arrived as %+v", b0)
	}
	if v, ok := b0.Events[0].Int("used_blocks"); !ok || v != 5 {
		t.Errorf("Int(used_blocks) = %v %v, want 5", v, ok)
	}
	if v, ok := b0.Events[0].Float("usage"); !ok || v != 0.25 {
		t.Errorf("Float(usage) = %v %v, want 0.25", v, ok)
	}
	if v, ok := b0.Events[0].String("note"); !ok || v != "x" {
		t.Errorf("String(note) = %v %v, want x", v, ok)
	}
	if len(rows) != 3 {
		t.Fatalf("got %d rows, want 3: %+v", len(rows), rows)
	}
	if rows[0].InputSeq != 10 || rows[1].InputSeq != 12 || rows[2].InputSeq != 0 {
		t.Errorf("input seqs %d %d %d, want 10 12 0", rows[0].InputSeq, rows[1].InputSeq, rows[2].InputSeq)
	}
	if rows[1].Cols["i"] != int64(2) || rows[1].Cols["f"] != 0.5 || rows[1].Cols["s"] != "kv_cache" || rows[1].Cols["b"] != true {
		t.Errorf("row 1 cols %v", rows[1].Cols)
	}
	f := rows[2]
	if f.Table != sdk.FindingsTable || f.Cols["numbers"] != `{"a":1,"b":2}` || f.Cols["ranks"] != "1|3" || f.Cols["first_step"] != int64(4) || f.Step != 9 {
		t.Errorf("finding row %+v", f)
	}
}

func TestConsumeCountsRefusedBatches(t *testing.T) {
	for _, tt := range []struct {
		name string
		rec  *recorder
		msgs func(t *testing.T) []*pluginpb.Message
		want string
		n    uint32 // messages refused
	}{
		{"plugin error", &recorder{}, func(t *testing.T) []*pluginpb.Message {
			return []*pluginpb.Message{sdktest.Message(t, sdk.Batch{StreamSeq: 3})}
		}, "stream message 3: empty batch", 1},
		{"undecodable", &recorder{}, func(t *testing.T) []*pluginpb.Message {
			return []*pluginpb.Message{{StreamSeq: 4, EventBatch: []byte{0xff, 0xff}}}
		}, "stream message 4: decode", 1},
		{"unsupported value", &recorder{bad: true}, func(t *testing.T) []*pluginpb.Message {
			return []*pluginpb.Message{sdktest.Message(t, sdk.Batch{StreamSeq: 5, Events: []sdk.Event{{Seq: 1}}})}
		}, "column i: unsupported value type", 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := sdktest.Client(t, tt.rec)
			ok := sdktest.Message(t, sdk.Batch{StreamSeq: 9, Events: []sdk.Event{{Seq: 1}}})
			r, err := c.Consume(context.Background(), "s", append(tt.msgs(t), ok))
			if err != nil {
				t.Fatal(err)
			}
			if r.GetFailed() != tt.n || !strings.Contains(r.GetFirstError(), tt.want) {
				t.Fatalf("failed %d %q, want %d %q", r.GetFailed(), r.GetFirstError(), tt.n, tt.want)
			}
			if tt.rec.bad {
				return
			}
			if len(r.GetRows()) != 1 || r.GetRows()[0].GetInputSeq() != 9 {
				t.Fatalf("the good message's row is missing: %v", r.GetRows())
			}
		})
	}
}

func TestInputChanged(t *testing.T) {
	rec := &recorder{}
	c := sdktest.Client(t, rec)
	if err := c.InputChanged(context.Background(), "s1", "moe_expert", false, "switched off by a person"); err != nil {
		t.Fatal(err)
	}
	if len(rec.inputs) != 1 || rec.inputs[0] != "s1/moe_expert/off/switched off by a person" {
		t.Fatalf("got %v", rec.inputs)
	}
}

var quiet = hclog.NewNullLogger()

// buildExample builds plugins/example once per test binary.
func buildExample(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "example")
	cmd := exec.Command("go", "build", "-o", out, "./plugins/example")
	cmd.Dir = "../.."
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build example: %v\n%s", err, b)
	}
	return out
}

// The real binary: handshake with the magic cookie, protocol negotiation, Describe.
func TestExampleBinaryHandshake(t *testing.T) {
	bin := buildExample(t)
	t.Run("host", func(t *testing.T) {
		c := plugin.NewClient(&plugin.ClientConfig{HandshakeConfig: sdk.Handshake, VersionedPlugins: sdk.PluginSets(nil),
			Cmd: exec.Command(bin), AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC}, Logger: quiet})
		defer c.Kill()
		rpc, err := c.Client()
		if err != nil {
			t.Fatalf("start: %v", err)
		}
		if v := c.NegotiatedVersion(); v != sdk.ProtocolVersion {
			t.Errorf("negotiated protocol %d, want %d", v, sdk.ProtocolVersion)
		}
		raw, err := rpc.Dispense(sdk.PluginKey)
		if err != nil {
			t.Fatal(err)
		}
		in, api, err := raw.(*sdk.Client).Describe(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if in.Name != "example" || api != sdk.APIVersion || len(in.Tables) != 2 || in.Kinds[0] != "forward_pass" {
			t.Fatalf("describe: %+v api %d", in, api)
		}
		if err := in.Validate(); err != nil {
			t.Fatalf("the example's own Info is invalid: %v", err)
		}
	})
	t.Run("host speaks no common protocol", func(t *testing.T) {
		c := plugin.NewClient(&plugin.ClientConfig{HandshakeConfig: sdk.Handshake,
			VersionedPlugins: map[int]plugin.PluginSet{99: {sdk.PluginKey: &sdk.GRPCPlugin{}}},
			Cmd:              exec.Command(bin), AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC}, Logger: quiet})
		defer c.Kill()
		if _, err := c.Client(); err == nil {
			t.Fatal("a host of protocol 99 connected to a protocol 1 plugin")
		}
	})
	t.Run("run by hand", func(t *testing.T) {
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), "PROFILEMATE_PLUGIN=")
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "This binary is a plugin") {
			t.Fatalf("got %v %q, want exit 1 with a hint", err, out)
		}
	})
}
