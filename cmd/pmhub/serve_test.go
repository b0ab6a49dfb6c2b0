package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/profilemate/profilemate/internal/cliapp"
)

// runServe runs pmhub with args in-process, as main does (internal/cliapp's exit-code rule and
// error line), and returns its exit code and what it wrote.
func runServe(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out bytes.Buffer
	app := newApp()
	app.Writer, app.ErrWriter = &out, &out
	code := cliapp.Run(context.Background(), app, append([]string{"pmhub"}, args...))
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
		{"--plugin-timeout", "0s"}, {"--plugin-timeout", "-1s"},
	}
	for _, c := range cases {
		data := t.TempDir()
		code, out := runServe(t, append([]string{"serve", "--data", data, "--listen", "127.0.0.1:-1", "--http", ""}, c...)...)
		if code != 2 || !strings.Contains(out, c[0]+" "+c[1]) {
			t.Errorf("%v: exit %d, output %q; want exit 2 naming the flag and value", c, code, out)
		}
	}
}

// TestServeNoneValueInErrorParses: the "none" value an error suggests is one the flag accepts
// (--retention is a duration: the error said "-1", which does not parse as one).
func TestServeNoneValueInErrorParses(t *testing.T) {
	re := regexp.MustCompile(`or (\S+) for none`)
	for _, c := range [][]string{{"--retention", "-5s"}, {"--session-max-bytes", "-2"}} {
		code, out := runServe(t, "serve", "--data", t.TempDir(), "--listen", "127.0.0.1:-1", "--http", "", c[0], c[1])
		m := re.FindStringSubmatch(out)
		if code != 2 || m == nil {
			t.Fatalf("%v: exit %d, output %q; want exit 2 naming a none value", c, code, out)
		}
		// The suggested value must pass: the next limit checked (set to 0 here) is then the one refused.
		code, out = runServe(t, "serve", "--data", t.TempDir(), "--listen", "127.0.0.1:-1", "--http", "",
			c[0], m[1], "--dead-letter-max-count", "0")
		if code != 2 || !strings.Contains(out, "--dead-letter-max-count 0") || strings.Contains(out, c[0]) {
			t.Errorf("%s %s (the value the error suggested): exit %d, output %q; want it accepted", c[0], m[1], code, out)
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

// TestServeChecksAddressesBeforeStarting: a bad --http or --listen, an --http or --listen address
// in use, a missing --plugins-allow or TLS file fail before anything starts: no hub, no data
// folder (the HTTP address used to be checked only after the hub was up; a --listen address in
// use failed only once the data folder had been made).
func TestServeChecksAddressesBeforeStarting(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	missing := filepath.Join(t.TempDir(), "missing.pem")
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--http", "bad:addr:x"}, 2, `--http "bad:addr:x"`},
		{[]string{"--http", "127.0.0.1"}, 2, `--http "127.0.0.1"`},
		{[]string{"--http", "127.0.0.1:70000"}, 2, "70000"},
		{[]string{"--http", busy.Addr().String()}, 1, busy.Addr().String()},
		{[]string{"--listen", "127.0.0.1:99999"}, 2, `--listen "127.0.0.1:99999"`},
		{[]string{"--listen", busy.Addr().String()}, 1, "--listen " + busy.Addr().String()},
		{[]string{"--plugins-allow", missing}, 2, "--plugins-allow"},
		{[]string{"--server-tls-cert", missing, "--server-tls-key", missing}, 2, "--server-tls-cert"},
		{[]string{"--http-tls-cert", missing, "--http-tls-key", missing, "--http", "127.0.0.1:0"}, 2, "--http-tls-cert"},
	} {
		data := filepath.Join(t.TempDir(), "hub")
		args := append([]string{"serve", "--data", data, "--listen", "127.0.0.1:-1", "--http", "127.0.0.1:0"}, c.args...)
		code, out := runServe(t, args...)
		if code != c.code || !strings.Contains(out, c.want) {
			t.Errorf("%v: exit %d, output %q; want exit %d naming %q", c.args, code, out, c.code, c.want)
		}
		if strings.Contains(out, "hub started") || strings.Contains(out, "agents connect to") {
			t.Errorf("%v: the hub started before the error:\n%s", c.args, out)
		}
		if _, err := os.Stat(data); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%v: the data folder was created (%v): something started", c.args, err)
		}
	}
}
