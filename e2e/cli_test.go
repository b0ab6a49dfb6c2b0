package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// helpFlag is one flag as a binary's --help prints it.
type helpFlag struct {
	Default string // without quotes; "" when none is printed
	Env     string // the variables, comma separated
}

// refEnv is the environment the CLI tests run the binaries in: defaults then read as documented
// (a systemd unit with StateDirectory=profilemate and RuntimeDirectory=profilemate, HOME=/home/you).
func refEnv() []string {
	env := []string{"HOME=/home/you", "STATE_DIRECTORY=/var/lib/profilemate", "RUNTIME_DIRECTORY=/run/profilemate", "PATH=" + os.Getenv("PATH")}
	return env
}

var (
	helpLineRE = regexp.MustCompile(`^\s+--([a-z0-9][a-z0-9-]*)`)
	defaultRE  = regexp.MustCompile(`\(default: ([^()]*)\)(?:\s+\[\$[^\]]*\])?\s*$`)
	envRE      = regexp.MustCompile(`\[(\$[A-Z0-9_]+(?:, \$[A-Z0-9_]+)*)\]\s*$`)
)

// helpOutput runs `binary args… --help` in env.
func helpOutput(t *testing.T, binary string, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin(t, binary), append(args, "--help")...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v --help: %v\n%s", binary, args, err, out)
	}
	return string(out)
}

// helpFlags parses the OPTIONS of `binary cmd --help` (without --help itself); cmd may name a
// subcommand ("plugins add").
func helpFlags(t *testing.T, binary, cmd string, env []string) map[string]helpFlag {
	t.Helper()
	flags := map[string]helpFlag{}
	for _, line := range strings.Split(helpOutput(t, binary, env, strings.Fields(cmd)...), "\n") {
		m := helpLineRE.FindStringSubmatch(line)
		if m == nil || m[1] == "help" {
			continue
		}
		var f helpFlag
		if e := envRE.FindStringSubmatch(line); e != nil {
			f.Env = strings.ReplaceAll(e[1], "$", "")
		}
		if d := defaultRE.FindStringSubmatch(line); d != nil {
			f.Default = strings.Trim(d[1], `"`)
		}
		flags[m[1]] = f
	}
	if len(flags) == 0 {
		t.Fatalf("%s %s --help lists no flags", binary, cmd)
	}
	return flags
}

// commands lists a binary's commands from its --help; a command with subcommands is replaced by
// them ("plugins add", …).
func commands(t *testing.T, binary string) []string {
	t.Helper()
	cmds := subcommands(t, binary)
	if len(cmds) == 0 {
		t.Fatalf("%s --help lists no commands", binary)
	}
	return cmds
}

func subcommands(t *testing.T, binary string, path ...string) []string {
	t.Helper()
	var cmds []string
	in := false
	for _, line := range strings.Split(helpOutput(t, binary, refEnv(), path...), "\n") {
		switch {
		case strings.HasPrefix(line, "COMMANDS:"):
			in = true
		case in && strings.TrimSpace(line) == "":
			in = false
		case in && strings.HasPrefix(line, "   ") && !strings.HasPrefix(line, "    "):
			name := strings.TrimSuffix(strings.Fields(line)[0], ",")
			if name == "help" {
				continue
			}
			sub := append(append([]string{}, path...), name)
			if deeper := subcommands(t, binary, sub...); len(deeper) > 0 {
				cmds = append(cmds, deeper...)
			} else {
				cmds = append(cmds, strings.Join(sub, " "))
			}
		}
	}
	return cmds
}

// natsClientFlags are the shared NATS client flags (internal/natsclient) and their variables.
var natsClientFlags = map[string]string{
	"nats": "PROFILEMATE_NATS", "creds": "PROFILEMATE_NATS_CREDS", "nkey": "PROFILEMATE_NATS_NKEY",
	"user": "PROFILEMATE_NATS_USER", "password": "PROFILEMATE_NATS_PASSWORD", "token": "PROFILEMATE_NATS_TOKEN",
	"tls-ca": "PROFILEMATE_NATS_TLS_CA", "tls-cert": "PROFILEMATE_NATS_TLS_CERT", "tls-key": "PROFILEMATE_NATS_TLS_KEY",
}

// TestCLINATSFlagsShared: pmagent and every pmhub command that talks to NATS have the same NATS
// client flags with the same variables; a command with any of them has all of them.
func TestCLINATSFlagsShared(t *testing.T) {
	want := map[string]bool{"pmagent run": true, "pmagent serve": true, "pmhub serve": true, "pmhub tail": true}
	for _, binary := range []string{"pmagent", "pmhub"} {
		for _, cmd := range commands(t, binary) {
			flags := helpFlags(t, binary, cmd, refEnv())
			has := false
			for name := range natsClientFlags {
				if _, ok := flags[name]; ok {
					has = true
				}
			}
			id := binary + " " + cmd
			if !has {
				if want[id] {
					t.Errorf("%s has no NATS client flags", id)
				}
				continue
			}
			delete(want, id)
			for name, env := range natsClientFlags {
				f, ok := flags[name]
				switch {
				case !ok:
					t.Errorf("%s: no --%s", id, name)
				case f.Env != env:
					t.Errorf("%s: --%s reads %q, want %s", id, name, f.Env, env)
				}
			}
		}
	}
	for id := range want {
		t.Errorf("%s: command missing", id)
	}
}

