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

	"github.com/nats-io/nats.go"
	"github.com/urfave/cli/v2"

	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/internal/cliapp"
	"github.com/profilemate/profilemate/internal/dirs"
	"github.com/profilemate/profilemate/internal/natsclient"
)

// version is set at build time (-ldflags "-X main.version=…").
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
	code := cliapp.Run(ctx, newApp(), os.Args)
	stop()
	os.Exit(code)
}

// newApp is pmhub's command tree, prepared with the shared exit-code rule and --version
// (internal/cliapp); main runs it, tests run and inspect it.
func newApp() *cli.App {
	app := &cli.App{
		Name:  "pmhub",
		Usage: "merge ProfileMate events from every host into cluster-wide sessions",
		Commands: []*cli.Command{
			serveCommand(),
			demoCommand(),
			tailCommand(),
			withClusterFlags(sessionsCommand()),
			withClusterFlags(showCommand()),
			importCommand(),
			pluginsCommand(),
			profilersCommand(),
			withClusterFlags(reportCommand()),
			withClusterFlags(exportCommand()),
			analysisPluginCommand(),
		},
	}
	cliapp.Prepare(app, version)
	return app
}

// defaultData is every pmhub command's data folder: <state folder>/hub (internal/dirs:
// $STATE_DIRECTORY, /var/lib/profilemate as root, else the user's XDG state folder).
func defaultData() string { return dirs.State("hub") }

// dataFlag is --data for every command that reads or writes the hub's data folder.
func dataFlag() cli.Flag {
	return &cli.StringFlag{Name: "data", Value: defaultData(), EnvVars: []string{"PROFILEMATE_HUB_DATA"},
		Usage: "the hub's data folder (sessions/, jetstream/, deadletter/)"}
}

// hubNATSFlags are the shared NATS client flags (internal/natsclient) of the pmhub commands that
// talk to a running hub: --nats defaults to the embedded server's default address.
func hubNATSFlags() []cli.Flag {
	return natsclient.Flags("nats://"+hub.DefaultListen, "NATS URL of the hub or the cluster")
}

// connectNATS connects with the hubNATSFlags of c, named name; errors are cli exit errors naming
// the command (2: flags that do not go together, 1: no connection).
func connectNATS(c *cli.Context, name string) (*nats.Conn, error) {
	client := natsclient.FromCLI(c)
	opts, err := client.Options()
	if err != nil {
		return nil, cli.Exit(name+": "+err.Error(), 2)
	}
	nc, err := nats.Connect(client.URL, append(opts, nats.Name(name))...)
	if err != nil {
		return nil, cli.Exit(fmt.Sprintf("%s: connect %s: %v", name, client.URL, err), 1)
	}
	return nc, nil
}
