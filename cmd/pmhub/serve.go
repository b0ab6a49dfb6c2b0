package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/urfave/cli/v2"

	"github.com/profilemate/profilemate/hub"
)

// HTTPHandlers lets other commands' files add routes (for example /metrics) to the serve
// command's HTTP listener; each is called with the running hub before the listener starts.
var HTTPHandlers []func(mux *http.ServeMux, h *hub.Server)

func serveCommand() *cli.Command {
	cmd := &cli.Command{
		Name:  "serve",
		Usage: "run the hub: embedded NATS + JetStream (or --nats), merge sessions into --data",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "data", Value: "/var/lib/profilemate/hub", EnvVars: []string{"PROFILEMATE_HUB_DATA"}, Usage: "hub data folder (sessions/, jetstream/, deadletter/)"},
			&cli.StringFlag{Name: "listen", Value: hub.DefaultListen, EnvVars: []string{"PROFILEMATE_HUB_LISTEN"}, Usage: "client address of the embedded NATS server (loopback unless changed)"},
			&cli.StringFlag{Name: "nats", EnvVars: []string{"PROFILEMATE_NATS"}, Usage: "use this NATS cluster instead of the embedded server"},
			&cli.StringFlag{Name: "tls-cert", EnvVars: []string{"PROFILEMATE_NATS_TLS_CERT"}, Usage: "client certificate for --nats"},
			&cli.StringFlag{Name: "tls-key", EnvVars: []string{"PROFILEMATE_NATS_TLS_KEY"}, Usage: "client key for --nats"},
			&cli.StringFlag{Name: "tls-ca", EnvVars: []string{"PROFILEMATE_NATS_TLS_CA"}, Usage: "CA bundle to verify --nats"},
			&cli.StringFlag{Name: "creds", EnvVars: []string{"PROFILEMATE_NATS_CREDS"}, Usage: "NATS credentials file for --nats"},
			&cli.StringFlag{Name: "user", EnvVars: []string{"PROFILEMATE_NATS_USER"}, Usage: "NATS user for --nats"},
			&cli.StringFlag{Name: "password", EnvVars: []string{"PROFILEMATE_NATS_PASSWORD"}, Usage: "NATS password for --nats"},
			&cli.StringFlag{Name: "http", Value: "127.0.0.1:9464", EnvVars: []string{"PROFILEMATE_HUB_HTTP"}, Usage: "HTTP status address (empty: off)"},
			&cli.DurationFlag{Name: "session-idle", Value: hub.DefaultSessionIdle, EnvVars: []string{"PROFILEMATE_SESSION_IDLE"}, Usage: "end a session after this long without messages"},
			&cli.Int64Flag{Name: "stream-max-bytes", Value: hub.DefaultStreamMaxBytes, EnvVars: []string{"PROFILEMATE_STREAM_MAX_BYTES"}, Usage: "JetStream stream size limit"},
			&cli.DurationFlag{Name: "stream-max-age", Value: hub.DefaultStreamMaxAge, EnvVars: []string{"PROFILEMATE_STREAM_MAX_AGE"}, Usage: "JetStream stream age limit"},
			&cli.Int64Flag{Name: "session-max-bytes", Value: hub.DefaultSessionMaxBytes, EnvVars: []string{"PROFILEMATE_SESSION_MAX_BYTES"}, Usage: "CSV bytes per session; rows beyond are counted as dropped (-1: no cap)"},
			&cli.DurationFlag{Name: "retention", Value: hub.DefaultRetention, EnvVars: []string{"PROFILEMATE_RETENTION"}, Usage: "remove ended sessions older than this (-1s: keep forever)"},
		},
		Action: serve,
	}
	cmd.Flags = append(cmd.Flags, pluginServeFlags()...)
	return cmd
}

func serve(c *cli.Context) error {
	cfg := hub.Config{
		DataDir: c.String("data"), Listen: c.String("listen"), NATSURL: c.String("nats"),
		SessionIdle: c.Duration("session-idle"), StreamMaxBytes: c.Int64("stream-max-bytes"),
		StreamMaxAge: c.Duration("stream-max-age"), SessionMaxBytes: c.Int64("session-max-bytes"),
		Retention: c.Duration("retention"),
	}
	if cfg.NATSURL != "" {
		if c.String("tls-cert") != "" || c.String("tls-key") != "" {
			cfg.NATSOptions = append(cfg.NATSOptions, nats.ClientCert(c.String("tls-cert"), c.String("tls-key")))
		}
		if ca := c.String("tls-ca"); ca != "" {
			cfg.NATSOptions = append(cfg.NATSOptions, nats.RootCAs(ca))
		}
		if cr := c.String("creds"); cr != "" {
			cfg.NATSOptions = append(cfg.NATSOptions, nats.UserCredentials(cr))
		}
		if u := c.String("user"); u != "" {
			cfg.NATSOptions = append(cfg.NATSOptions, nats.UserInfo(u, c.String("password")))
		}
	} else if c.IsSet("tls-cert") || c.IsSet("creds") || c.IsSet("user") {
		return cli.Exit("pmhub serve: --tls-*, --creds and --user apply to --nats only", 2)
	}
	metrics := hub.NewMetrics()
	cfg.Observe = metrics.Observe
	h, err := hub.New(cfg)
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	metrics.Attach(h)
	ctx := c.Context
	if err := h.Start(ctx); err != nil {
		return err
	}
	defer h.Close()
	stopPlugins, err := startPlugins(c, h)
	if err != nil {
		return err
	}
	defer stopPlugins()
	// The line agents and scripts look for.
	fmt.Fprintf(c.App.Writer, "pmhub: agents connect to %s\n", h.ClientURL())
	if addr := c.String("http"); addr != "" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("pmhub serve: http: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", metrics.Handler())
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
		mux.HandleFunc("/api/sessions", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, h.Sessions()) })
		mux.HandleFunc("/api/counters", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, h.Counters()) })
		for _, add := range HTTPHandlers {
			add(mux, h)
		}
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				fmt.Fprintln(c.App.ErrWriter, "pmhub: http:", err)
			}
		}()
		defer srv.Close()
	}
	return h.Run(ctx)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
