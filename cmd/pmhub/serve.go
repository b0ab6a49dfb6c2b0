package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/internal/natsclient"
	"github.com/profilemate/profilemate/internal/sdnotify"
)

// HTTPHandlers lets other commands' files add routes (for example /metrics) to the serve
// command's HTTP listener; each is called with the running hub before the listener starts.
var HTTPHandlers []func(mux *http.ServeMux, h *hub.Server)

func serveCommand() *cli.Command {
	flags := []cli.Flag{
		dataFlag(),
		&cli.StringFlag{Name: "listen", Value: hub.DefaultListen, EnvVars: []string{"PROFILEMATE_HUB_LISTEN"}, Usage: "client address of the embedded NATS server (loopback unless changed)"},
	}
	flags = append(flags, natsclient.Flags("", "use this NATS cluster (URLs, comma separated) instead of the embedded server; the client flags below apply to it")...)
	flags = append(flags,
		&cli.StringFlag{Name: "server-auth-token", EnvVars: []string{"PROFILEMATE_HUB_SERVER_AUTH_TOKEN"}, Usage: "embedded NATS: clients must send this token"},
		&cli.StringFlag{Name: "server-user", EnvVars: []string{"PROFILEMATE_HUB_SERVER_USER"}, Usage: "embedded NATS: clients must log in as this user (with --server-password)"},
		&cli.StringFlag{Name: "server-password", EnvVars: []string{"PROFILEMATE_HUB_SERVER_PASSWORD"}, Usage: "embedded NATS: the password of --server-user"},
		&cli.StringSliceFlag{Name: "server-nkey", EnvVars: []string{"PROFILEMATE_HUB_SERVER_NKEYS"}, Usage: "embedded NATS: public user nkey (U…) allowed to connect; repeat, or comma separated in the variable"},
		&cli.StringFlag{Name: "server-tls-cert", EnvVars: []string{"PROFILEMATE_HUB_SERVER_TLS_CERT"}, Usage: "embedded NATS: PEM server certificate (clients must use TLS)"},
		&cli.StringFlag{Name: "server-tls-key", EnvVars: []string{"PROFILEMATE_HUB_SERVER_TLS_KEY"}, Usage: "embedded NATS: PEM server key"},
		&cli.StringFlag{Name: "server-tls-client-ca", EnvVars: []string{"PROFILEMATE_HUB_SERVER_TLS_CLIENT_CA"}, Usage: "embedded NATS: clients must present a certificate signed by this PEM CA"},
		&cli.StringFlag{Name: "http", Value: hub.DefaultHTTP, EnvVars: []string{"PROFILEMATE_HUB_HTTP"}, Usage: "HTTP address of /metrics, /healthz and /api (empty: off)"},
		&cli.StringFlag{Name: "http-tls-cert", EnvVars: []string{"PROFILEMATE_HUB_HTTP_TLS_CERT"}, Usage: "PEM certificate: serve HTTPS"},
		&cli.StringFlag{Name: "http-tls-key", EnvVars: []string{"PROFILEMATE_HUB_HTTP_TLS_KEY"}, Usage: "PEM key of --http-tls-cert"},
		&cli.StringFlag{Name: "http-token", EnvVars: []string{"PROFILEMATE_HUB_HTTP_TOKEN"}, Usage: "HTTP requests must send Authorization: Bearer <token>"},
		&cli.StringFlag{Name: "http-user", EnvVars: []string{"PROFILEMATE_HUB_HTTP_USER"}, Usage: "HTTP basic authentication user (with --http-password)"},
		&cli.StringFlag{Name: "http-password", EnvVars: []string{"PROFILEMATE_HUB_HTTP_PASSWORD"}, Usage: "HTTP basic authentication password"},
		&cli.DurationFlag{Name: "session-idle", Value: hub.DefaultSessionIdle, EnvVars: []string{"PROFILEMATE_SESSION_IDLE"}, Usage: "end a session after this long without messages (> 0)"},
		&cli.Int64Flag{Name: "stream-max-bytes", Value: hub.DefaultStreamMaxBytes, EnvVars: []string{"PROFILEMATE_STREAM_MAX_BYTES"}, Usage: "JetStream stream size limit in bytes (> 0)"},
		&cli.DurationFlag{Name: "stream-max-age", Value: hub.DefaultStreamMaxAge, EnvVars: []string{"PROFILEMATE_STREAM_MAX_AGE"}, Usage: "JetStream stream age limit (> 0)"},
		&cli.Int64Flag{Name: "session-max-bytes", Value: hub.DefaultSessionMaxBytes, EnvVars: []string{"PROFILEMATE_SESSION_MAX_BYTES"}, Usage: "CSV bytes per session (> 0); rows beyond are counted as dropped (-1: no cap)"},
		&cli.Int64Flag{Name: "dead-letter-max-count", Value: hub.DefaultDeadLetterMaxCount, EnvVars: []string{"PROFILEMATE_HUB_DEAD_LETTER_MAX_COUNT"}, Usage: "messages kept in <data>/deadletter/ (> 0); beyond, they are only counted"},
		&cli.Int64Flag{Name: "dead-letter-max-bytes", Value: hub.DefaultDeadLetterMaxBytes, EnvVars: []string{"PROFILEMATE_HUB_DEAD_LETTER_MAX_BYTES"}, Usage: "bytes kept in <data>/deadletter/ (> 0); beyond, messages are only counted"},
		&cli.DurationFlag{Name: "retention", Value: hub.DefaultRetention, EnvVars: []string{"PROFILEMATE_RETENTION"}, Usage: "remove ended sessions older than this (> 0; -1s: keep forever)"},
		&cli.IntFlag{Name: "stream-replicas", Value: 1, EnvVars: []string{"PROFILEMATE_STREAM_REPLICAS"}, Usage: "replicas of the PROFILEMATE stream and the shared buckets when this hub creates them (3 on a 3-node cluster; an existing stream keeps its own)"},
		&cli.StringFlag{Name: "mode", Value: "auto", EnvVars: []string{"PROFILEMATE_HUB_MODE"}, Usage: "single (one hub reads the whole stream), shared (hubs share sessions through leases, docs/SCALING.md) or auto (shared with --nats)"},
		&cli.StringFlag{Name: "hub-id", EnvVars: []string{"PROFILEMATE_HUB_ID"}, Usage: "this hub's name in leases and the session index (shared mode; default: host name and a random suffix)"},
		&cli.DurationFlag{Name: "lease-ttl", Value: hub.DefaultLeaseTTL, EnvVars: []string{"PROFILEMATE_LEASE_TTL"}, Usage: "a session lease lapses this long after its last renewal (shared mode; renewed every third; at least 1s)"},
		&cli.DurationFlag{Name: "checkpoint-interval", Value: hub.DefaultCheckpointEvery, EnvVars: []string{"PROFILEMATE_CHECKPOINT_INTERVAL"}, Usage: "how often an owned session is checkpointed to the Object Store (shared mode; > 0)"},
		&cli.DurationFlag{Name: "cache-max-age", Value: hub.DefaultCacheMaxAge, EnvVars: []string{"PROFILEMATE_CACHE_MAX_AGE"}, Usage: "remove a session copy fetched into <data>/cache/ once unused this long (shared mode; > 0; -1s: no age limit)"},
		&cli.Int64Flag{Name: "cache-max-bytes", Value: hub.DefaultCacheMaxBytes, EnvVars: []string{"PROFILEMATE_CACHE_MAX_BYTES"}, Usage: "bytes kept in <data>/cache/; the least recently used copies go first (shared mode; > 0; -1: no size limit)"},
	)
	flags = append(flags, rotateFlags()...)
	cmd := &cli.Command{
		Name:   "serve",
		Usage:  "run the hub: embedded NATS + JetStream (or --nats), merge sessions into --data",
		Flags:  flags,
		Action: serve,
	}
	cmd.Flags = append(cmd.Flags, pluginServeFlags()...)
	return cmd
}

