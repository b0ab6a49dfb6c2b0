package cliapp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// TestLineNamesTheCommandOnce: whatever prefix a layer put on the message (the command's, a
// command's above it, the binary's), the line names the command exactly once.
func TestLineNamesTheCommandOnce(t *testing.T) {
	for _, c := range []struct{ cmd, msg, want string }{
		{"pmhub show", "no session", "pmhub show: no session"},
		{"pmhub show", "pmhub show: no session", "pmhub show: no session"},
		{"pmhub serve", "pmhub: hub: connect", "pmhub serve: hub: connect"},
		{"pmhub profilers on", "pmhub profilers: no agent", "pmhub profilers on: no agent"},
		{"pmagent run", "pmagent: --log-level", "pmagent run: --log-level"},
		{"pmagent run", "", ""},
		{"pmhub demo", "pmhub demo: hostA: exit 1\nhostB: exit 1", "pmhub demo: hostA: exit 1; hostB: exit 1"},
	} {
		if got := Line(c.cmd, errors.New(c.msg)); got != c.want {
			t.Errorf("Line(%q, %q) = %q, want %q", c.cmd, c.msg, got, c.want)
		}
	}
}

// TestRunExitCodes: the rule of the package comment through Run: usage errors of every kind 2,
// other errors 1, a cli.Exit code as given, success 0; one error line on the app's ErrWriter.
func TestRunExitCodes(t *testing.T) {
	newApp := func() *cli.App {
		app := &cli.App{Name: "pm", Commands: []*cli.Command{
			{Name: "ok", Action: func(*cli.Context) error { return nil }},
			{Name: "fail", Action: func(*cli.Context) error { return fmt.Errorf("pm fail: read x: %w", errors.New("gone")) }},
			{Name: "bad", Action: func(*cli.Context) error { return Usage("--n %d: must be positive", -1) }},
			{Name: "three", Action: func(*cli.Context) error { return cli.Exit("pm: nothing there", 3) }},
			{Name: "need", Flags: []cli.Flag{&cli.StringFlag{Name: "python", Required: true}}, Action: func(*cli.Context) error { return nil }},
			{Name: "grp", Subcommands: []*cli.Command{{Name: "ls", Action: func(*cli.Context) error { return nil }}}},
		}}
		Prepare(app, "1.2.3")
		return app
	}
	for _, c := range []struct {
		args []string
		code int
		line string
	}{
		{[]string{"ok"}, 0, ""},
		{[]string{"fail"}, 1, "pm fail: read x: gone"},
		{[]string{"bad"}, 2, "pm bad: --n -1: must be positive"},
		{[]string{"three"}, 3, "pm three: nothing there"},
		{[]string{"ok", "--nope"}, 2, "pm ok: flag provided but not defined: -nope (see pm ok --help)"},
		{[]string{"ok", "stray"}, 2, `pm ok: takes no arguments, got ["stray"]`},
		{[]string{"need"}, 2, "pm need: --python is required"},
		{[]string{"nosuch"}, 2, `pm: unknown command "nosuch"`},
		{[]string{"grp", "nosuch"}, 2, `pm grp: unknown command "nosuch"`},
		{[]string{"grp", "ls", "x"}, 2, `pm grp ls: takes no arguments`},
	} {
		var out, errOut bytes.Buffer
		app := newApp()
		app.Writer, app.ErrWriter = &out, &errOut
		code := Run(context.Background(), app, append([]string{"pm"}, c.args...))
		if code != c.code || !strings.HasPrefix(errOut.String(), c.line) || strings.Count(errOut.String(), "\n") > 1 {
			t.Errorf("%v: exit %d, stderr %q; want %d, %q", c.args, code, errOut.String(), c.code, c.line)
		}
		if c.code == 2 && out.Len() > 0 {
			t.Errorf("%v: a usage error printed on stdout: %q", c.args, out.String())
		}
	}
	var out bytes.Buffer
	app := newApp()
	app.Writer = &out
	if code := Run(context.Background(), app, []string{"pm", "--version"}); code != 0 || !strings.HasPrefix(out.String(), "pm 1.2.3\n") || !strings.Contains(out.String(), "proto schema: ") {
		t.Errorf("--version: exit %d, %q", code, out.String())
	}
}
