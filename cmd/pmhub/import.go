package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/profilemate/profilemate/hub"
)

func importCommand() *cli.Command {
	return &cli.Command{
		Name:      "import",
		Usage:     "merge the standalone folders of one vLLM instance (one session_<id> folder per host, written without an agent) into one session of the hub's data folder",
		ArgsUsage: "FOLDER...",
		Description: "Each FOLDER is a session_<id> folder the shim wrote on one host with no agent (PROFILEMATE_SOCKET=off).\n" +
			"Folders of one multi-node instance (the same --master-addr/--master-port, or --data-parallel-address/--data-parallel-rpc-port)\n" +
			"become one session with every process, its instance key and node rank; folders of different instances, or\n" +
			"folders that share a global rank, are refused. The session's ts_aligned_ns is each process's own clock.",
		Flags: []cli.Flag{dataFlag(),
			&cli.StringFlag{Name: "session", Usage: "id of the new session (default: a new id from the earliest process start)", EnvVars: []string{"PROFILEMATE_IMPORT_SESSION"}},
			&cli.BoolFlag{Name: "json", Usage: "print the new session's metadata as JSON", EnvVars: []string{"PROFILEMATE_JSON"}},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return cli.Exit("pmhub import: give one or more standalone session folders (session_<id>/, one per host)", 2)
			}
			m, err := hub.Import(c.String("data"), c.Args().Slice(), c.String("session"))
			if errors.Is(err, hub.ErrImport) {
				return cli.Exit("pmhub import: "+strings.TrimPrefix(err.Error(), hub.ErrImport.Error()+": "), 2)
			}
			if err != nil {
				return cli.Exit("pmhub import: "+err.Error(), 1)
			}
			if c.Bool("json") {
				return json.NewEncoder(c.App.Writer).Encode(m)
			}
			var rows int64
			for _, n := range m.Rows {
				rows += n
			}
			fmt.Fprintf(c.App.Writer, "session %s: %d processes on %s, %d rows", m.Session, len(m.Processes), strings.Join(sortedKeys(m.Hosts), ", "), rows)
			if len(m.Instances) > 0 {
				fmt.Fprintf(c.App.Writer, ", instance %s", strings.Join(m.Instances, ", "))
			}
			fmt.Fprintf(c.App.Writer, "\nlook at it with: pmhub show --data %s %s\n", c.String("data"), m.Session)
			return nil
		},
	}
}
