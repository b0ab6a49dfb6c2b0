// Command pmagent is ProfileMate's per-host agent: it runs vLLM with the shim (`run`), serves every
// shim on the host (`serve`), and installs the shim into Python environments.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"
)

// version is set at build time (-ldflags "-X main.version=…").
var version = "dev"

func main() {
	app := &cli.App{
		Name:    "pmagent",
		Version: version,
		Usage:   "profile every vLLM process on this host and ship the events to the hub",
		Commands: []*cli.Command{
			runCommand,
			serveCommand,
			installCommand,
			uninstallCommand,
			envCommand,
			statusCommand,
		},
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := app.RunContext(ctx, os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "pmagent:", err)
		os.Exit(1)
	}
}
