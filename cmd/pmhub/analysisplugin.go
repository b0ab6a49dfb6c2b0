package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/profilemate/profilemate/analysis"
	"github.com/profilemate/profilemate/analysis/sdkplugin"
	"github.com/profilemate/profilemate/plugins/sdk"
)

// analysisPluginCommand is the hidden `pmhub analysis-plugin NAME`: pmhub itself serving one of
// the in-tree analyses (straggler, moe_balance, kv_pressure, cudagraph_coverage) as a profiler
// plugin over go-plugin, the same code as the binaries of plugins/<name>. `pmhub demo` hot-adds
// the four through two-line scripts that exec it, so the demo needs no other binaries.
func analysisPluginCommand() *cli.Command {
	return &cli.Command{
		Name:      "analysis-plugin",
		Hidden:    true,
		Usage:     "serve an in-tree analysis as a profiler plugin (started by the plugin host, not by hand)",
		ArgsUsage: "NAME",
		Action: func(c *cli.Context) error {
			p, err := sdkplugin.New(c.Args().First())
			if err != nil {
				var names []string
				for _, a := range analysis.All() {
					names = append(names, a.Name)
				}
				return cli.Exit(fmt.Sprintf("pmhub analysis-plugin: %v (one of %v)", err, names), 2)
			}
			sdk.Serve(p)
			return nil
		},
	}
}
