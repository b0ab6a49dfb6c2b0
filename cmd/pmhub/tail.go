package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/urfave/cli/v2"

	"github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

func tailCommand() *cli.Command {
	return &cli.Command{
		Name:  "tail",
		Usage: "stream events live from NATS, one line per event",
		Flags: append(hubNATSFlags(),
			&cli.StringFlag{Name: "session", Usage: "only this session", EnvVars: []string{"PROFILEMATE_TAIL_SESSION"}},
			&cli.StringFlag{Name: "host", Usage: "only this host", EnvVars: []string{"PROFILEMATE_TAIL_HOST"}},
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

func tail(c *cli.Context) error {
	if k := c.String("kind"); k != "" && !proto.IsKind(k) {
		return cli.Exit(fmt.Sprintf("pmhub tail: unknown kind %q (kinds: %s)", k, strings.Join(proto.Kinds(), ", ")), 2)
	}
	nc, err := connectNATS(c, "pmhub tail")
	if err != nil {
		return err
	}
	defer nc.Close()
	filt := tailFilter{rank: int32(c.Int("rank")), tp: int32(c.Int("tp")), pp: int32(c.Int("pp")), dp: int32(c.Int("dp"))}
	out, asJSON := c.App.Writer, c.Bool("json")
	msgs := make(chan *nats.Msg, 4096)
	sub, err := nc.ChanSubscribe(proto.EventFilter(c.String("session"), c.String("host"), "", c.String("kind")), msgs)
	if err != nil {
		return fmt.Errorf("pmhub tail: subscribe: %w", err)
	}
	defer sub.Unsubscribe()
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
			b, err := proto.DecodeEventBatch(m.Data)
			if err != nil {
				fmt.Fprintf(c.App.ErrWriter, "pmhub tail: %s: %v\n", m.Subject, err)
				continue
			}
			if !filt.match(b.GetProcess()) {
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
