package e2e

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/profilemate/profilemate/proto"
)

// cliRun runs `binary args…` in env (refEnv when nil) and returns its exit code, stdout and stderr.
func cliRun(t *testing.T, env []string, binary string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(bin(t, binary), args...)
	if env == nil {
		env = refEnv()
	}
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s %v: %v", binary, args, err)
	}
	return code, out.String(), errb.String()
}

// repeatedPrefix finds a prefix added by two layers in an error line of binary: the binary named
// in two ": "-separated parts ("pmhub: pmhub serve: x"), or one part twice in a row once the
// binary's name is left out ("pmhub show: show: x", "hub: hub: x"). "" when none.
func repeatedPrefix(binary, line string) string {
	parts := strings.Split(line, ": ")
	named, prev := 0, ""
	for i, p := range parts[:len(parts)-1] {
		if p == binary || strings.HasPrefix(p, binary+" ") {
			named++
		}
		p = strings.TrimPrefix(strings.TrimPrefix(p, binary), " ")
		if i > 0 && p != "" && p == prev {
			return p
		}
		prev = p
	}
	if named > 1 {
		return binary
	}
	return ""
}

// checkErrorLine: stderr is exactly one line, naming the command once at its start, with no
// prefix twice.
func checkErrorLine(t *testing.T, id, stderr string) {
	t.Helper()
	lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
	if len(lines) != 1 {
		t.Errorf("%s: stderr has %d lines, want one error line:\n%s", id, len(lines), stderr)
		return
	}
	l := lines[0]
	if !strings.HasPrefix(l, id+": ") {
		t.Errorf("%s: error line %q does not start with %q", id, l, id+": ")
	}
	binary, _, _ := strings.Cut(id, " ")
	if p := repeatedPrefix(binary, l); p != "" {
		t.Errorf("%s: error line %q repeats the prefix %q", id, l, p)
	}
}

// takesNoArguments: a --help page whose USAGE line names no arguments after the options.
func takesNoArguments(help string) bool {
	_, after, ok := strings.Cut(help, "USAGE:\n")
	line, _, _ := strings.Cut(after, "\n")
	return ok && strings.HasSuffix(strings.TrimSpace(line), "[command options]")
}

// TestCLIVersion: both binaries answer --version with their version, the proto schema and wire
// versions they speak, the Go toolchain and the source commit line, exit 0.
func TestCLIVersion(t *testing.T) {
	for _, binary := range []string{"pmhub", "pmagent"} {
		code, out, errOut := cliRun(t, nil, binary, "--version")
		if code != 0 || errOut != "" {
			t.Errorf("%s --version: exit %d, stderr %q", binary, code, errOut)
		}
		for _, want := range []string{binary + " ", "proto schema: " + proto.SchemaVersion, "shim wire:", runtime.Version(), "commit:"} {
			if !strings.Contains(out, want) {
				t.Errorf("%s --version does not say %q:\n%s", binary, want, out)
			}
		}
	}
}

