package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/profilemate/profilemate/agent/gpu"
	"github.com/profilemate/profilemate/internal/cliapp"
	"github.com/profilemate/profilemate/internal/dirs"
	"github.com/profilemate/profilemate/internal/natsclient"

	"github.com/urfave/cli/v2"

	"github.com/profilemate/profilemate/agent"
	"github.com/profilemate/profilemate/internal/sdnotify"
)

// socketOff is the PROFILEMATE_SOCKET value with which a shim uses no agent (docs/shim.md); the
// same variable sets pmagent's --socket.
const socketOff = "off"

// pipelineFlags are the flags `run` and `serve` share: where to publish and where to spool.
func pipelineFlags() []cli.Flag {
	return append(natsclient.Flags("", "NATS URL(s), comma separated; empty: spool only"),
		&cli.StringFlag{Name: "host", Usage: "host name in subjects (default: the machine's)", EnvVars: []string{"PROFILEMATE_HOST"}},
		&cli.StringFlag{Name: "spool-dir", Usage: "where undelivered batches wait on disk", EnvVars: []string{"PROFILEMATE_SPOOL_DIR"}, Value: defaultSpoolDir()},
		&cli.Int64Flag{Name: "spool-max-bytes", Usage: "disk spool limit; beyond it batches are dropped and counted", EnvVars: []string{"PROFILEMATE_SPOOL_MAX_BYTES"}, Value: 1 << 30},
		&cli.Int64Flag{Name: "queue-max-bytes", Usage: "memory queue limit before the disk spool is used", EnvVars: []string{"PROFILEMATE_QUEUE_MAX_BYTES"}, Value: 32 << 20},
		&cli.DurationFlag{Name: "spool-sync", Usage: "fsync interval of the disk spool: what a killed agent can lose while NATS is down", EnvVars: []string{"PROFILEMATE_SPOOL_SYNC"}, Value: agent.DefaultSpoolSync},
		&cli.Int64Flag{Name: "dead-letter-max-bytes", Usage: "size cap of the file of messages NATS refused permanently; beyond it they are only counted", EnvVars: []string{"PROFILEMATE_DEAD_LETTER_MAX_BYTES"}, Value: agent.DefaultDeadLetterMaxBytes},
		&cli.Int64Flag{Name: "dead-letter-max-count", Usage: "message cap of the dead-letter file", EnvVars: []string{"PROFILEMATE_DEAD_LETTER_MAX_COUNT"}, Value: agent.DefaultDeadLetterMaxCount},
		&cli.IntFlag{Name: "max-line-bytes", Usage: "longest socket line; longer ones are discarded and counted", EnvVars: []string{"PROFILEMATE_MAX_LINE_BYTES"}, Value: agent.DefaultMaxLine},
		&cli.IntFlag{Name: "max-connections", Usage: "open socket connections; more are closed at once and counted", EnvVars: []string{"PROFILEMATE_MAX_CONNECTIONS"}, Value: agent.DefaultMaxConns},
		&cli.Int64Flag{Name: "max-buffered-bytes", Usage: "bytes of incomplete socket lines held by all connections together; a line beyond it is discarded and counted", EnvVars: []string{"PROFILEMATE_MAX_BUFFERED_BYTES"}, Value: agent.DefaultMaxBuffered},
		&cli.BoolFlag{Name: "core-nats", Usage: "publish with core NATS, without JetStream acknowledgements (events can be lost)", EnvVars: []string{"PROFILEMATE_CORE_NATS"}},
		&cli.BoolFlag{Name: "create-stream", Usage: "create the PROFILEMATE stream when missing (normally the hub does)", EnvVars: []string{"PROFILEMATE_CREATE_STREAM"}},
		&cli.DurationFlag{Name: "flush-timeout", Usage: "how long to keep sending at exit before leaving the rest in the spool", EnvVars: []string{"PROFILEMATE_FLUSH_TIMEOUT"}, Value: 15 * time.Second},
		&cli.DurationFlag{Name: "gpu-interval", Usage: "NVML GPU sampling interval (0: off)", EnvVars: []string{"PROFILEMATE_GPU_INTERVAL"}, Value: time.Second},
		&cli.StringFlag{Name: "log-level", Usage: "debug, info, warn or error", EnvVars: []string{"PROFILEMATE_LOG_LEVEL"}, Value: "info"},
	)
}

