package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/internal/cliapp"
	"github.com/profilemate/profilemate/plugins/host"
)

// pluginServeFlags are pmhub serve's plugin flags.
func pluginServeFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "plugins-dir", EnvVars: []string{"PROFILEMATE_PLUGINS_DIR"}, Usage: "profiler plugins folder, watched for binaries added, replaced or removed (default: <data>/plugins)"},
		&cli.StringFlag{Name: "plugins-allow", EnvVars: []string{"PROFILEMATE_PLUGINS_ALLOW"}, Usage: "sha256 allowlist (sha256sum format): only these plugin binaries run"},
		&cli.DurationFlag{Name: "plugin-timeout", Value: host.DefaultCallTimeout, EnvVars: []string{"PROFILEMATE_PLUGIN_TIMEOUT"}, Usage: "deadline of every plugin call; a plugin that misses it is restarted"},
		&cli.BoolFlag{Name: "plugins", Value: true, EnvVars: []string{"PROFILEMATE_PLUGINS"}, Usage: "run profiler plugins (--plugins=false: off)"},
	}
}

func pluginsDir(c *cli.Context) string {
	if d := c.String("plugins-dir"); d != "" {
		return d
	}
	return filepath.Join(c.String("data"), "plugins")
}

func pluginsState(c *cli.Context) string { return filepath.Join(c.String("data"), "plugins-state") }

func pluginAllow(c *cli.Context) (map[string]bool, error) {
	if p := c.String("plugins-allow"); p != "" {
		return host.ReadAllowlist(p)
	}
	return nil, nil
}

// startPlugins runs the plugin host beside a started hub with the allowlist read from
// --plugins-allow (nil: none); stop ends it and its plugins.
func startPlugins(c *cli.Context, h *hub.Server, allow map[string]bool) (stop func(), err error) {
	if !c.Bool("plugins") {
		return func() {}, nil
	}
	hn, _ := os.Hostname()
	ph, err := host.New(host.Config{Dir: pluginsDir(c), StateDir: pluginsState(c), DataDir: c.String("data"),
		Conn: h.Conn(), HostName: hn, Allow: allow, CallTimeout: c.Duration("plugin-timeout")})
	if err != nil {
		return nil, cli.Exit(err.Error(), 2)
	}
	ctx, cancel := context.WithCancel(c.Context)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := ph.Run(ctx); err != nil {
			fmt.Fprintln(c.App.ErrWriter, "pmhub: plugins:", err)
		}
	}()
	return func() { cancel(); <-done }, nil
}

func pluginsCommand() *cli.Command {
	data := dataFlag()
	dir := &cli.StringFlag{Name: "plugins-dir", EnvVars: []string{"PROFILEMATE_PLUGINS_DIR"}, Usage: "plugins folder (default: <data>/plugins)"}
	allow := &cli.StringFlag{Name: "plugins-allow", EnvVars: []string{"PROFILEMATE_PLUGINS_ALLOW"}, Usage: "sha256 allowlist (sha256sum format)"}
	timeout := &cli.DurationFlag{Name: "plugin-timeout", Value: host.DefaultCallTimeout, EnvVars: []string{"PROFILEMATE_PLUGIN_TIMEOUT"}, Usage: "deadline of every plugin call"}
	return &cli.Command{
		Name:  "plugins",
		Usage: "list, add, remove and run profiler plugins",
		Subcommands: []*cli.Command{
			{
				Name: "ls", Usage: "list the plugins the running hub has (name, version, components, kinds, state, lag, restarts, rows)",
				Flags:  []cli.Flag{data, &cli.BoolFlag{Name: "json", EnvVars: []string{"PROFILEMATE_JSON"}, Usage: "print status.json's objects"}},
				Action: pluginsLs,
			},
			{
				Name: "add", Usage: "check a plugin binary (handshake, describe, allowlist) and move it into the plugins folder",
				ArgsUsage: "PATH", Flags: []cli.Flag{data, dir, allow, timeout}, Action: pluginsAdd,
			},
			{
				Name: "rm", Usage: "remove a plugin from the folder; the hub stops it",
				ArgsUsage: "NAME", Flags: []cli.Flag{data, dir}, Action: pluginsRm,
			},
			{
				Name: "run", Usage: "run a plugin over one session (ended ones too) and write the rows it is missing",
				ArgsUsage: "NAME|PATH SESSION",
				Flags:     append([]cli.Flag{data, dir, allow, timeout}, hubNATSFlags()...),
				Action:    pluginsRun,
			},
		},
	}
}