// TestCLIUsageErrorsExit2: the exit-code rule (docs/exit-codes.md) on every command of both
// binaries: an unknown flag, an argument to a command that takes none, a missing argument, an
// unknown command, a session that does not exist are usage errors: exit 2, one error line naming
// the command, nothing on stdout (the help is not dumped).
func TestCLIUsageErrorsExit2(t *testing.T) {
	data := t.TempDir()
	if err := os.MkdirAll(filepath.Join(data, "sessions", "20260101_000000_aaaaaa"), 0o755); err != nil {
		t.Fatal(err)
	}
	type usage struct {
		binary string
		args   []string
		id     string // the command the error line names
		want   string
	}
	var cases []usage
	for _, binary := range []string{"pmhub", "pmagent"} {
		for _, cmd := range commands(t, binary) {
			words := strings.Fields(cmd)
			id := binary + " " + cmd
			cases = append(cases, usage{binary, append(words, "--no-such-flag"), id, "-no-such-flag"})
			if takesNoArguments(helpOutput(t, binary, refEnv(), words...)) {
				cases = append(cases, usage{binary, append(words, "stray"), id, "takes no arguments"})
			}
		}
		cases = append(cases, usage{binary, []string{"no-such-command"}, binary, `unknown command "no-such-command"`})
	}
	cases = append(cases,
		usage{"pmhub", []string{"show", "--data", data}, "pmhub show", "give one SESSION"},
		usage{"pmhub", []string{"show", "--data", data, "nope"}, "pmhub show", "20260101_000000_aaaaaa"},
		usage{"pmhub", []string{"show", "nope", "--data", data}, "pmhub show", "20260101_000000_aaaaaa"},
		usage{"pmhub", []string{"report", "--data", data, "nope"}, "pmhub report", `no session "nope" in ` + filepath.Join(data, "sessions")},
		usage{"pmhub", []string{"export", "--data", data}, "pmhub export", "give one SESSION"},
		usage{"pmhub", []string{"import", "--data", data}, "pmhub import", "give one or more standalone session folders"},
		usage{"pmhub", []string{"import", "--data", data, filepath.Join(data, "nowhere")}, "pmhub import", "no such file or directory"},
		usage{"pmhub", []string{"export", "--data", data, "--format", "svg", "20260101_000000_aaaaaa"}, "pmhub export", `--format "svg"`},
		usage{"pmhub", []string{"sessions", "--data", filepath.Join(data, "nowhere")}, "pmhub sessions", "does not exist"},
		usage{"pmhub", []string{"plugins", "rm", "--data", data, "nope"}, "pmhub plugins rm", "no plugin nope"},
		usage{"pmhub", []string{"plugins", "run", "--data", data, "nope"}, "pmhub plugins run", "want NAME|PATH SESSION"},
		usage{"pmhub", []string{"plugins", "add", filepath.Join(data, "nope")}, "pmhub plugins add", "no file"},
		usage{"pmhub", []string{"plugins", "add", "--plugin-timeout", "0s", filepath.Join(data, "nope")}, "pmhub plugins add", "--plugin-timeout 0s"},
		usage{"pmhub", []string{"serve", "--data", data, "--plugin-timeout", "0s"}, "pmhub serve", "--plugin-timeout 0s"},
		usage{"pmhub", []string{"plugins", "no-such-command"}, "pmhub plugins", `unknown command "no-such-command"`},
		usage{"pmhub", []string{"profilers", "on"}, "pmhub profilers on", "want one KIND"},
		usage{"pmhub", []string{"tail", "--kind", "nope"}, "pmhub tail", `unknown kind "nope"`},
		usage{"pmhub", []string{"tail", "--rank", "-5"}, "pmhub tail", "--rank -5"},
		usage{"pmhub", []string{"tail", "--session", "a b"}, "pmhub tail", `--session: bad name: session "a b"`},
		usage{"pmhub", []string{"tail", "--host", "a b"}, "pmhub tail", `--host: bad name: host "a b"`},
		usage{"pmhub", []string{"report", "--data", data, "--max-points", "0", "20260101_000000_aaaaaa"}, "pmhub report", "--max-points 0"},
		usage{"pmhub", []string{"report", "--data", data, "--sample-size", "-1", "20260101_000000_aaaaaa"}, "pmhub report", "--sample-size -1"},
		usage{"pmhub", []string{"profilers", "off", "kv_cache", "--recent", "0s"}, "pmhub profilers off", "--recent 0s"},
		usage{"pmhub", []string{"serve", "--data", data, "--session-idle", "0s"}, "pmhub serve", "--session-idle"},
		usage{"pmhub", []string{"serve", "--data", data, "--http", "127.0.0.1"}, "pmhub serve", "--http"},
		usage{"pmhub", []string{"demo", "--workers", "0"}, "pmhub demo", "--workers 0"},
		usage{"pmagent", []string{"run"}, "pmagent run", "no command given"},
		usage{"pmagent", []string{"run", "--session", "a b", "--", "true"}, "pmagent run", `session "a b"`},
		usage{"pmagent", []string{"serve", "--log-level", "loud"}, "pmagent serve", "--log-level"},
		usage{"pmagent", []string{"install"}, "pmagent install", "--python is required"},
		usage{"pmagent", []string{"install", "--python", filepath.Join(data, "no-python")}, "pmagent install", "--python " + filepath.Join(data, "no-python")},
		usage{"pmagent", []string{"uninstall", "--python", filepath.Join(data, "no-python")}, "pmagent uninstall", "--python " + filepath.Join(data, "no-python")},
		usage{"pmagent", []string{"install", "--python", "no-such-python3.99"}, "pmagent install", "--python no-such-python3.99"},
		usage{"pmagent", []string{"env", "--format", "toml"}, "pmagent env", `"toml"`},
	)
	for _, c := range cases {
		code, out, errOut := cliRun(t, nil, c.binary, c.args...)
		name := c.binary + " " + strings.Join(c.args, " ")
		if code != 2 {
			t.Errorf("%s: exit %d, want 2 (usage error); stderr %q", name, code, errOut)
		}
		if out != "" {
			t.Errorf("%s: wrote to stdout on a usage error:\n%s", name, out)
		}
		if !strings.Contains(errOut, c.want) {
			t.Errorf("%s: stderr %q does not say %q", name, errOut, c.want)
		}
		checkErrorLine(t, c.id, errOut)
	}
}

// TestCLIRuntimeErrorsExit1: failures while running (nothing listens at the NATS address, a
// session whose metadata does not parse) exit 1 with one error line that names the command once.
func TestCLIRuntimeErrorsExit1(t *testing.T) {
	data := t.TempDir()
	bad := filepath.Join(data, "sessions", "20260101_000000_bad000")
	if err := os.MkdirAll(bad, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bad, "metadata.json"), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	dead := "nats://" + freeAddr(t)
	for _, c := range []struct {
		args []string
		id   string
	}{
		{[]string{"tail", "--nats", dead}, "pmhub tail"},
		{[]string{"profilers", "off", "kv_cache", "--nats", dead}, "pmhub profilers off"},
		{[]string{"show", "--data", data, "20260101_000000_bad000"}, "pmhub show"},
		{[]string{"report", "--data", data, "-o", filepath.Join(data, "r.html"), "20260101_000000_bad000"}, "pmhub report"},
		{[]string{"export", "--data", data, "-o", filepath.Join(data, "t.pftrace"), "20260101_000000_bad000"}, "pmhub export"},
		{[]string{"serve", "--data", filepath.Join(data, "hub"), "--nats", dead, "--http", ""}, "pmhub serve"},
	} {
		code, _, errOut := cliRun(t, nil, "pmhub", c.args...)
		if code != 1 {
			t.Errorf("pmhub %v: exit %d, want 1; stderr %q", c.args, code, errOut)
		}
		checkErrorLine(t, c.id, errOut)
	}
}
