// Command moe_balance is ProfileMate's in-tree moe_balance profiler plugin: per MoE layer and
// window of steps: max/mean expert load, coefficient of variation, hot and cold experts, and the
// rank imbalance an EPLB-style rebalance would remove.
// It runs analysis.MoEBalance (docs/analysis.md) on the session's events when the
// session closes and writes the derived table and findings rows.
//
//	go build -o moe_balance ./plugins/moe_balance && pmhub plugins add ./moe_balance
package main

import (
	"github.com/profilemate/profilemate/analysis"
	"github.com/profilemate/profilemate/analysis/sdkplugin"
	"github.com/profilemate/profilemate/plugins/sdk"
)

func main() { sdk.Serve(sdkplugin.MustNew(analysis.MoEBalanceName)) }