// serveLimits checks the limit flags: each must be positive, except the "none" value that
// --session-max-bytes (-1) and --retention (-1s, a duration) document. Zero is refused too: it
// would silently mean the default. An error names the none value as the flag parses it.
func serveLimits(c *cli.Context) error {
	pos := func(name string, ok bool, v any, none string) error {
		if ok {
			return nil
		}
		if none != "" {
			return fmt.Errorf("--%s %v: must be positive, or %s for none", name, v, none)
		}
		return fmt.Errorf("--%s %v: must be positive", name, v)
	}
	if n := c.Int("stream-replicas"); n < 1 || n > 5 {
		return fmt.Errorf("--stream-replicas %d: want 1 to 5", n)
	}
	if c.Duration("lease-ttl") < time.Second {
		return fmt.Errorf("--lease-ttl %s: at least 1s", c.Duration("lease-ttl"))
	}
	if c.Duration("checkpoint-interval") <= 0 {
		return fmt.Errorf("--checkpoint-interval %s: must be positive", c.Duration("checkpoint-interval"))
	}
	idle, age, ret := c.Duration("session-idle"), c.Duration("stream-max-age"), c.Duration("retention")
	sb, smb := c.Int64("stream-max-bytes"), c.Int64("session-max-bytes")
	dlc, dlb := c.Int64("dead-letter-max-count"), c.Int64("dead-letter-max-bytes")
	for _, err := range []error{
		pos("session-idle", idle > 0, idle, ""),
		pos("stream-max-age", age > 0, age, ""),
		pos("stream-max-bytes", sb > 0, sb, ""),
		pos("session-max-bytes", smb > 0 || smb == -1, smb, "-1"),
		pos("retention", ret > 0 || ret == -time.Second, ret, "-1s"),
		pos("cache-max-age", c.Duration("cache-max-age") > 0 || c.Duration("cache-max-age") == -time.Second, c.Duration("cache-max-age"), "-1s"),
		pos("cache-max-bytes", c.Int64("cache-max-bytes") > 0 || c.Int64("cache-max-bytes") == -1, c.Int64("cache-max-bytes"), "-1"),
		pos("dead-letter-max-count", dlc > 0, dlc, ""),
		pos("dead-letter-max-bytes", dlb > 0, dlb, ""),
		pos("plugin-timeout", c.Duration("plugin-timeout") > 0, c.Duration("plugin-timeout"), ""),
	} {
		if err != nil {
			return err
		}
	}
	return nil
}

