package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/internal/cliapp"
)

// sessionArg is the one SESSION argument of the commands that read a session (show, report,
// export); flags may follow it (`pmhub show S --data D`). openView resolves it. Errors are usage
// errors (exit code 2).
func sessionArg(c *cli.Context) (string, error) {
	args, err := positional(c)
	if err != nil {
		return "", cliapp.AsUsage(err)
	}
	if len(args) != 1 {
		got := ""
		if len(args) > 1 {
			got = fmt.Sprintf("; got %q", args)
		}
		return "", cliapp.Usage("give one SESSION id or session folder (pmhub sessions --data %s lists them)%s", c.String("data"), got)
	}
	return args[0], nil
}

// sessionFolder resolves SESSION to one folder: a folder holding metadata.json as given, else
// <data>/sessions/<SESSION>; else the usage error of sessionNotFound.
func sessionFolder(data, arg string) (string, error) {
	if st, err := os.Stat(filepath.Join(arg, hub.MetadataFile)); err == nil && !st.IsDir() {
		return arg, nil
	}
	dir := hub.SessionDir(data, arg)
	if _, err := os.Stat(dir); err == nil && !strings.ContainsAny(arg, `/\`) {
		return dir, nil
	}
	return "", sessionNotFound(data, arg)
}

// sessionNotFound is the usage error (exit code 2) of a SESSION that names no session: it names
// the folder looked in and what it holds (the sessions there, the ten newest; none), or why data
// is no hub data folder, or that a folder given as SESSION has no metadata.json.
func sessionNotFound(data, arg string) error {
	if st, err := os.Stat(arg); err == nil && st.IsDir() && strings.ContainsAny(arg, `/\`) {
		if standaloneFolder(arg) {
			return cliapp.Usage("%s is a standalone folder (one folder per process, written by the shim without an agent), "+
				"not a hub session: merge it into a hub data folder first with `pmhub import --data %s %s` (docs/multinode.md)", arg, data, arg)
		}
		return cliapp.Usage("%s is not a session folder: it has no %s", arg, hub.MetadataFile)
	}
	ids, err := sessionIDs(data)
	if err != nil {
		return cliapp.Usage("no session %q: %w", arg, err)
	}
	root := filepath.Dir(hub.SessionDir(data, "x"))
	if len(ids) == 0 {
		return cliapp.Usage("no session %q in %s: it holds no sessions yet", arg, root)
	}
	const most = 10
	list := strings.Join(ids, ", ")
	if len(ids) > most {
		list = fmt.Sprintf("%s and %d older", strings.Join(ids[len(ids)-most:], ", "), len(ids)-most)
	}
	return cliapp.Usage("no session %q in %s; the sessions there: %s", arg, root, list)
}

// sessionIDs lists the sessions under data's sessions/ folder, sorted (ids start with their UTC
// start time, so the newest come last); a rotated session's closed segments
// ("<session>@<index>") count as their session. Errors say why data is not a hub data folder: it
// does not exist, is not a folder, or has no sessions/ folder.
func sessionIDs(data string) ([]string, error) {
	folders, err := sessionFolders(data)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var ids []string
	for _, f := range folders {
		if id, _, _ := hub.SplitSegmentFolder(f); !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids, nil
}

// sessionFolders lists the folder names under data's sessions/ folder in name order (a session's
// own folder before its closed segments), with sessionIDs' errors.
func sessionFolders(data string) ([]string, error) {
	st, err := os.Stat(data)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("the data folder %s does not exist (--data or PROFILEMATE_HUB_DATA names the hub's)", data)
	case err != nil:
		return nil, err
	case !st.IsDir():
		return nil, fmt.Errorf("the data folder %s is not a folder", data)
	}
	root := filepath.Dir(hub.SessionDir(data, "x"))
	entries, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		hint := "--data or PROFILEMATE_HUB_DATA names the hub's"
		if filepath.Base(filepath.Clean(data)) == filepath.Base(root) {
			hint = "the data folder is its parent, " + filepath.Dir(filepath.Clean(data))
		}
		return nil, fmt.Errorf("%s is not a hub data folder: it has no %s folder (%s)", data, filepath.Base(root), hint)
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// standaloneFolder tells whether dir is a shim's standalone session_<id>/ folder: a folder of
// process folders (<role>-<rank>-<pid>/), each with its own metadata.json.
func standaloneFolder(dir string) bool {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range ents {
		if e.IsDir() {
			if _, err := os.Stat(filepath.Join(dir, e.Name(), hub.MetadataFile)); err == nil {
				return true
			}
		}
	}
	return false
}
