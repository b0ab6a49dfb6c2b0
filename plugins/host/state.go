package host

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/profilemate/profilemate/hub"
)

// sessionState is what a plugin (one name and version) has done with one session.
type sessionState struct {
	// FirstSeq is the stream sequence the plugin began the session at: its replay point after a
	// restart.
	FirstSeq uint64 `json:"first_seq"`
	Closed   bool   `json:"closed,omitempty"`  // CloseSession answered and its rows written
	Skipped  bool   `json:"skipped,omitempty"` // ended before the plugin came; not replayed unless run
}

// pluginState is <state>/<name>/<version>.json.
type pluginState struct {
	Sessions map[string]*sessionState `json:"sessions"`
}

func statePath(stateDir, name, version string) string {
	return filepath.Join(stateDir, name, version+".json")
}

func loadState(path string) (*pluginState, error) {
	st := &pluginState{Sessions: map[string]*sessionState{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read plugin state: %w", err)
	}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("plugin state %s: %w", path, err)
	}
	if st.Sessions == nil {
		st.Sessions = map[string]*sessionState{}
	}
	return st, nil
}

func (st *pluginState) save(path string) error {
	if path == "" {
		return nil // a one-session run keeps no state
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(b, '\n'))
}

// writeFileAtomic writes b to a temporary file beside path, syncs it and renames it over path.
func writeFileAtomic(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := fmt.Sprintf("%s.%d.tmp", path, time.Now().UnixNano())
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("close %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s: %w", path, err)
	}
	return nil
}

// SessionPluginsFile is the file in a session folder that counts each plugin's work on the
// session: PluginsFile[plugin] = SessionPlugin.
const SessionPluginsFile = "plugins.json"

// SessionPlugin is one plugin's entry in a session's plugins.json.
type SessionPlugin struct {
	Version  string           `json:"version"`
	Rows     map[string]int64 `json:"rows"`      // derived table → rows written
	Restarts int              `json:"restarts"`  // restarts of the plugin while the session was open
	FirstSeq uint64           `json:"first_seq"` // stream sequence the plugin's input began at
	// RetentionCut is true when the session's first events had already left the stream when the
	// plugin began (its rows then cover only the rest).
	RetentionCut bool  `json:"retention_cut,omitempty"`
	Closed       bool  `json:"closed"`
	Findings     int64 `json:"findings"`
}

// ReadSessionPlugins reads a session folder's plugins.json (empty when absent).
func ReadSessionPlugins(dir string) (map[string]SessionPlugin, error) {
	out := map[string]SessionPlugin{}
	b, err := os.ReadFile(filepath.Join(dir, SessionPluginsFile))
	if errors.Is(err, os.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", SessionPluginsFile, err)
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("%s: %w", SessionPluginsFile, err)
	}
	return out, nil
}

// updateSessionPlugins rewrites one plugin's entry of plugins.json in w's session's live folder,
// under the hub's rotation lock (shared), so a rotation never moves the folder mid-write. Error: the
// live folder is not there (a rotation a crash cut short), or the file cannot be written.
func updateSessionPlugins(w *sessionWriter, plugin string, e SessionPlugin) error {
	unlock, err := hub.LockRotation(w.dataDir, false)
	if err != nil {
		return err
	}
	defer unlock()
	dir := w.dir
	if _, err := os.Stat(filepath.Join(dir, hub.MetadataFile)); err != nil {
		return fmt.Errorf("live folder of session %s: %w", w.session, err)
	}
	path := filepath.Join(dir, SessionPluginsFile)
	defer lockFile(path)()
	all, err := ReadSessionPlugins(dir)
	if err != nil {
		all = map[string]SessionPlugin{}
	}
	all[plugin] = e
	b, err := json.MarshalIndent(all, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(b, '\n'))
}
