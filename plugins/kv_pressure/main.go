// Command kv_pressure is ProfileMate's in-tree kv_pressure profiler plugin: KV cache thrash
// (preemptions per 1,000 steps, recomputed tokens), evicted blocks needed again, and the KV size
// that would have avoided the preemptions.
// It runs analysis.KVPressure (docs/analysis.md) on the session's events when the
// session closes and writes the derived table and findings rows.
//
//	go build -o kv_pressure ./plugins/kv_pressure && pmhub plugins add ./kv_pressure
package main

import (
	"github.com/profilemate/profilemate/analysis"
	"github.com/profilemate/profilemate/analysis/sdkplugin"
	"github.com/profilemate/profilemate/plugins/sdk"
)

func main() { sdk.Serve(sdkplugin.MustNew(analysis.KVPressureName)) }