func pluginsLs(c *cli.Context) error {
	if args, err := positional(c); err != nil || len(args) > 0 {
		return cli.Exit("pmhub plugins ls: takes no arguments"+why(err), 2)
	}
	st, err := host.ReadStatus(pluginsState(c))
	if errors.Is(err, os.ErrNotExist) {
		st = nil
	} else if err != nil {
		return cli.Exit("pmhub plugins ls: "+err.Error(), 1)
	}
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		if st == nil {
			st = []host.Status{}
		}
		return enc.Encode(st)
	}
	printPlugins(c.App.Writer, st)
	return nil
}

func printPlugins(w io.Writer, st []host.Status) {
	if len(st) == 0 {
		fmt.Fprintln(w, "no plugins (pmhub plugins add PATH)")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FILE\tNAME\tVERSION\tCOMPONENTS\tKINDS\tSTATE\tLAG\tRESTARTS\tROWS\tNOTE")
	for _, s := range st {
		note := s.Reason
		if note == "" && s.LastError != "" {
			note = "last error: " + s.LastError
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\n", s.File, dash(s.Name), dash(s.Version),
			dash(strings.Join(s.Components, ",")), dash(strings.Join(s.Kinds, ",")), s.State, s.Lag, s.Restarts, s.Rows, note)
	}
	tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func pluginsAdd(c *cli.Context) error {
	args, err := positional(c)
	if err != nil || len(args) != 1 {
		return cli.Exit("pmhub plugins add: want one PATH"+why(err), 2)
	}
	if err := positiveTimeout(c); err != nil {
		return err
	}
	src := args[0]
	if _, err := os.Stat(src); errors.Is(err, os.ErrNotExist) {
		return cliapp.Usage("no file %s", src)
	}
	ctx, cancel := context.WithTimeout(c.Context, c.Duration("plugin-timeout")+10*time.Second)
	defer cancel()
	info, sum, err := host.Inspect(ctx, src, c.Duration("plugin-timeout"))
	if err != nil {
		return cli.Exit("pmhub plugins add: "+err.Error(), 1)
	}
	allow, err := pluginAllow(c)
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	if allow != nil && !allow[sum] {
		return cli.Exit(fmt.Sprintf("pmhub plugins add: %s (sha256 %s) is not on the allowlist %s", src, sum, c.String("plugins-allow")), 1)
	}
	dir := pluginsDir(c)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return cli.Exit("pmhub plugins add: "+err.Error(), 1)
	}
	// Written as a hidden file and renamed in, so the hub never sees it half-written.
	dst := filepath.Join(dir, info.Name)
	tmp := filepath.Join(dir, "."+info.Name+".tmp")
	if err := copyFile(src, tmp); err != nil {
		return cli.Exit("pmhub plugins add: "+err.Error(), 1)
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return cli.Exit("pmhub plugins add: "+err.Error(), 1)
	}
	fmt.Fprintf(c.App.Writer, "added %s %s (kinds %s, sha256 %s) as %s\n", info.Name, info.Version, strings.Join(info.Kinds, ","), sum, dst)
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(dst)
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// pluginFile finds a plugin by file name or, through the running hub's status, by plugin name.
func pluginFile(c *cli.Context, name string) (string, error) {
	dir := pluginsDir(c)
	if !strings.ContainsRune(name, os.PathSeparator) {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return filepath.Join(dir, name), nil
		}
		st, _ := host.ReadStatus(pluginsState(c))
		for _, s := range st {
			if s.Name == name {
				return filepath.Join(dir, s.File), nil
			}
		}
		return "", fmt.Errorf("no plugin %s in %s", name, dir)
	}
	return name, nil
}

func pluginsRm(c *cli.Context) error {
	args, err := positional(c)
	if err != nil || len(args) != 1 {
		return cli.Exit("pmhub plugins rm: want one NAME"+why(err), 2)
	}
	path, err := pluginFile(c, args[0])
	if err != nil || filepath.Dir(path) != filepath.Clean(pluginsDir(c)) {
		return cli.Exit(fmt.Sprintf("pmhub plugins rm: no plugin %s in %s", args[0], pluginsDir(c)), 2)
	}
	if err := os.Remove(path); err != nil {
		return cli.Exit("pmhub plugins rm: "+err.Error(), 1)
	}
	fmt.Fprintf(c.App.Writer, "removed %s; the hub stops it\n", path)
	return nil
}

func pluginsRun(c *cli.Context) error {
	args, err := positional(c)
	if err != nil || len(args) != 2 {
		return cli.Exit("pmhub plugins run: want NAME|PATH SESSION"+why(err), 2)
	}
	if err := positiveTimeout(c); err != nil {
		return err
	}
	path, err := pluginFile(c, args[0])
	if err != nil {
		return cliapp.AsUsage(err)
	}
	session := args[1]
	if _, err := sessionFolder(c.String("data"), session); err != nil {
		return err
	}
	if _, err := hub.ReadMetadata(hub.SessionDir(c.String("data"), session)); err != nil {
		return err
	}
	allow, err := pluginAllow(c)
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	nc, err := connectNATS(c, "pmhub plugins run")
	if err != nil {
		return err
	}
	defer nc.Close()
	tmpState, err := os.MkdirTemp("", "pmhub-plugins-run")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmpState)
	hn, _ := os.Hostname()
	ph, err := host.New(host.Config{Dir: tmpState, StateDir: tmpState, DataDir: c.String("data"), Conn: nc, HostName: hn,
		Allow: allow, CallTimeout: c.Duration("plugin-timeout")})
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	st, err := ph.RunSession(c.Context, path, session)
	if err != nil {
		return cli.Exit("pmhub plugins run: "+err.Error(), 1)
	}
	fmt.Fprintf(c.App.Writer, "%s %s over %s: %d new rows\n", st.Name, st.Version, session, st.Rows)
	return nil
}

