package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/urfave/cli/v2"

	"github.com/profilemate/profilemate/internal/cliapp"
	"github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

func tailCommand() *cli.Command {
	return &cli.Command{
		Name:  "tail",
		Usage: "stream events live from NATS, one line per event",
		Flags: append(hubNATSFlags(),
			&cli.StringFlag{Name: "session", Usage: "only this session", EnvVars: []string{"PROFILEMATE_TAIL_SESSION"}},
			&cli.StringFlag{Name: "instance", Usage: "only processes of this multi-node instance (its key, e.g. mp:10.0.0.1:29500; see pmhub sessions --json)", EnvVars: []string{"PROFILEMATE_TAIL_INSTANCE"}},
			&cli.StringFlag{Name: "host", Usage: "only this host", EnvVars: []string{"PROFILEMATE_TAIL_HOST"}},
			&cli.IntFlag{Name: "node-rank", Value: -1, Usage: "only processes on this node rank of their multi-node instance (-1: all)", EnvVars: []string{"PROFILEMATE_TAIL_NODE_RANK"}},
			&cli.StringFlag{Name: "kind", Usage: "only this event kind (kv_cache, preemption, cuda_graph, …)", EnvVars: []string{"PROFILEMATE_TAIL_KIND"}},
			&cli.IntFlag{Name: "rank", Value: -1, Usage: "only this global worker rank (-1: all)", EnvVars: []string{"PROFILEMATE_TAIL_RANK"}},
			&cli.IntFlag{Name: "tp", Value: -1, Usage: "only this tensor-parallel rank (-1: all)", EnvVars: []string{"PROFILEMATE_TAIL_TP"}},
			&cli.IntFlag{Name: "pp", Value: -1, Usage: "only this pipeline-parallel rank (-1: all)", EnvVars: []string{"PROFILEMATE_TAIL_PP"}},
			&cli.IntFlag{Name: "dp", Value: -1, Usage: "only this data-parallel rank (-1: all)", EnvVars: []string{"PROFILEMATE_TAIL_DP"}},
			&cli.BoolFlag{Name: "json", Usage: "one JSON object per event", EnvVars: []string{"PROFILEMATE_JSON"}},
		),
		Action: tail,
	}
}

// tailFilter holds the rank filters, applied to each decoded batch's process (subjects carry only
// the process token).
type tailFilter struct{ rank, tp, pp, dp int32 }

func (f tailFilter) match(p *pmpb.Process) bool {
	ok := func(want, got int32) bool { return want < 0 || want == got }
	return ok(f.rank, p.GetRank()) && ok(f.tp, p.GetTp()) && ok(f.pp, p.GetPp()) && ok(f.dp, p.GetDp())
}

// layoutFilter keeps the processes of one multi-node instance and/or node rank. Event batches do
// not carry the layout: the agents put it on every lifecycle record (Process.instance_key,
// node_rank), so tail learns it from those, the last record of each process already in the
// stream first, then the live ones.
type layoutFilter struct {
	instance string // "" : any
	node     int32  // -1: any
	procs    map[layoutKey]procLayout
}

type layoutKey struct {
	session, host string
	pid           int64
}

type procLayout struct {
	key  string
	node int32 // -1: unknown
}

func (f *layoutFilter) active() bool { return f.instance != "" || f.node >= 0 }

// learn takes the layout a lifecycle record gives its process.
func (f *layoutFilter) learn(lc *pmpb.Lifecycle) {
	p := lc.GetProcess()
	if p.GetInstanceKey() == "" && p.NodeRank == nil {
		return
	}
	l := procLayout{key: p.GetInstanceKey(), node: -1}
	if p.NodeRank != nil {
		l.node = p.GetNodeRank()
	}
	f.procs[layoutKey{p.GetSession(), p.GetHost(), p.GetPid()}] = l
}

// match reports whether the batch's process is in the wanted instance and node rank; a process
// whose layout is unknown is not.
func (f *layoutFilter) match(p *pmpb.Process) bool {
	if !f.active() {
		return true
	}
	l, ok := f.procs[layoutKey{p.GetSession(), p.GetHost(), p.GetPid()}]
	return ok && (f.instance == "" || f.instance == l.key) && (f.node < 0 || f.node == l.node)
}

