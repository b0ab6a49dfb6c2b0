package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/urfave/cli/v2"
	gproto "google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/internal/cliapp"
	"github.com/profilemate/profilemate/plugins/host"
	"github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

func profilersCommand() *cli.Command {
	flags := []cli.Flag{
		&cli.StringFlag{Name: "session", EnvVars: []string{"PROFILEMATE_SESSION"}, Usage: "only the processes of this session (default: every process on the hosts)"},
		&cli.StringSliceFlag{Name: "host", EnvVars: []string{"PROFILEMATE_PROFILERS_HOSTS"}, Usage: "only this host (repeatable; default: the session's hosts and every host with a heartbeat in the last --recent)"},
		&cli.DurationFlag{Name: "recent", Value: 5 * time.Minute, EnvVars: []string{"PROFILEMATE_PROFILERS_RECENT"}, Usage: "hosts count as present when their last heartbeat is this recent"},
	}
	flags = append(flags, hubNATSFlags()...)
	return &cli.Command{
		Name:  "profilers",
		Usage: "switch a profiler kind on or off in the running vLLM processes, through the agents",
		Subcommands: []*cli.Command{
			{Name: "on", Usage: "switch KIND on", ArgsUsage: "KIND", Flags: flags, Action: func(c *cli.Context) error { return profilers(c, true) }},
			{Name: "off", Usage: "switch KIND off", ArgsUsage: "KIND", Flags: flags, Action: func(c *cli.Context) error { return profilers(c, false) }},
		},
	}
}

func profilers(c *cli.Context, on bool) error {
	verb := map[bool]string{true: "on", false: "off"}[on]
	args, err := positional(c)
	if err != nil {
		return cli.Exit("pmhub profilers "+verb+": "+err.Error(), 2)
	}
	if len(args) != 1 {
		return cli.Exit("pmhub profilers "+verb+": want one KIND", 2)
	}
	kind := args[0]
	if !proto.IsKind(kind) || kind == proto.KindGPU {
		return cli.Exit(fmt.Sprintf("pmhub profilers %s: %q is not a shim profiler (kinds: %s)", verb, kind, strings.Join(proto.ShimKinds(), ", ")), 2)
	}
	if d := c.Duration("recent"); d <= 0 {
		return cliapp.Usage("--recent %s: must be positive", d)
	}
	nc, err := connectNATS(c, "pmhub profilers")
	if err != nil {
		return err
	}
	defer nc.Close()
	hosts := c.StringSlice("host")
	if len(hosts) == 0 {
		hosts, err = recentHosts(c.Context, nc, c.Duration("recent"), c.String("session"))
		if err != nil {
			return cli.Exit("pmhub profilers: "+err.Error(), 1)
		}
		if len(hosts) == 0 {
			return cli.Exit("pmhub profilers: no agent sent a heartbeat recently (nor took part in --session); name hosts with --host", 1)
		}
	}
	for _, h := range hosts {
		msg := proto.Stamp(&pmpb.Control{Host: h, Session: c.String("session"),
			Op: &pmpb.Control_Profiler_{Profiler: &pmpb.Control_Profiler{Name: kind, Enabled: on}}})
		data, err := gproto.Marshal(msg)
		if err != nil {
			return err
		}
		if err := nc.Publish(proto.ControlSubject(h), data); err != nil {
			return cli.Exit("pmhub profilers: "+err.Error(), 1)
		}
	}
	if err := nc.Flush(); err != nil {
		return cli.Exit("pmhub profilers: "+err.Error(), 1)
	}
	// Kept for the hub: a person's "off" wins over a plugin's need for the kind.
	js, err := jetstream.New(nc)
	if err == nil {
		user := os.Getenv("USER")
		err = host.RecordChoice(c.Context, js, c.String("session"), kind, on, user)
	}
	if err != nil {
		fmt.Fprintf(c.App.ErrWriter, "pmhub profilers: the choice was sent but not kept for the hub's plugins: %v\n", err)
	}
	scope := "every session"
	if s := c.String("session"); s != "" {
		scope = "session " + s
	}
	fmt.Fprintf(c.App.Writer, "%s %s for %s on %s\n", kind, verb, scope, strings.Join(hosts, ", "))
	return nil
}

// recentHosts are the hosts whose last heartbeat in the stream is younger than recent and, with
// a session, every host with a lifecycle record of that session.
func recentHosts(ctx context.Context, nc *nats.Conn, recent time.Duration, session string) ([]string, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	filters := []string{proto.HeartbeatFilter("")}
	if session != "" {
		filters = append(filters, proto.LifeFilter(session, "", ""))
	}
	cons, err := js.OrderedConsumer(ctx, proto.StreamName, jetstream.OrderedConsumerConfig{
		FilterSubjects: filters, DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy})
	if err != nil {
		return nil, fmt.Errorf("heartbeats: %w", err)
	}
	seen := map[string]bool{}
	for {
		b, err := cons.FetchNoWait(256)
		if err != nil {
			return nil, fmt.Errorf("heartbeats: %w", err)
		}
		n := 0
		for m := range b.Messages() {
			n++
			if f, err := proto.ParseLifeSubject(m.Subject()); err == nil {
				seen[f.Host] = true
				continue
			}
			md, err := m.Metadata()
			if err != nil || time.Since(md.Timestamp) > recent {
				continue
			}
			if h, err := proto.ParseHeartbeatSubject(m.Subject()); err == nil {
				seen[h] = true
			}
		}
		if n == 0 {
			break
		}
	}
	out := make([]string, 0, len(seen))
	for h := range seen {
		out = append(out, h)
	}
	sort.Strings(out)
	return out, nil
}
