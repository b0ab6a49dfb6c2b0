// Command straggler is ProfileMate's in-tree straggler profiler plugin: the slowest worker rank,
// by how much (ratio to the median rank), how persistently (share of steps) and whether a whole
// host is slow.
// It runs analysis.Straggler (docs/analysis.md) on the session's events when the
// session closes and writes the derived table and findings rows.
//
//	go build -o straggler ./plugins/straggler && pmhub plugins add ./straggler
package main

import (
	"github.com/profilemate/profilemate/analysis"
	"github.com/profilemate/profilemate/analysis/sdkplugin"
	"github.com/profilemate/profilemate/plugins/sdk"
)

func main() { sdk.Serve(sdkplugin.MustNew(analysis.StragglerName)) }