var serveCommand = &cli.Command{
	Name:  "serve",
	Usage: "the host daemon: ingest every shim on this host and publish to NATS",
	Flags: append(pipelineFlags(),
		&cli.StringFlag{Name: "socket", Usage: "Unix socket the shims connect to", EnvVars: []string{"PROFILEMATE_SOCKET"}, Value: agent.DefaultSocket()},
		&cli.StringFlag{Name: "socket-group", Usage: "group owning the socket (when it exists)", EnvVars: []string{"PROFILEMATE_SOCKET_GROUP"}, Value: "profilemate"},
		&cli.StringFlag{Name: "session", Usage: "fixed session for every process (default: one per vLLM process tree)", EnvVars: []string{"PROFILEMATE_SESSION"}},
		&cli.DurationFlag{Name: "session-linger", Usage: "end a session this long after its last process left", EnvVars: []string{"PROFILEMATE_SESSION_LINGER"}, Value: 30 * time.Second},
		&cli.DurationFlag{Name: "instance-refresh", Usage: "refresh the registry entry of each multi-node instance with live processes here this often; an entry no agent refreshed for 3 periods counts as ended (keep it the same on every agent)", EnvVars: []string{"PROFILEMATE_INSTANCE_REFRESH"}, Value: agent.DefaultInstanceRefresh},
		&cli.DurationFlag{Name: "test-clock-skew", Hidden: true, Usage: "tests only: add this to the agent's clock readings in the hub clock measurement", EnvVars: []string{"PROFILEMATE_TEST_CLOCK_SKEW"}},
	),
	Action: func(c *cli.Context) error {
		cfg, err := agentConfig(c)
		if err != nil {
			return err
		}
		cfg.Socket = c.String("socket")
		if cfg.Socket == socketOff {
			return cliapp.Usage("--socket %s: that is the shims' setting for no agent (PROFILEMATE_SOCKET=off); the agent needs a socket path (default %s)", socketOff, agent.DefaultSocket())
		}
		cfg.SocketGroup = c.String("socket-group")
		cfg.Session = c.String("session")
		cfg.SessionLinger = c.Duration("session-linger")
		cfg.InstanceRefresh = c.Duration("instance-refresh")
		cfg.ClockSkew = c.Duration("test-clock-skew")
		cfg.Resume = true
		a, err := agent.New(cfg)
		if err != nil {
			return cli.Exit("pmagent: "+err.Error(), 1)
		}
		if err := a.Start(c.Context); err != nil {
			return cli.Exit("pmagent: "+err.Error(), 1)
		}
		startGPU(c, a)
		cmdLog(cfg).Info("serving", "socket", cfg.Socket, "host", a.Host(), "nats", redact(cfg.NATS.URL))
		sdnotify.Ready()
		<-c.Context.Done()
		sdnotify.Stopping()
		return shutdown(a, cmdLog(cfg), c.Duration("flush-timeout"))
	},
}

// agentConfig builds the agent configuration shared by run and serve.
func agentConfig(c *cli.Context) (agent.Config, error) {
	log, err := newLogger(c.String("log-level"))
	if err != nil {
		return agent.Config{}, err
	}
	nc := natsclient.FromCLI(c)
	natsOpts, err := nc.Options()
	if err != nil {
		return agent.Config{}, cli.Exit("pmagent: "+err.Error(), 2)
	}
	cfg := agent.Config{
		Host:     c.String("host"),
		SpoolDir: c.String("spool-dir"),
		SpoolMax: c.Int64("spool-max-bytes"),
		MemMax:   c.Int64("queue-max-bytes"),

		SpoolSync:          c.Duration("spool-sync"),
		DeadLetterMaxBytes: c.Int64("dead-letter-max-bytes"),
		DeadLetterMaxCount: c.Int64("dead-letter-max-count"),
		MaxLine:            c.Int("max-line-bytes"),
		MaxConns:           c.Int("max-connections"),
		MaxBuffered:        c.Int64("max-buffered-bytes"),
		Version:            c.App.Version,
		Logger:             log,
		NATS: agent.NATSConfig{
			URL: nc.URL, CoreNATS: c.Bool("core-nats"), CreateStream: c.Bool("create-stream"),
			Options: natsOpts,
		},
	}
	if cfg.SpoolMax <= 0 || cfg.MemMax <= 0 {
		return cfg, cli.Exit("pmagent: --spool-max-bytes and --queue-max-bytes must be positive", 2)
	}
	if cfg.SpoolSync <= 0 || cfg.DeadLetterMaxBytes <= 0 || cfg.DeadLetterMaxCount <= 0 {
		return cfg, cli.Exit("pmagent: --spool-sync, --dead-letter-max-bytes and --dead-letter-max-count must be positive", 2)
	}
	if cfg.MaxLine <= 0 || cfg.MaxConns <= 0 || cfg.MaxBuffered <= 0 {
		return cfg, cli.Exit("pmagent: --max-line-bytes, --max-connections and --max-buffered-bytes must be positive", 2)
	}
	return cfg, nil
}

// newLogger makes the logger of --log-level (debug, info, warn or error: text lines on stderr) and
// makes it slog's default too, so that parts logging through the default (internal/clock) follow
// the same level and format. Errors: an unknown level (exit code 2).
func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, cli.Exit(fmt.Sprintf("pmagent: --log-level %q: want debug, info, warn or error", level), 2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
	slog.SetDefault(log)
	return log, nil
}

// cmdLog is the logger of the command's own lines (the agent adds its component itself).
func cmdLog(cfg agent.Config) *slog.Logger { return cfg.Logger.With("component", "pmagent") }

// shutdown flushes what it can within timeout and reports what stays behind.
func shutdown(a *agent.Agent, log *slog.Logger, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	rep, err := a.Shutdown(ctx)
	args := []any{"published", rep.Published, "left_in_spool", rep.Spooled, "dropped", rep.Dropped, "shim_dropped", rep.ShimDrops}
	switch {
	case err != nil:
		log.Error("shutdown", append(args, "err", err)...)
	case rep.Spooled > 0 || rep.Dropped > 0:
		log.Warn("not everything reached the stream", args...)
	default:
		log.Info("all events delivered", args...)
	}
	return nil
}

// defaultSpoolDir: <state folder>/spool (internal/dirs: $STATE_DIRECTORY, /var/lib/profilemate
// for root, else the user's XDG state folder).
func defaultSpoolDir() string { return dirs.State("spool") }

// redact hides passwords in URLs for logs.
func redact(url string) string {
	if at := strings.LastIndex(url, "@"); at > 0 {
		if i := strings.Index(url, "://"); i >= 0 && i < at {
			return url[:i+3] + "***" + url[at:]
		}
	}
	return url
}

// startGPU starts NVML sampling unless --gpu-interval is 0; it stops with the command's context.
func startGPU(c *cli.Context, a *agent.Agent) {
	if iv := c.Duration("gpu-interval"); iv > 0 {
		a.StartGPU(c.Context, gpu.Config{Interval: iv})
	}
}
