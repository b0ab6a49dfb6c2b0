package main

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// TestNamesCheckedAtTheCommandLine: a session or host outside proto's name grammar is refused
// before anything runs, with the rule in the message (issue: "my run" used to exit 0 having
// delivered nothing).
func TestNamesCheckedAtTheCommandLine(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "a.sock")
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"pmagent", "run", "--cache", t.TempDir(), "--session", "my run", "--", "true"}, `session "my run": only letters, digits`},
		{[]string{"pmagent", "run", "--cache", t.TempDir(), "--session", "exp/1", "--", "true"}, `session "exp/1"`},
		{[]string{"pmagent", "run", "--cache", t.TempDir(), "--session", strings.Repeat("a", 4100), "--", "true"}, "session of 4100 bytes: at most 128"},
		{[]string{"pmagent", "serve", "--socket", sock, "--host", "x:y"}, `host "x:y"`},
		{[]string{"pmagent", "serve", "--socket", sock, "--session", "résumé"}, `session "résumé"`},
	}
	for _, c := range cases {
		app := &cli.App{Name: "pmagent", Commands: []*cli.Command{runCommand, serveCommand}, ExitErrHandler: func(*cli.Context, error) {}}
		ctx, cancel := context.WithCancel(context.Background())
		err := app.RunContext(ctx, c.args)
		cancel()
		var ec cli.ExitCoder
		if err == nil || !errors.As(err, &ec) || ec.ExitCode() == 0 || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: got %v, want a non-zero exit naming %q", c.args[1:4], err, c.want)
		}
	}
}
