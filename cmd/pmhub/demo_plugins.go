package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/profilemate/profilemate/analysis"
	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/plugins/host"
)

// demoPlugins is the demo's plugin host: the four in-tree analyses hot-added once the session
// has started, then their findings awaited after it ended.
type demoPlugins struct {
	dir  string // the watched plugins folder
	stop func()
}

// startDemoPlugins runs a plugin host beside the demo's hub (plugins folder <hubData>/plugins).
func startDemoPlugins(ctx context.Context, h *hub.Server, hubData string) (*demoPlugins, error) {
	dir := filepath.Join(hubData, "plugins")
	// The host's own log (starts, exits, restarts) goes to a file beside the agents' logs, so the
	// demo's output stays the session's story.
	logf, err := os.Create(filepath.Join(filepath.Dir(hubData), "plugins.log"))
	if err != nil {
		return nil, err
	}
	ph, err := host.New(host.Config{Dir: dir, StateDir: filepath.Join(hubData, "plugins-state"), DataDir: hubData,
		Conn: h.Conn(), HostName: "hub", Logger: slog.New(slog.NewTextHandler(logf, nil))})
	if err != nil {
		logf.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = ph.Run(ctx)
	}()
	return &demoPlugins{dir: dir, stop: func() { cancel(); <-done; logf.Close() }}, nil
}

// hotAdd waits until the session is open on the hub, then drops one launcher per analysis into
// the plugins folder (written beside it and renamed in, so the host never sees half a file). Each
// launcher execs this pmhub's hidden analysis-plugin command. It returns the names added.
func (d *demoPlugins) hotAdd(ctx context.Context, h *hub.Server, session string, out io.Writer) ([]string, error) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for open := false; !open; {
		for _, s := range h.Sessions() {
			if s.Session == session {
				open = true
			}
		}
		if open {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("session %s did not start", session)
		case <-tick.C:
		}
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, a := range analysis.All() {
		tmp := filepath.Join(filepath.Dir(d.dir), "."+a.Name+".tmp")
		script := fmt.Sprintf("#!/bin/sh\nexec '%s' analysis-plugin %s\n", strings.ReplaceAll(self, "'", `'\''`), a.Name)
		if err := os.WriteFile(tmp, []byte(script), 0o755); err != nil {
			return nil, err
		}
		if err := os.Rename(tmp, filepath.Join(d.dir, a.Name)); err != nil {
			return nil, err
		}
		names = append(names, a.Name)
	}
	fmt.Fprintf(out, "plugins: hot-added %s while session %s runs\n", strings.Join(names, ", "), session)
	return names, nil
}

// waitFindings polls the session's findings.csv until every named plugin has written its
// findings (they come when the plugin closes the session, after its last batch).
func waitFindings(ctx context.Context, dir string, names []string) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		fs, err := analysis.ReadFindings(filepath.Join(dir, analysis.FindingsTable+".csv"))
		if err == nil {
			seen := map[string]bool{}
			for _, f := range fs {
				seen[f.Plugin] = true
			}
			var missing []string
			for _, n := range names {
				if !seen[n] {
					missing = append(missing, n)
				}
			}
			if len(missing) == 0 {
				return nil
			}
			select {
			case <-ctx.Done():
				sort.Strings(missing)
				return fmt.Errorf("no findings from %s", strings.Join(missing, ", "))
			case <-tick.C:
			}
			continue
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("findings: %w", err)
		case <-tick.C:
		}
	}
}
