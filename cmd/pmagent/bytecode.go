package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/profilemate/profilemate/agent/install"
)

// shimPythonFlag names the interpreters `run` and `env` compile the shim's byte-code for.
func shimPythonFlag() *cli.StringSliceFlag {
	return &cli.StringSliceFlag{
		Name: "python",
		Usage: "Python interpreter(s) the shim will run under; its byte-code is compiled for them into the shim cache " +
			"(default: run: the command's own python or its #! interpreter, else python3 on PATH; env: python3 on PATH)",
		EnvVars: []string{"PROFILEMATE_PYTHON"},
	}
}

// prepareByteCode compiles the unpacked shim for pythons, so processes with
// PYTHONDONTWRITEBYTECODE=1 do not compile it at every start. Failing only costs start-up time:
// it is reported on stderr and the command goes on.
func prepareByteCode(dir string, pythons []string) {
	if len(pythons) == 0 {
		return
	}
	if err := install.CompileTree(dir, pythons); err != nil {
		fmt.Fprintf(os.Stderr, "pmagent: shim byte-code not prepared (start-up stays slower): %v\n", err)
	}
}
