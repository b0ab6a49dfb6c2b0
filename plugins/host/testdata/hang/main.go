// Command hang is a test plugin whose Consume never returns: the host must time it out.
package main

import (
	"context"

	"github.com/profilemate/profilemate/plugins/sdk"
)

type hang struct{}

func (hang) Describe() sdk.Info {
	return sdk.Info{Name: "hang", Version: "0.0.1", Kinds: []string{"forward_pass"}}
}
func (hang) OpenSession(context.Context, sdk.Session) error { return nil }
func (hang) Consume(ctx context.Context, _ sdk.Batch) ([]sdk.Row, error) {
	select {} // ignores ctx on purpose
}
func (hang) CloseSession(context.Context, string) ([]sdk.Row, error) { return nil, nil }

func main() { sdk.Serve(hang{}) }
