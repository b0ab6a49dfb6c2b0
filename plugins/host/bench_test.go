package host

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	gproto "google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/plugins/pluginpb"
	"github.com/profilemate/profilemate/plugins/sdk"
	"github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

const (
	benchBatches = 2000
	benchEvents  = 100 // events per batch, about what the agent packs per flush
)

// benchMessages are 2,000 forward_pass batches of 100 events from 8 workers on 2 hosts.
func benchMessages(session string) (subs []string, pays [][]byte) {
	next := map[int]uint64{}
	for i := 0; i < benchBatches; i++ {
		w := i % 8
		host := fmt.Sprintf("host%d", w/4)
		p := &pmpb.Process{Session: session, Host: host, Pid: int64(1000 + w), Role: proto.RoleWorker, Dp: 0, Pp: 0, Tp: int32(w % 4), Ep: -1, Rank: int32(w)}
		eb := &pmpb.EventBatch{SchemaMajor: proto.SchemaMajor, SchemaMinor: proto.SchemaMinor, Process: p}
		for e := 0; e < benchEvents; e++ {
			next[w]++
			s := next[w]
			eb.Events = append(eb.Events, &pmpb.Event{Kind: proto.KindForwardPass, Table: "forward_pass_timing", Seq: s, Step: int64(s),
				TsNs: 1_700_000_000_000_000_000 + int64(s)*1000, Cols: map[string]*pmpb.Value{
					"cpu_ms": {V: &pmpb.Value_D{D: 1.25}}, "gpu_ms": {V: &pmpb.Value_D{D: 1.1}}, "gpu_status": {V: &pmpb.Value_S{S: "measured"}},
					"tokens": {V: &pmpb.Value_I{I: 256}}, "runtime_mode": {V: &pmpb.Value_S{S: "FULL"}}}})
		}
		data, _ := gproto.Marshal(eb)
		subs = append(subs, proto.EventSubject(session, host, fmt.Sprintf("w%d", w), proto.KindForwardPass))
		pays = append(pays, data)
	}
	return subs, pays
}

// BenchmarkPluginConsume: events per second through one plugin process (plugins/example) over
// gRPC, 256 stream messages per Consume call, rows coming back.
func BenchmarkPluginConsume(b *testing.B) {
	c := plugin.NewClient(&plugin.ClientConfig{HandshakeConfig: sdk.Handshake, VersionedPlugins: sdk.PluginSets(nil),
		Cmd: exec.Command(bins["example"]), AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC}, Logger: hclog.NewNullLogger()})
	defer c.Kill()
	rpc, err := c.Client()
	if err != nil {
		b.Fatal(err)
	}
	raw, err := rpc.Dispense(sdk.PluginKey)
	if err != nil {
		b.Fatal(err)
	}
	p := raw.(*sdk.Client)
	ctx := context.Background()
	_, pays := benchMessages("BENCH")
	msgs := make([]*pluginpb.Message, len(pays))
	for i, d := range pays {
		msgs[i] = &pluginpb.Message{StreamSeq: uint64(i + 1), EventBatch: d}
	}
	pid := 0
	if rc := c.ReattachConfig(); rc != nil {
		pid = rc.Pid
	}
	b.ResetTimer()
	cpu0 := cpuTime(os.Getpid()) + cpuTime(pid)
	start := time.Now()
	rows := 0
	for i := 0; i < b.N; i++ {
		s := fmt.Sprintf("s%d", i)
		if err := p.OpenSession(ctx, &pluginpb.OpenSessionRequest{Session: s}); err != nil {
			b.Fatal(err)
		}
		for j := 0; j < len(msgs); j += DefaultBatch {
			r, err := p.Consume(ctx, s, msgs[j:min(j+DefaultBatch, len(msgs))])
			if err != nil || r.GetFailed() > 0 {
				b.Fatal(err, r.GetFirstError())
			}
			rows += len(r.GetRows())
		}
		if _, err := p.CloseSession(ctx, s); err != nil {
			b.Fatal(err)
		}
	}
	d := time.Since(start)
	cpu := cpuTime(os.Getpid()) + cpuTime(pid) - cpu0
	if rows != b.N*benchBatches {
		b.Fatalf("%d rows, want %d", rows, b.N*benchBatches)
	}
	b.ReportMetric(float64(b.N*benchBatches*benchEvents)/d.Seconds(), "events/s")
	b.ReportMetric(float64(b.N*benchBatches)/d.Seconds(), "batches/s")
	// Per CPU second of host and plugin together: what the rate would be with those two cores to
	// themselves, and a figure that holds on a machine shared with other work.
	b.ReportMetric(float64(b.N*benchBatches*benchEvents)/cpu.Seconds(), "events/cpu_s")
}

