// Command cudagraph_coverage is ProfileMate's in-tree cudagraph_coverage profiler plugin: share of
// steps and tokens run eager or padded, padding waste, and the capture sizes that would cover the
// eager steps.
// It runs analysis.CUDAGraphCoverage (docs/analysis.md) on the session's events when the
// session closes and writes the derived table and findings rows.
//
//	go build -o cudagraph_coverage ./plugins/cudagraph_coverage && pmhub plugins add ./cudagraph_coverage
package main

import (
	"github.com/profilemate/profilemate/analysis"
	"github.com/profilemate/profilemate/analysis/sdkplugin"
	"github.com/profilemate/profilemate/plugins/sdk"
)

func main() { sdk.Serve(sdkplugin.MustNew(analysis.CUDAGraphCoverageName)) }
