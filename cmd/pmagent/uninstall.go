package main

import (
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/profilemate/profilemate/agent/install"
)

var uninstallCommand = &cli.Command{
	Name:  "uninstall",
	Usage: "remove what `pmagent install` put into a Python environment",
	Flags: []cli.Flag{hostPythonFlag, &cli.BoolFlag{Name: "json", Usage: "print what was removed as JSON", EnvVars: []string{"PROFILEMATE_JSON"}}},
	Action: func(c *cli.Context) error {
		if err := checkPython(c.String("python")); err != nil {
			return err
		}
		m, err := install.Uninstall(c.String("python"))
		if errors.Is(err, install.ErrNotInstalled) {
			return cli.Exit("pmagent: "+err.Error(), 3)
		}
		if err != nil {
			return hostInstallExit(err)
		}
		if c.Bool("json") {
			return hostPrintJSON(m)
		}
		fmt.Printf("removed profilemate %s from %s (%d files)\n", m.Version, m.SitePackages, len(m.Files))
		return nil
	},
}
