package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"

	"github.com/urfave/cli/v2"

	"github.com/profilemate/profilemate/agent/install"
	"github.com/profilemate/profilemate/internal/cliapp"
	"github.com/profilemate/profilemate/shim"
)

// hostEmbeddedShim is the shim this pmagent carries; install copies it, env unpacks it.
func hostEmbeddedShim() install.Source { return install.Source{FS: shim.FS, Version: shim.Version} }

var hostPythonFlag = &cli.StringFlag{
	Name:     "python",
	Usage:    "the environment's Python interpreter (e.g. /opt/vllm/.venv/bin/python)",
	EnvVars:  []string{"PROFILEMATE_PYTHON"},
	Required: true,
}

var installCommand = &cli.Command{
	Name:  "install",
	Usage: "copy the shim into a Python environment's site-packages (.pth + vllm.general_plugins entry point)",
	Description: "Every process of that Python (systemd units, containers, Ray workers) then loads ProfileMate\n" +
		"when it imports vLLM. The copy is self-contained: upgrading or removing pmagent never breaks that\n" +
		"Python. Running it again upgrades or repairs; `pmagent uninstall` removes exactly what it added.",
	Flags: []cli.Flag{hostPythonFlag, &cli.BoolFlag{Name: "json", Usage: "print the manifest as JSON", EnvVars: []string{"PROFILEMATE_JSON"}}},
	Action: func(c *cli.Context) error {
		if err := checkPython(c.String("python")); err != nil {
			return err
		}
		m, err := install.InstallFrom(c.String("python"), hostEmbeddedShim())
		if err != nil {
			return hostInstallExit(err)
		}
		if c.Bool("json") {
			return hostPrintJSON(m)
		}
		if m.Replaced != "" {
			fmt.Printf("replaced %s\n", m.Replaced)
		}
		fmt.Printf("installed profilemate %s into %s (python %s, %d files)\n", m.Version, m.SitePackages, m.PyVersion, len(m.Files))
		return nil
	},
}

// checkPython refuses a --python that names no executable (a path that is not there, a name not
// on PATH) as a usage error, exit code 2, before anything runs.
func checkPython(python string) error {
	if _, err := exec.LookPath(python); err != nil {
		return cliapp.Usage("--python %s: %w", python, err)
	}
	return nil
}

// hostInstallExit turns install errors into user-facing exits: refusing foreign files is exit 2.
func hostInstallExit(err error) error {
	if errors.Is(err, install.ErrForeign) {
		return cli.Exit(fmt.Sprintf("pmagent: %v (nothing changed)", err), 2)
	}
	return cli.Exit("pmagent: "+err.Error(), 1)
}

func hostPrintJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
