package main

import (
	"fmt"
	"os/exec"

	"github.com/urfave/cli/v2"

	"github.com/profilemate/profilemate/agent/install"
	"github.com/profilemate/profilemate/shim"
)

var envCommand = &cli.Command{
	Name:  "env",
	Usage: "print the variables that wire the shim into an existing launch script or systemd unit",
	Description: "sh:      eval \"$(pmagent env)\" before starting vLLM\n" +
		"systemd: pmagent env --format systemd > /etc/systemd/system/vllm.service.d/profilemate.conf\n" +
		"         (under a [Service] line)",
	Flags: []cli.Flag{
		hostSocketFlag(),
		&cli.StringFlag{Name: "session", Usage: "fixed session name for every process started with these variables", EnvVars: []string{"PROFILEMATE_SESSION"}},
		&cli.StringFlag{Name: "format", Value: "sh", Usage: "sh, systemd or json", EnvVars: []string{"PROFILEMATE_ENV_FORMAT"}},
		&cli.StringFlag{Name: "cache", Usage: "folder for the unpacked shim", EnvVars: []string{"PROFILEMATE_CACHE"}, Value: install.DefaultCacheRoot()},
		shimPythonFlag(),
	},
	Action: func(c *cli.Context) error {
		dir, err := install.ShimCache(c.String("cache"), shim.Version, shim.Unpack)
		if err != nil {
			return cli.Exit("pmagent: "+err.Error(), 1)
		}
		prepareByteCode(dir, install.Interpreters(c.StringSlice("python"), "", exec.LookPath))
		out, err := install.Format(install.Vars(install.EnvOptions{
			ShimDir: dir, Socket: c.String("socket"), Session: c.String("session"),
		}), c.String("format"))
		if err != nil {
			return cli.Exit("pmagent: "+err.Error(), 2)
		}
		fmt.Print(out)
		return nil
	},
}