// TestCLIFoldersShared: every pmhub command with --data has the same default and variable; the
// defaults of both binaries follow systemd's STATE_DIRECTORY / RUNTIME_DIRECTORY, and without them
// an unprivileged user's XDG folders.
func TestCLIFoldersShared(t *testing.T) {
	check := func(env []string, wantData, wantSpool, wantSocket string) {
		t.Helper()
		n := 0
		for _, cmd := range commands(t, "pmhub") {
			f, ok := helpFlags(t, "pmhub", cmd, env)["data"]
			if !ok {
				continue
			}
			n++
			if f.Default != wantData || f.Env != "PROFILEMATE_HUB_DATA" {
				t.Errorf("pmhub %s --data: default %q, variable %q; want %q, PROFILEMATE_HUB_DATA", cmd, f.Default, f.Env, wantData)
			}
		}
		if n < 3 {
			t.Errorf("only %d pmhub commands have --data", n)
		}
		for _, cmd := range []string{"run", "serve"} {
			if got := helpFlags(t, "pmagent", cmd, env)["spool-dir"].Default; got != wantSpool {
				t.Errorf("pmagent %s --spool-dir default %q, want %q", cmd, got, wantSpool)
			}
		}
		for _, cmd := range []string{"serve", "status", "env"} {
			if got := helpFlags(t, "pmagent", cmd, env)["socket"].Default; got != wantSocket {
				t.Errorf("pmagent %s --socket default %q, want %q", cmd, got, wantSocket)
			}
		}
	}
	check(refEnv(), "/var/lib/profilemate/hub", "/var/lib/profilemate/spool", "/run/profilemate/agent.sock")
	// A host-wide agent (root) keeps /run/profilemate/agent.sock, where every shim looks first.
	sock := "/run/pm/agent.sock"
	if os.Geteuid() == 0 {
		sock = "/run/profilemate/agent.sock"
	}
	check([]string{"HOME=/home/you", "STATE_DIRECTORY=/srv/pm:/other", "RUNTIME_DIRECTORY=/run/pm", "PATH=" + os.Getenv("PATH")},
		"/srv/pm/hub", "/srv/pm/spool", sock)
	if os.Geteuid() != 0 {
		check([]string{"HOME=/home/you", "XDG_RUNTIME_DIR=/run/user/1000", "PATH=" + os.Getenv("PATH")},
			"/home/you/.local/state/profilemate/hub", "/home/you/.local/state/profilemate/spool", "/run/user/1000/profilemate/agent.sock")
	}
}

// TestCLIEveryFlagHasVariable: every flag of every command can be set from a PROFILEMATE_*
// variable.
func TestCLIEveryFlagHasVariable(t *testing.T) {
	for _, binary := range []string{"pmagent", "pmhub"} {
		for _, cmd := range commands(t, binary) {
			for name, f := range helpFlags(t, binary, cmd, refEnv()) {
				if !strings.HasPrefix(f.Env, "PROFILEMATE_") {
					t.Errorf("%s %s --%s: no PROFILEMATE_* variable (%q)", binary, cmd, name, f.Env)
				}
			}
		}
	}
}

// docTable is one flag table of docs/: its first header cell names the command ("`pmhub serve`
// flag"); rows are flag, variable, default, meaning.
type docTable struct {
	file, binary, cmd string
	rows              map[string][2]string // flag -> variable, default
}

var tableHeadRE = regexp.MustCompile("^\\|\\s*`(pmagent|pmhub) ([a-z -]+)` flag\\s*\\|")

func docTables(t *testing.T) []docTable {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join("..", "docs", "*.md"))
	files = append(files, filepath.Join("..", "README.md"))
	var tables []docTable
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var cur *docTable
		for _, line := range strings.Split(string(b), "\n") {
			if m := tableHeadRE.FindStringSubmatch(line); m != nil {
				tables = append(tables, docTable{file: filepath.Base(f), binary: m[1], cmd: m[2], rows: map[string][2]string{}})
				cur = &tables[len(tables)-1]
				continue
			}
			if cur == nil || !strings.HasPrefix(line, "|") {
				cur = nil
				continue
			}
			cells := strings.Split(strings.Trim(line, "|"), "|")
			if strings.HasPrefix(strings.TrimSpace(cells[0]), "---") {
				continue
			}
			if len(cells) < 3 {
				t.Errorf("%s: %s %s table row %q has fewer than 3 cells", cur.file, cur.binary, cur.cmd, line)
				continue
			}
			name := strings.TrimPrefix(strings.Trim(strings.TrimSpace(cells[0]), "`"), "--")
			env := strings.Trim(strings.TrimSpace(cells[1]), "`")
			def := strings.TrimSpace(cells[2])
			// The default is the first `…` of its cell (the rest may explain it); empty: none.
			if i := strings.Index(def, "`"); i >= 0 {
				if j := strings.Index(def[i+1:], "`"); j >= 0 {
					def = def[i+1 : i+1+j]
				}
			} else {
				def = ""
			}
			cur.rows[name] = [2]string{env, strings.ReplaceAll(def, "~", "/home/you")}
		}
	}
	return tables
}

