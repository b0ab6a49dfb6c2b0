// Command pmagent is ProfileMate's per-host agent: it runs vLLM with the shim (`run`), serves every
// shim on the host (`serve`), and installs the shim into Python environments.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/profilemate/profilemate/internal/cliapp"
)

// version is set at build time (-ldflags "-X main.version=…").
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := cliapp.Run(ctx, newApp(), os.Args)
	stop()
	os.Exit(code)
}

// newApp is pmagent's command tree, prepared with the shared exit-code rule and --version
// (internal/cliapp); main runs it, tests run and inspect it.
func newApp() *cli.App {
	app := &cli.App{
		Name:  "pmagent",
		Usage: "profile every vLLM process on this host and ship the events to the hub",
		Commands: []*cli.Command{
			runCommand,
			serveCommand,
			installCommand,
			uninstallCommand,
			envCommand,
			statusCommand,
		},
	}
	cliapp.Prepare(app, version)
	return app
}
