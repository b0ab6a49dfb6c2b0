// Command pmhub is ProfileMate's hub: it runs or joins the NATS JetStream stream the agents publish
// to and merges every host's events into one folder per session.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"
)

func main() {
	app := &cli.App{
		Name:  "pmhub",
		Usage: "merge ProfileMate events from every host into cluster-wide sessions",
		Commands: []*cli.Command{
			serveCommand(),
			demoCommand(),
			tailCommand(),
			sessionsCommand(),
			showCommand(),
			reportCommand(),
			exportCommand(),
		},
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if err := app.RunContext(ctx, os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "pmhub:", err)
		os.Exit(1)
	}
}
