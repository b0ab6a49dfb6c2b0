package sdkplugin

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"github.com/profilemate/profilemate/analysis"
	"github.com/profilemate/profilemate/internal/testkit"
	"github.com/profilemate/profilemate/plugins/sdk"
	"github.com/profilemate/profilemate/plugins/sdk/sdktest"
	"github.com/profilemate/profilemate/proto"
)

// Every plugin describes itself in a shape the host accepts.
func TestDescribeValid(t *testing.T) {
	for _, a := range analysis.All() {
		in := MustNew(a.Name).Describe()
		if err := in.Validate(); err != nil {
			t.Errorf("%s: %v", a.Name, err)
		}
		if in.Name != a.Name || len(in.Tables) != len(a.Outputs) {
			t.Errorf("%s: got %+v", a.Name, in)
		}
	}
	if _, err := New("nope"); err == nil {
		t.Error("unknown analysis: no error")
	}
}

// simSession records one simulator run (4 TP workers, a small KV pool, captures up to 64 tokens,
// a slow rank) with the real shim and returns its standalone session folder.
func simSession(t *testing.T) string {
	t.Helper()
	root := testkit.RepoRoot(t)
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3")
	}
	tmp := t.TempDir()
	cmd := exec.Command(py, filepath.Join(root, "testbed", "bin", "vllm"), "serve", "sim/moe")
	cmd.Dir = tmp
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(k, "PMSIM_") && !strings.HasPrefix(k, "PROFILEMATE_") && !strings.HasPrefix(k, "VLLM_") && k != "PYTHONPATH" {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env,
		"PYTHONPATH="+strings.Join([]string{filepath.Join(root, "shim"), filepath.Join(root, "testbed", "eras", "main_2026_08_20"), filepath.Join(root, "testbed")}, ":"),
		"PYTHONDONTWRITEBYTECODE=1", "PMSIM_STEP_WORK_MS=1", "PMSIM_TP=4", "PMSIM_SLOW_RANK=3", "PMSIM_SLOW_MS=2",
		"PMSIM_GROUND_TRUTH="+filepath.Join(tmp, "truth.json"), "PROFILEMATE_OUTPUT_DIR="+filepath.Join(tmp, "pm"),
		"PROFILEMATE_SOCKET=off") // the folder sink, even where an agent listens at a default socket
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("simulator: %v\n%s", err, out)
	}
	s, _ := filepath.Glob(filepath.Join(tmp, "pm", "session_*"))
	if len(s) != 1 {
		t.Fatalf("session folders %v", s)
	}
	return s[0]
}

// batches turns a standalone session folder into the batches the hub would feed: per process
// and table, events in seq order, 40 to a batch, typed by proto/tables.
func batches(t *testing.T, dir string) []sdk.Batch {
	t.Helper()
	procs, _ := filepath.Glob(filepath.Join(dir, "*", "metadata.json"))
	sort.Strings(procs)
	var out []sdk.Batch
	seq := uint64(0)
	for _, meta := range procs {
		var m struct {
			Host  string `json:"host"`
			PID   int64  `json:"pid"`
			Ident struct {
				Role           string `json:"role"`
				DP, PP, TP, EP int32
				Rank           int32 `json:"rank"`
			} `json:"ident"`
		}
		b, _ := os.ReadFile(meta)
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		p := sdk.Process{Host: m.Host, PID: m.PID, Role: m.Ident.Role, DP: m.Ident.DP, PP: m.Ident.PP, TP: m.Ident.TP,
			EP: m.Ident.EP, Rank: m.Ident.Rank}
		for _, schema := range proto.Tables() {
			var evs []sdk.Event
			d, err := analysis.OpenDir(filepath.Dir(meta))
			if err != nil {
				t.Fatal(err)
			}
			err = d.Rows(schema.Table, func(r analysis.Row) error {
				ev := sdk.Event{Table: schema.Table, Cols: map[string]any{}}
				s, _ := r.Int("seq")
				ev.Seq = uint64(s)
				ev.Step, _ = r.Int("step")
				ev.TSNS, _ = r.Int("ts_ns")
				for _, c := range schema.Columns {
					cell := r[c.Name]
					if cell == "" {
						continue
					}
					switch c.Type {
					case proto.TypeInt:
						v, _ := strconv.ParseInt(cell, 10, 64)
						ev.Cols[c.Name] = v
					case proto.TypeFloat:
						v, _ := strconv.ParseFloat(cell, 64)
						ev.Cols[c.Name] = v
					case proto.TypeBool:
						ev.Cols[c.Name] = r.Bool(c.Name)
					default:
						ev.Cols[c.Name] = cell
					}
				}
				evs = append(evs, ev)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < len(evs); i += 40 {
				seq++
				out = append(out, sdk.Batch{StreamSeq: seq, Kind: schema.Kind, Process: p, Events: evs[i:min(i+40, len(evs))]})
			}
		}
	}
	return out
}

// Fed a recorded session over real gRPC, batch by batch, each plugin gives exactly the rows the
// library gives on the session folder: derived tables, then findings.
func TestPluginsEqualLibrary(t *testing.T) {
	dir := simSession(t)
	feed := batches(t, dir)
	src, err := analysis.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range analysis.All() {
		t.Run(a.Name, func(t *testing.T) {
			res, err := a.Run(src)
			if err != nil {
				t.Fatal(err)
			}
			want := Rows(res)
			if len(res.Findings) == 0 {
				t.Fatalf("the library found nothing: the comparison proves little")
			}
			got := sdktest.Run(t, MustNew(a.Name), sdk.Session{ID: "s1"}, feed...)
			if len(got) != len(want) {
				t.Fatalf("got %d rows, want %d", len(got), len(want))
			}
			for i := range want {
				if got[i].InputSeq != 0 || !reflect.DeepEqual(got[i].Row, want[i]) {
					t.Errorf("row %d: got %+v (input %d), want %+v", i, got[i].Row, got[i].InputSeq, want[i])
				}
			}
			last := got[len(got)-1]
			if last.Table != sdk.FindingsTable || last.Cols["title"] != res.Findings[len(res.Findings)-1].Title {
				t.Errorf("last row %+v, want the last finding", last)
			}
		})
	}
}

// The four binaries of plugins/<name> speak the handshake and describe their analysis.
func TestPluginBinaries(t *testing.T) {
	root := testkit.RepoRoot(t)
	dir := t.TempDir()
	args := []string{"build", "-o", dir + string(os.PathSeparator)}
	for _, a := range analysis.All() {
		args = append(args, "./plugins/"+a.Name)
	}
	b := exec.Command("go", args...)
	b.Dir = root
	if out, err := b.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	quiet := hclog.NewNullLogger()
	for _, a := range analysis.All() {
		t.Run(a.Name, func(t *testing.T) {
			c := plugin.NewClient(&plugin.ClientConfig{HandshakeConfig: sdk.Handshake, VersionedPlugins: sdk.PluginSets(nil),
				Cmd: exec.Command(filepath.Join(dir, a.Name)), AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC}, Logger: quiet})
			defer c.Kill()
			rpc, err := c.Client()
			if err != nil {
				t.Fatalf("start: %v", err)
			}
			raw, err := rpc.Dispense(sdk.PluginKey)
			if err != nil {
				t.Fatal(err)
			}
			in, _, err := raw.(*sdk.Client).Describe(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if in.Name != a.Name || in.Version != Version || !reflect.DeepEqual(in.Kinds, a.Kinds) {
				t.Errorf("describe: %+v", in)
			}
		})
	}
}
