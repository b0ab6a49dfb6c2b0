// Command slow is a test plugin that takes 2 ms per event batch: the benchmarks attach it to show
// that a slow plugin does not slow the hub's own consume → write path.
package main

import (
	"context"
	"time"

	"github.com/profilemate/profilemate/plugins/sdk"
)

type slow struct{}

func (slow) Describe() sdk.Info {
	return sdk.Info{Name: "slow", Version: "0.0.1", Kinds: []string{"forward_pass", "kv_cache"}}
}
func (slow) OpenSession(context.Context, sdk.Session) error { return nil }
func (slow) Consume(context.Context, sdk.Batch) ([]sdk.Row, error) {
	time.Sleep(2 * time.Millisecond)
	return nil, nil
}
func (slow) CloseSession(context.Context, string) ([]sdk.Row, error) { return nil, nil }

func main() { sdk.Serve(slow{}) }
