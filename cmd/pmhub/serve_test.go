package main

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// runApp runs pmhub with args in-process and returns its exit code and what it wrote.
func runServe(t *testing.T, args ...string) (int, string) {
	t.Helper()
	code := 0
	var out bytes.Buffer
	oldExit, oldErr := cli.OsExiter, cli.ErrWriter
	cli.OsExiter, cli.ErrWriter = func(c int) { code = c }, &out
	defer func() { cli.OsExiter, cli.ErrWriter = oldExit, oldErr }()
	app := newApp()
	app.Writer, app.ErrWriter = &out, &out
	if err := app.Run(append([]string{"pmhub"}, args...)); err != nil && code == 0 {
		code = 1
		out.WriteString(err.Error())
	}
	return code, out.String()
}

// TestServeRejectsBadLimits: zero and negative limits are refused with an error naming the flag,
// before anything starts (they were accepted silently).
func TestServeRejectsBadLimits(t *testing.T) {
	cases := [][]string{
		{"--session-idle", "-5s"}, {"--session-idle", "0s"},
		{"--stream-max-bytes", "-1"}, {"--stream-max-bytes", "0"},
		{"--stream-max-age", "-1h"}, {"--stream-max-age", "0s"},
		{"--session-max-bytes", "0"}, {"--session-max-bytes", "-2"},
		{"--retention", "0s"}, {"--retention", "-5s"},
		{"--dead-letter-max-count", "0"}, {"--dead-letter-max-bytes", "-1"},
	}
	for _, c := range cases {
		data := t.TempDir()
		code, out := runServe(t, append([]string{"serve", "--data", data, "--listen", "127.0.0.1:-1", "--http", ""}, c...)...)
		if code != 2 || !strings.Contains(out, c[0]+" "+c[1]) {
			t.Errorf("%v: exit %d, output %q; want exit 2 naming the flag and value", c, code, out)
		}
	}
}

// TestServeRejectsMixedFlags: --server-* need the embedded server, client flags need --nats, and
// each set's own pairs must be complete.
func TestServeRejectsMixedFlags(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--nats", "nats://127.0.0.1:1", "--server-auth-token", "x"}, "--server-auth-token"},
		{[]string{"--token", "x"}, "apply to --nats only"},
		{[]string{"--server-user", "u"}, "--server-password"},
		{[]string{"--server-auth-token", "t", "--server-user", "u", "--server-password", "p"}, "not both"},
		{[]string{"--http-tls-cert", "c"}, "--http-tls-key"},
		{[]string{"--nats", "nats://127.0.0.1:1", "--user", "u", "--token", "t"}, "one NATS authentication method"},
	}
	for _, c := range cases {
		code, out := runServe(t, append([]string{"serve", "--data", t.TempDir(), "--listen", "127.0.0.1:-1", "--http", ""}, c.args...)...)
		if code != 2 || !strings.Contains(out, c.want) {
			t.Errorf("%v: exit %d, output %q; want exit 2 mentioning %q", c.args, code, out, c.want)
		}
	}
}

// TestServeAndDemoRejectStrayArguments: `pmhub serve /my/data` (a folder without --data) must not
// start a hub on the default folder, and the demo refuses arguments and a worker count below 1.
func TestServeAndDemoRejectStrayArguments(t *testing.T) {
	data := t.TempDir()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--data", data, "--listen", "127.0.0.1:-1", "--http", "", "/my/data"}, "takes no arguments"},
		{[]string{"demo", "--dir", data, "extra"}, "takes no arguments"},
		{[]string{"demo", "--dir", data, "--workers", "0"}, "--workers 0"},
	} {
		code, out := runServe(t, c.args...)
		if code != 2 || !strings.Contains(out, c.want) {
			t.Errorf("%v: exit %d, output %q; want exit 2 saying %q", c.args, code, out, c.want)
		}
	}
	if ents, _ := os.ReadDir(data); len(ents) != 0 {
		t.Errorf("a refused command wrote into %s: %v", data, ents)
	}
}
