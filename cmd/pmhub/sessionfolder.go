package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/urfave/cli/v2"

	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/internal/cliapp"
	"github.com/profilemate/profilemate/internal/natsclient"
)

// clusterFlags are --nats (no default: the data folder alone answers) and the NATS client flags
// of the commands that read sessions: with --nats they also answer for sessions of shared hubs
// (docs/SCALING.md) from the session index and the Object Store's checkpoints.
func clusterFlags() []cli.Flag {
	return natsclient.Flags("", "NATS cluster of shared hubs: sessions this data folder lacks (or holds an older copy of) come from its session index and checkpoints, fetched into <data>/cache/")
}

// fetchTimeout bounds fetching one session's checkpoint.
const fetchTimeout = 5 * time.Minute

// sessionFolderOf makes SESSION available as a local folder, the one path show, report and
// export read through: a folder given as SESSION (it holds metadata.json) as is; else
// hub.SessionFolder: <data>/sessions/<SESSION> when current, else (with --nats) the session's
// latest checkpoint fetched into <data>/cache/sessions/<SESSION>. Errors name the command's
// data folder; a connection failure is a cli exit error.
func sessionFolderOf(c *cli.Context, arg string) (string, error) {
	if st, err := os.Stat(filepath.Join(arg, hub.MetadataFile)); err == nil && !st.IsDir() {
		return arg, nil
	}
	data := c.String("data")
	var js jetstream.JetStream
	if c.String(natsclient.FlagURL) != "" {
		name := "pmhub " + c.Command.Name
		nc, err := connectNATS(c, name)
		if err != nil {
			// The callers name the command themselves.
			return "", errors.New(strings.TrimPrefix(err.Error(), name+": "))
		}
		defer nc.Close()
		if js, err = jetstream.New(nc); err != nil {
			return "", err
		}
	}
	ctx, cancel := context.WithTimeout(c.Context, fetchTimeout)
	defer cancel()
	dir, err := hub.SessionFolder(ctx, js, data, arg)
	if errors.Is(err, hub.ErrNoSession) {
		if js != nil {
			return "", cliapp.Usage("%w; nor is it in the cluster's session index", sessionNotFound(data, arg))
		}
		return "", sessionNotFound(data, arg)
	}
	return dir, err
}

// withClusterFlags adds clusterFlags to a command that reads sessions.
func withClusterFlags(cmd *cli.Command) *cli.Command {
	cmd.Flags = append(cmd.Flags, clusterFlags()...)
	return cmd
}

// withIndex adds, with --nats, the sessions of the cluster's session index that the data folder
// lacks (their metadata from the index entry), and takes the index's word on the ones it holds
// an older copy of.
func withIndex(c *cli.Context, local []*hub.Metadata) ([]*hub.Metadata, error) {
	if c.String(natsclient.FlagURL) == "" {
		return local, nil
	}
	nc, err := connectNATS(c, "pmhub "+c.Command.Name)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, cli.Exit("pmhub "+c.Command.Name+": "+err.Error(), 1)
	}
	ctx, cancel := context.WithTimeout(c.Context, time.Minute)
	defer cancel()
	idx, err := hub.ListIndex(ctx, js)
	if err != nil {
		return nil, cli.Exit("pmhub "+c.Command.Name+": "+err.Error(), 1)
	}
	byID := map[string]int{}
	for i, m := range local {
		byID[m.Session] = i
	}
	for _, e := range idx {
		m := &hub.Metadata{Session: e.Session, Status: e.Status, EndReason: e.EndReason, StartNS: e.StartNS, EndNS: e.EndNS,
			Rows: e.Rows, Bytes: e.Bytes, Hosts: map[string]*hub.HostMeta{}}
		for _, h := range e.Hosts {
			m.Hosts[h] = &hub.HostMeta{}
		}
		// The index has the count only: the list holds that many empty entries.
		m.Processes = make([]*hub.ProcMeta, e.Processes)
		for i := range m.Processes {
			m.Processes[i] = &hub.ProcMeta{}
		}
		if i, ok := byID[e.Session]; ok {
			if hub.CopyIsCurrent(c.String("data"), e) {
				continue
			}
			local[i] = m
			continue
		}
		local = append(local, m)
	}
	return local, nil
}

// openViewOf is openView over the folder sessionFolderOf makes available: the data folder's own
// copy, or (with --nats) the session's latest checkpoint fetched into <data>/cache/.
func openViewOf(c *cli.Context, arg string, w hub.Window) (*sessionView, error) {
	return openViewOfLinked(c, arg, w, false)
}

// openViewOfLinked is openViewOf; with linked, a rotated session read without a range is a
// hub.LinkSegments folder (no rows copied) for readers that read one (report, export, analysis).
func openViewOfLinked(c *cli.Context, arg string, w hub.Window, linked bool) (*sessionView, error) {
	data := c.String("data")
	// Without --nats the data folder alone answers, exactly as openView reads it.
	if st, err := os.Stat(filepath.Join(arg, hub.MetadataFile)); c.String(natsclient.FlagURL) != "" && (err != nil || st.IsDir()) {
		dir, err := sessionFolderOf(c, arg)
		if err != nil {
			return nil, err
		}
		// dir is <root>/sessions/<arg>: read every segment under that root.
		data = filepath.Dir(filepath.Dir(dir))
	}
	return openViewLinked(data, arg, w, linked)
}