// snapshot learns the layout of the processes the stream already has lifecycle records of (the
// last record per process subject). Without JetStream (core NATS only) there is nothing to read:
// then only processes that say hello while tail runs are known.
func (f *layoutFilter) snapshot(ctx context.Context, nc *nats.Conn, subject string) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	str, err := js.Stream(ctx, proto.StreamName)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stream %s: %w", proto.StreamName, err)
	}
	cons, err := str.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject},
		DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy})
	if err != nil {
		return fmt.Errorf("read lifecycle records: %w", err)
	}
	for {
		info, err := cons.Info(ctx)
		if err != nil {
			return fmt.Errorf("read lifecycle records: %w", err)
		}
		if info.NumPending == 0 {
			return nil
		}
		batch, err := cons.Fetch(int(min(info.NumPending, 1000)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return fmt.Errorf("read lifecycle records: %w", err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			if lc, err := proto.DecodeLifecycle(m.Data()); err == nil {
				f.learn(lc)
			}
		}
		if err := batch.Error(); err != nil {
			return fmt.Errorf("read lifecycle records: %w", err)
		}
		if n == 0 {
			return nil
		}
	}
}

func tail(c *cli.Context) error {
	if k := c.String("kind"); k != "" && !proto.IsKind(k) {
		return cli.Exit(fmt.Sprintf("pmhub tail: unknown kind %q (kinds: %s)", k, strings.Join(proto.Kinds(), ", ")), 2)
	}
	// Names go into subject filters: one outside proto's grammar could never match (or would
	// widen the filter), so it is refused here with the grammar.
	if v := c.String("session"); v != "" {
		if err := proto.ValidateSession(v); err != nil {
			return cliapp.Usage("--session: %w", err)
		}
	}
	if v := c.String("host"); v != "" {
		if err := proto.ValidateHost(v); err != nil {
			return cliapp.Usage("--host: %w", err)
		}
	}
	for _, f := range []string{"rank", "tp", "pp", "dp", "node-rank"} {
		if v := c.Int(f); v < -1 {
			return cliapp.Usage("--%s %d: a rank is 0 or more (-1: all)", f, v)
		}
	}
	nc, err := connectNATS(c, "pmhub tail")
	if err != nil {
		return err
	}
	defer nc.Close()
	filt := tailFilter{rank: int32(c.Int("rank")), tp: int32(c.Int("tp")), pp: int32(c.Int("pp")), dp: int32(c.Int("dp"))}
	lay := &layoutFilter{instance: c.String("instance"), node: int32(c.Int("node-rank")), procs: map[layoutKey]procLayout{}}
	out, asJSON := c.App.Writer, c.Bool("json")
	msgs := make(chan *nats.Msg, 4096)
	sub, err := nc.ChanSubscribe(proto.EventFilter(c.String("session"), c.String("host"), "", c.String("kind")), msgs)
	if err != nil {
		return fmt.Errorf("pmhub tail: subscribe: %w", err)
	}
	defer sub.Unsubscribe()
	if lay.active() {
		// Lifecycle records on the same connection and channel: an agent publishes a process's
		// hello before its events, and one connection delivers one publisher's messages in order.
		lifeSubj := proto.LifeFilter(c.String("session"), c.String("host"), "")
		lsub, err := nc.ChanSubscribe(lifeSubj, msgs)
		if err != nil {
			return fmt.Errorf("pmhub tail: subscribe: %w", err)
		}
		defer lsub.Unsubscribe()
		if err := lay.snapshot(c.Context, nc, lifeSubj); err != nil {
			return fmt.Errorf("pmhub tail: %w", err)
		}
	}
	if err := nc.Flush(); err != nil {
		return fmt.Errorf("pmhub tail: %w", err)
	}
	// On stderr, so --json output stays pure; scripts wait for this line before starting a run.
	fmt.Fprintf(c.App.ErrWriter, "pmhub tail: subscribed to %s on %s\n", sub.Subject, nc.ConnectedUrl())
	for {
		select {
		case <-c.Context.Done():
			return nil
		case m := <-msgs:
			if strings.HasPrefix(m.Subject, proto.LifePrefix+".") {
				if lc, err := proto.DecodeLifecycle(m.Data); err == nil {
					lay.learn(lc)
				}
				continue
			}
			b, err := proto.DecodeEventBatch(m.Data)
			if err != nil {
				fmt.Fprintf(c.App.ErrWriter, "pmhub tail: %s: %v\n", m.Subject, err)
				continue
			}
			if !filt.match(b.GetProcess()) || !lay.match(b.GetProcess()) {
				continue
			}
			if err := printBatch(out, b, asJSON); err != nil {
				return err
			}
		}
	}
}

// tailEvent is the --json shape of one event: who, what, and the table's own columns.
type tailEvent struct {
	Session string         `json:"session"`
	Host    string         `json:"host"`
	PID     int64          `json:"pid"`
	Role    string         `json:"role"`
	DP      int32          `json:"dp"`
	PP      int32          `json:"pp"`
	TP      int32          `json:"tp"`
	EP      int32          `json:"ep"`
	Rank    int32          `json:"rank"`
	Kind    string         `json:"kind"`
	Table   string         `json:"table"`
	Seq     uint64         `json:"seq"`
	Step    int64          `json:"step"`
	TsNS    int64          `json:"ts_ns"`
	Cols    map[string]any `json:"cols"`
}

func printBatch(w io.Writer, b *pmpb.EventBatch, asJSON bool) error {
	p := b.GetProcess()
	enc := json.NewEncoder(w)
	for _, ev := range b.GetEvents() {
		if asJSON {
			cols := make(map[string]any, len(ev.GetCols()))
			for k, v := range ev.GetCols() {
				cols[k] = valueOf(v)
			}
			if err := enc.Encode(tailEvent{Session: p.GetSession(), Host: p.GetHost(), PID: p.GetPid(), Role: p.GetRole(),
				DP: p.GetDp(), PP: p.GetPp(), TP: p.GetTp(), EP: p.GetEp(), Rank: p.GetRank(), Kind: ev.GetKind(),
				Table: ev.GetTable(), Seq: ev.GetSeq(), Step: ev.GetStep(), TsNS: ev.GetTsNs(), Cols: cols}); err != nil {
				return err
			}
			continue
		}
		var sb strings.Builder
		fmt.Fprintf(&sb, "%s %s %s step=%d %s", p.GetSession(), p.GetHost(),
			proto.ProcToken(p.GetRole(), int(p.GetDp()), int(p.GetRank()), int(p.GetPid())), ev.GetStep(), ev.GetTable())
		keys := make([]string, 0, len(ev.GetCols()))
		for k := range ev.GetCols() {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(&sb, " %s=%v", k, valueOf(ev.GetCols()[k]))
		}
		if _, err := fmt.Fprintln(w, sb.String()); err != nil {
			return err
		}
	}
	return nil
}

func valueOf(v *pmpb.Value) any {
	switch x := v.GetV().(type) {
	case *pmpb.Value_I:
		return x.I
	case *pmpb.Value_D:
		return x.D
	case *pmpb.Value_S:
		return x.S
	case *pmpb.Value_B:
		return x.B
	}
	return nil
}
