// Package cliapp is what pmhub and pmagent share as command-line programs: one exit-code rule,
// one error line per failure, and --version.
//
// Exit codes (docs/exit-codes.md):
//
//	0  success
//	1  runtime failure: the command line was right, something failed while running (a
//	   connection, a file, a child process, a session that cannot be read)
//	2  usage error: an unknown command or flag, a missing or extra argument, a flag value that
//	   does not parse or is out of range, flags that do not go together, a SESSION, plugin or
//	   kind that does not exist
//	3  pmagent status and pmagent uninstall only: nothing there (no agent answers on the
//	   socket, nothing installed)
//
// `pmagent run` exits with its command's own code instead (128+signal when a signal ended it).
//
// A failing command prints exactly one line on stderr, "<binary> <command>: <message>"; Run adds
// that prefix and removes one a message already carries, so no layer needs to add it and none
// can double it.
package cliapp

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"

	"github.com/urfave/cli/v2"

	"github.com/profilemate/profilemate/proto"
)

// Exit codes; see the package comment.
const (
	CodeOK      = 0
	CodeFailure = 1
	CodeUsage   = 2
	CodeAbsent  = 3
)

// usageError is an error of the command line: exit code 2.
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }
func (u usageError) ExitCode() int { return CodeUsage }

// Usage returns a usage error (exit code 2) formatted as fmt.Errorf does (%w wraps).
func Usage(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// AsUsage marks err as a usage error (exit code 2); nil stays nil.
func AsUsage(err error) error {
	if err == nil {
		return nil
	}
	return usageError{err}
}

// Code is the exit code of err: 0 for nil, the code of the first cli.ExitCoder in its chain,
// else 1 (a runtime failure).
func Code(err error) int {
	if err == nil {
		return CodeOK
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	return CodeFailure
}

// Line is the one stderr line for err raised by the command named cmd ("pmhub plugins ls"): a
// prefix the message already has that names cmd or a command above it ("pmhub plugins ls: ",
// "pmhub plugins: ", "pmhub: ") is replaced by cmd's, and line breaks by "; ". "" when err has no message (a code passed
// on without words, as pmagent run does).
func Line(cmd string, err error) string {
	msg := strings.TrimSpace(err.Error())
	if msg == "" {
		return ""
	}
	// One line: joined errors (errors.Join) and multi-line texts are separated by "; ".
	msg = strings.Join(strings.FieldsFunc(msg, func(r rune) bool { return r == '\n' || r == '\r' }), "; ")
	words := strings.Fields(cmd)
	for n := len(words); n > 0; n-- {
		if p := strings.Join(words[:n], " ") + ": "; strings.HasPrefix(msg, p) {
			msg = msg[len(p):]
			break
		}
	}
	return cmd + ": " + msg
}

// Prepare installs the shared behaviour on app before it runs: --version printing VersionText,
// usage errors for unknown flags and commands, bad flag values, and arguments given to a command
// that takes none (its ArgsUsage is empty), on app and every command. version is the release label set at build time ("" or "dev": the module version of
// the build, else "dev").
func Prepare(app *cli.App, version string) {
	app.Version = releaseVersion(version)
	cli.VersionPrinter = func(c *cli.Context) { fmt.Fprint(c.App.Writer, VersionText(c.App.Name, c.App.Version)) }
	app.OnUsageError = onUsageError
	if app.Action == nil {
		app.Action = parentAction
	}
	var walk func([]*cli.Command)
	walk = func(cmds []*cli.Command) {
		for _, c := range cmds {
			c.OnUsageError = onUsageError
			if len(c.Subcommands) > 0 && c.Action == nil {
				c.Action = parentAction
			}
			if req := requiredFlags(c.Flags); len(req) > 0 && c.Action != nil {
				c.Action = checkRequired(req, c.Action)
			}
			if len(c.Subcommands) == 0 && c.ArgsUsage == "" && c.Action != nil && !c.SkipFlagParsing {
				c.Action = noArguments(c.Action)
			}
			walk(c.Subcommands)
		}
	}
	walk(app.Commands)
}

// noArguments refuses arguments to a command that takes none (its help shows no ARGS): a stray
// word is most often a value without its flag (`pmhub sessions /srv/hub` for --data /srv/hub),
// which must not run the command on its defaults.
func noArguments(action cli.ActionFunc) cli.ActionFunc {
	return func(c *cli.Context) error {
		if c.NArg() > 0 {
			return Usage("takes no arguments, got %q (flags go before any argument; see %s --help)", c.Args().Slice(), commandName(c))
		}
		return action(c)
	}
}

// requiredFlags takes the library's Required off flags and returns their names: the library
// would print the whole help on stdout and exit 1; checkRequired makes a missing one a usage
// error like any other.
// A flag value shared by several commands (or prepared twice) is remembered in required.
func requiredFlags(flags []cli.Flag) []string {
	requiredMu.Lock()
	defer requiredMu.Unlock()
	var names []string
	for _, f := range flags {
		switch f := f.(type) {
		case *cli.StringFlag:
			if f.Required || required[f] {
				f.Required, required[f] = false, true
				names = append(names, f.Name)
			}
		case *cli.StringSliceFlag:
			if f.Required || required[f] {
				f.Required, required[f] = false, true
				names = append(names, f.Name)
			}
		}
	}
	return names
}

var (
	requiredMu sync.Mutex
	required   = map[cli.Flag]bool{}
)

// checkRequired refuses to run action without every flag in names (set on the command line or
// through its variable).
func checkRequired(names []string, action cli.ActionFunc) cli.ActionFunc {
	return func(c *cli.Context) error {
		for _, n := range names {
			if !c.IsSet(n) {
				return Usage("--%s is required (see %s --help)", n, commandName(c))
			}
		}
		return action(c)
	}
}

// onUsageError turns a flag parsing error into a usage error that names the help to read.
func onUsageError(c *cli.Context, err error, _ bool) error {
	return Usage("%w (see %s --help)", err, commandName(c))
}

// parentAction is the action of the app and of commands that only group subcommands: help
// without arguments, a usage error for an unknown command name.
func parentAction(c *cli.Context) error {
	if c.NArg() == 0 {
		if c.Command == nil || c.Command.FullName() == c.App.Name {
			return cli.ShowAppHelp(c)
		}
		return cli.ShowSubcommandHelp(c)
	}
	var names []string
	subs := c.App.Commands
	if c.Command != nil && len(c.Command.Subcommands) > 0 {
		subs = c.Command.Subcommands
	}
	for _, s := range subs {
		if !s.Hidden && s.Name != "help" {
			names = append(names, s.Name)
		}
	}
	return Usage("unknown command %q (commands: %s)", c.Args().First(), strings.Join(names, ", "))
}

// commandName is the running command's full name ("pmhub plugins ls"; the binary's name at the
// top level).
// Built from the context's lineage, not the library's HelpName, which a command shared by two
// apps (tests build several) gets prefixed twice.
func commandName(c *cli.Context) string {
	names := []string{}
	for _, x := range c.Lineage() {
		if x.Command != nil && x.Command.Name != "" && x.Command.Name != c.App.Name {
			names = append([]string{x.Command.Name}, names...)
		}
	}
	return strings.Join(append([]string{c.App.Name}, names...), " ")
}

// Run runs app (prepared with Prepare) with args and returns its exit code, having written the
// error line, if any, to app.ErrWriter. The library's own exits (cli.HandleExitCoder) are off:
// every code comes from Code.
func Run(ctx context.Context, app *cli.App, args []string) int {
	where := ""
	var notFound error
	app.ExitErrHandler = func(c *cli.Context, err error) {
		if err != nil && where == "" {
			where = commandName(c)
		}
	}
	app.CommandNotFound = func(c *cli.Context, name string) {
		notFound = Usage("unknown command %q (see %s --help)", name, commandName(c))
		where = commandName(c)
	}
	err := app.RunContext(ctx, args)
	if err == nil {
		err = notFound
	}
	if err == nil {
		return CodeOK
	}
	if where == "" {
		where = app.Name
	}
	w := app.ErrWriter
	if w == nil {
		w = cli.ErrWriter
	}
	if line := Line(where, err); line != "" {
		fmt.Fprintln(w, line)
	}
	return Code(err)
}

// releaseVersion is the label --version and the agent's lifecycle records show.
func releaseVersion(v string) string {
	if v != "" && v != "dev" {
		return v
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// VersionText is what `<binary> --version` prints: the release version, the protocol versions
// this build speaks (proto's table/message schema, the shim ↔ agent wire), the Go toolchain and
// platform, and the source commit the Go build recorded (runtime/debug build settings
// vcs.revision, vcs.time, vcs.modified; "unknown" when built without them, as `go test` and
// `go build -buildvcs=false` are).
func VersionText(binary, version string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s\n", binary, version)
	fmt.Fprintf(&b, "  proto schema: %s\n", proto.SchemaVersion)
	fmt.Fprintf(&b, "  shim wire:    %d\n", proto.WireVersion)
	fmt.Fprintf(&b, "  go:           %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(&b, "  commit:       %s\n", commit())
	return b.String()
}

// commit is the build's VCS revision, its time and "(modified)" for a dirty tree; "unknown"
// without build information.
func commit() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	var rev, at string
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			at = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "unknown"
	}
	if at != "" {
		rev += " " + at
	}
	if dirty {
		rev += " (modified)"
	}
	return rev
}