// positional lets flags follow the positional arguments (`pmhub profilers off KIND --session S`):
// urfave/cli stops reading flags at the first argument, so the rest is set on the context here.
// It returns the positional arguments; an unknown flag or one without its value is an error.
func positional(c *cli.Context) ([]string, error) {
	var pos []string
	args := c.Args().Slice()
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			pos = append(pos, a)
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		var f cli.Flag
		for _, cf := range c.Command.Flags {
			for _, n := range cf.Names() {
				if n == name {
					f = cf
				}
			}
		}
		if f == nil {
			return nil, fmt.Errorf("unknown flag %s", a)
		}
		if _, isBool := f.(*cli.BoolFlag); isBool && !hasVal {
			val, hasVal = "true", true
		}
		if !hasVal {
			if i+1 >= len(args) {
				return nil, fmt.Errorf("flag %s needs a value", a)
			}
			i++
			val = args[i]
		}
		// Every name of the flag: the library keeps one value per name (-o and --output).
		for _, n := range f.Names() {
			if err := c.Set(n, val); err != nil {
				return nil, fmt.Errorf("flag %s: %w", a, err)
			}
		}
	}
	return pos, nil
}

// positiveTimeout refuses a --plugin-timeout of zero or less (zero would silently mean the
// default).
func positiveTimeout(c *cli.Context) error {
	if d := c.Duration("plugin-timeout"); d <= 0 {
		return cliapp.Usage("--plugin-timeout %s: must be positive", d)
	}
	return nil
}

func why(err error) string {
	if err == nil {
		return ""
	}
	return " (" + err.Error() + ")"
}