// cpuTime is a process's user + system CPU time from /proc/<pid>/stat (0 when unreadable).
func cpuTime(pid int) time.Duration {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	// Fields after the command name, which is in parentheses and may hold spaces.
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ is 100 on Linux
}

// BenchmarkHubWithSlowPlugin: the hub's consume → write rate from a pre-filled stream, with no
// plugin and with a plugin that takes 2 ms per batch attached, in one run.
func BenchmarkHubWithSlowPlugin(b *testing.B) {
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	defer slog.SetDefault(prev)
	subs, pays := benchMessages("20261130_070000_bbbbbb")
	total := int64(benchBatches * benchEvents)
	for _, withPlugin := range []bool{false, true} {
		name := map[bool]string{false: "none", true: "slow_plugin"}[withPlugin]
		b.Run(name, func(b *testing.B) {
			var d, cpuD time.Duration
			var pluginBatches int64
			for i := 0; i < b.N; i++ {
				data := b.TempDir()
				h, err := hub.New(hub.Config{DataDir: data, Listen: "127.0.0.1:-1", SessionIdle: time.Hour, SessionMaxBytes: -1})
				if err != nil {
					b.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				if err := h.Start(ctx); err != nil {
					b.Fatal(err)
				}
				nc, _ := nats.Connect(h.ClientURL())
				js, _ := jetstream.New(nc)
				for j := range pays {
					if _, err := js.PublishAsync(subs[j], pays[j]); err != nil {
						b.Fatal(err)
					}
				}
				<-js.PublishAsyncComplete()
				var ph *Host
				phDone := make(chan error, 1)
				if withPlugin {
					dir := filepath.Join(data, "plugins")
					os.MkdirAll(dir, 0o755)
					bb, _ := os.ReadFile(bins["slow"])
					os.WriteFile(filepath.Join(dir, "slow"), bb, 0o755)
					ph, err = New(Config{Dir: dir, StateDir: filepath.Join(data, "plugins-state"), DataDir: data, Conn: h.Conn(),
						Settle: 50 * time.Millisecond, Poll: 50 * time.Millisecond})
					if err != nil {
						b.Fatal(err)
					}
					go func() { phDone <- ph.Run(ctx) }()
					for st, deadline := ph.Status(), time.Now().Add(time.Minute); len(st) == 0 || st[0].State != StateRunning; st = ph.Status() {
						if time.Now().After(deadline) {
							b.Fatalf("the plugin is not running after a minute: %+v", st)
						}
						time.Sleep(5 * time.Millisecond)
					}
				}
				start := time.Now()
				cpuStart := cpuTime(os.Getpid())
				done := make(chan error, 1)
				go func() { done <- h.Run(ctx) }()
				for deadline := time.Now().Add(5 * time.Minute); h.Counters().Rows < total; {
					if time.Now().After(deadline) {
						b.Fatalf("%d of %d rows after 5 minutes", h.Counters().Rows, total)
					}
					time.Sleep(time.Millisecond)
				}
				d += time.Since(start)
				cpuD += cpuTime(os.Getpid()) - cpuStart
				if ph != nil {
					// How far the plugin got while the hub wrote everything: what it acknowledged.
					if c, err := js.Consumer(context.Background(), proto.StreamName, consumerName("slow")); err == nil {
						if ci, err := c.Info(context.Background()); err == nil {
							pluginBatches += int64(ci.AckFloor.Consumer)
						}
					}
				}
				cancel()
				<-done
				if ph != nil {
					<-phDone
				}
				nc.Close()
				h.Close()
			}
			b.ReportMetric(float64(total)*float64(b.N)/d.Seconds(), "hub_events/s")
			// CPU of the hub's process (hub, its nats-server and the plugin host; not the plugin).
			b.ReportMetric(float64(total)*float64(b.N)/cpuD.Seconds(), "hub_events/cpu_s")
			if withPlugin {
				b.ReportMetric(float64(pluginBatches)/float64(b.N), "plugin_batches_acked_meanwhile")
			}
		})
	}
}