func serve(c *cli.Context) error {
	exit := func(err error) error { return cli.Exit("pmhub serve: "+err.Error(), 2) }
	// A stray argument is most often a data folder given without --data: never start on the default.
	if c.NArg() > 0 {
		return exit(fmt.Errorf("takes no arguments, got %q (the data folder is --data)", c.Args().Slice()))
	}
	if err := serveLimits(c); err != nil {
		return exit(err)
	}
	if err := rotateLimits(c); err != nil {
		return exit(err)
	}
	cfg := hub.Config{
		DataDir: c.String("data"), Listen: c.String("listen"),
		SessionIdle: c.Duration("session-idle"), StreamMaxBytes: c.Int64("stream-max-bytes"),
		StreamMaxAge: c.Duration("stream-max-age"), SessionMaxBytes: c.Int64("session-max-bytes"),
		Retention: c.Duration("retention"), DeadLetterMaxCount: c.Int64("dead-letter-max-count"),
		DeadLetterMaxBytes: c.Int64("dead-letter-max-bytes"),
		StreamReplicas:     c.Int("stream-replicas"), HubID: c.String("hub-id"), LeaseTTL: c.Duration("lease-ttl"),
		CheckpointEvery: c.Duration("checkpoint-interval"),
		CacheMaxAge:     c.Duration("cache-max-age"), CacheMaxBytes: c.Int64("cache-max-bytes"),
		RotateEvery: c.Duration("rotate-every"), RotateBytes: c.Int64("rotate-bytes"),
		SegmentsMaxAge: c.Duration("segments-max-age"), SegmentsMaxBytes: c.Int64("segments-max-bytes"),
		Server: hub.ServerSecurity{
			Token: c.String("server-auth-token"), User: c.String("server-user"), Password: c.String("server-password"),
			NKeys: c.StringSlice("server-nkey"), TLSCert: c.String("server-tls-cert"), TLSKey: c.String("server-tls-key"),
			TLSClientCA: c.String("server-tls-client-ca"),
		},
	}
	client := natsclient.FromCLI(c)
	switch mode := c.String("mode"); mode {
	case "auto":
		cfg.Shared = client.URL != ""
	case "shared", "single":
		cfg.Shared = mode == "shared"
	default:
		return exit(fmt.Errorf("--mode %q: want single, shared or auto", mode))
	}
	if client.URL != "" {
		opts, err := client.Options()
		if err != nil {
			return exit(err)
		}
		cfg.NATSURL, cfg.NATSOptions = client.URL, opts
		for _, f := range c.Command.Flags {
			if name := f.Names()[0]; strings.HasPrefix(name, "server-") && c.IsSet(name) {
				return exit(fmt.Errorf("--%s configures the embedded server, which --nats replaces", name))
			}
		}
	} else if client.HasAuthOrTLS() {
		return exit(fmt.Errorf("the NATS client flags (--creds, --nkey, --user, --token, --tls-*) apply to --nats only; the embedded server has --server-*"))
	}
	if err := cfg.Server.Validate(); err != nil {
		return exit(err)
	}
	web := hub.HTTPConfig{
		Addr: c.String("http"), TLSCert: c.String("http-tls-cert"), TLSKey: c.String("http-tls-key"),
		Token: c.String("http-token"), User: c.String("http-user"), Password: c.String("http-password"),
	}
	if err := web.Validate(); err != nil {
		return exit(err)
	}
	// Everything the command line names is checked before anything starts: addresses, files, the
	// HTTP listener bound (an address in use fails here, not after the hub is up).
	if cfg.NATSURL == "" {
		if err := hub.CheckAddr("--listen", cfg.Listen); err != nil {
			return exit(err)
		}
		if err := listenFree("--listen", cfg.Listen); err != nil {
			return err // exit code 1: the command line was right
		}
	}
	for _, f := range []string{"server-tls-cert", "server-tls-key", "server-tls-client-ca", "http-tls-cert", "http-tls-key", "plugins-allow"} {
		if p := c.String(f); p != "" {
			if _, err := os.ReadFile(p); err != nil {
				return exit(fmt.Errorf("--%s: %w", f, err))
			}
		}
	}
	allow, err := pluginAllow(c)
	if err != nil {
		return exit(fmt.Errorf("--plugins-allow: %w", err))
	}
	var srv *hub.HTTPServer
	if web.Addr != "" {
		if err := hub.CheckAddr("--http", web.Addr); err != nil {
			return exit(err)
		}
		if srv, err = hub.BindHTTP(web); err != nil {
			return fmt.Errorf("--http: %w", err)
		}
		defer srv.Close()
	}
	metrics := hub.NewMetrics()
	cfg.Observe = metrics.Observe
	h, err := hub.New(cfg)
	if err != nil {
		return err
	}
	metrics.Attach(h)
	ctx := c.Context
	if err := h.Start(ctx); err != nil {
		return err
	}
	defer h.Close()
	if cfg.Shared && c.Bool("plugins") {
		// Each plugin's durable consumer reads every session of the stream: on several shared hubs
		// they would split its messages and write derived rows into folders their hub does not own.
		slog.Warn("profiler plugins are not shared-mode aware: run them on one hub only (--plugins=false on the others)",
			"component", "pmhub", "hub", cfg.HubID)
	}
	stopPlugins, err := startPlugins(c, h, allow)
	if err != nil {
		return err
	}
	defer stopPlugins()
	if srv != nil {
		if host, _, err := net.SplitHostPort(web.Addr); err == nil {
			for _, w := range hub.ExposureWarnings("HTTP", host, web.HasAuth(), web.TLSCert != "") {
				slog.Warn(w, "component", "pmhub", "http", web.Addr)
			}
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", metrics.Handler())
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
			hl := h.Health(r.Context())
			w.Header().Set("Content-Type", "application/json")
			if !hl.OK {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
			_ = json.NewEncoder(w).Encode(hl)
		})
		mux.HandleFunc("/api/sessions", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, h.Sessions()) })
		mux.HandleFunc("/api/counters", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, h.Counters()) })
		for _, add := range HTTPHandlers {
			add(mux, h)
		}
		srv.Serve(mux)
		fmt.Fprintf(c.App.Writer, "pmhub: http on %s\n", srv.Addr())
	}
	// The line agents and scripts look for.
	fmt.Fprintf(c.App.Writer, "pmhub: agents connect to %s\n", h.ClientURL())
	sdnotify.Ready()
	defer sdnotify.Stopping()
	return h.Run(ctx)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// listenFree binds addr and closes it at once, so that an address in use fails before the embedded
// NATS server and the data folder are made (nats-server reports it only once it starts). Port 0
// or -1 (any free port) always passes. Errors: "<flag> <addr>: " and the bind error.
func listenFree(flag, addr string) error {
	if _, port, _ := net.SplitHostPort(addr); port == "0" || port == "-1" {
		return nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s %s: %w", flag, addr, err)
	}
	return l.Close()
}