// TestDocsFlagTablesMatchHelp: each flag table in docs/ lists exactly the command's flags, with
// the variables and defaults its --help prints (defaults as in refEnv); each command has a table.
func TestDocsFlagTablesMatchHelp(t *testing.T) {
	tables := docTables(t)
	seen := map[string]bool{}
	for _, tb := range tables {
		id := tb.binary + " " + tb.cmd
		seen[id] = true
		help := helpFlags(t, tb.binary, tb.cmd, refEnv())
		var names []string
		for n := range help {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			row, ok := tb.rows[n]
			if !ok {
				t.Errorf("%s: %s table has no --%s", tb.file, id, n)
				continue
			}
			if row[0] != help[n].Env {
				t.Errorf("%s: %s --%s variable %q, --help says %q", tb.file, id, n, row[0], help[n].Env)
			}
			if row[1] != help[n].Default {
				t.Errorf("%s: %s --%s default %q, --help says %q", tb.file, id, n, row[1], help[n].Default)
			}
		}
		for n := range tb.rows {
			if _, ok := help[n]; !ok {
				t.Errorf("%s: %s table lists --%s, which the command does not have", tb.file, id, n)
			}
		}
	}
	for _, binary := range []string{"pmagent", "pmhub"} {
		for _, cmd := range documented[binary] {
			if !seen[binary+" "+cmd] {
				t.Errorf("no flag table in docs/ for %s %s", binary, cmd)
			}
		}
	}
}

// documented are the commands whose flag tables docs/ must hold.
var documented = map[string][]string{
	"pmagent": {"run", "serve", "env", "status", "install", "uninstall"},
	"pmhub":   {"serve", "tail", "sessions", "show", "demo", "import"},
}

// goIdent matches a Go identifier in lowerCamelCase (serveOneStatus; not a host name such as
// hostA): help text names things in the user's words, never the code's.
var goIdent = regexp.MustCompile(`\b[a-z]+[A-Z][a-z]+[A-Za-z0-9]*\b`)

func TestCLIHelpHasNoCodeIdentifiers(t *testing.T) {
	for _, binary := range []string{"pmagent", "pmhub"} {
		pages := [][]string{nil}
		for _, cmd := range commands(t, binary) {
			pages = append(pages, strings.Fields(cmd))
		}
		for _, args := range pages {
			var bad []string
			for _, w := range goIdent.FindAllString(helpOutput(t, binary, refEnv(), args...), -1) {
				if w != "vLLM" { // the product's own spelling
					bad = append(bad, w)
				}
			}
			if len(bad) > 0 {
				t.Errorf("%s %s --help names code identifiers %v", binary, strings.Join(args, " "), bad)
			}
		}
	}
}

// TestCLIJSONVariableGlobal: PROFILEMATE_JSON is the one output-format variable (docs/cli.md):
// every --json flag reads it, no other flag does, docs/cli.md lists exactly the commands that
// have --json, and every other variable belongs to flags of a single name.
func TestCLIJSONVariableGlobal(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "docs", "cli.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, _ := strings.Cut(string(b), "## `PROFILEMATE_JSON`")
	section, _, _ = strings.Cut(section, "\n## ")
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("`((?:pmhub|pmagent) [a-z ]+)`").FindAllStringSubmatch(section, -1) {
		documented[m[1]] = true
	}
	names := map[string]map[string]bool{} // variable -> flag names reading it
	for _, binary := range []string{"pmagent", "pmhub"} {
		for _, cmd := range commands(t, binary) {
			id := binary + " " + cmd
			for name, f := range helpFlags(t, binary, cmd, refEnv()) {
				for _, env := range strings.Split(f.Env, ", ") {
					if names[env] == nil {
						names[env] = map[string]bool{}
					}
					names[env][name] = true
				}
				if name == "json" {
					if f.Env != "PROFILEMATE_JSON" {
						t.Errorf("%s --json reads %q, want PROFILEMATE_JSON", id, f.Env)
					}
					if !documented[id] {
						t.Errorf("%s has --json but docs/cli.md does not list it under PROFILEMATE_JSON", id)
					}
					delete(documented, id)
				}
			}
		}
	}
	for id := range documented {
		t.Errorf("docs/cli.md lists %s under PROFILEMATE_JSON, which has no --json", id)
	}
	for env, flags := range names {
		if len(flags) > 1 {
			t.Errorf("%s is read by differently named flags %v: a variable belongs to one flag", env, flags)
		}
	}
}
