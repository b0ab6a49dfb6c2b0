// Package dirs gives pmagent's and pmhub's default folders, one rule for both: systemd's
// STATE_DIRECTORY / RUNTIME_DIRECTORY when set (a unit with StateDirectory= / RuntimeDirectory=),
// else the system folders as root, else the user's XDG folders, so both binaries work as an
// unprivileged user without flags.
package dirs

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// State returns <state root>/sub, where the state root is the first entry of $STATE_DIRECTORY,
// else /var/lib/profilemate as root, else $XDG_STATE_HOME/profilemate, else
// ~/.local/state/profilemate, else $TMPDIR/profilemate-<uid>.
func State(sub string) string {
	return filepath.Join(stateRoot(), sub)
}

func stateRoot() string {
	if d := firstEntry(os.Getenv("STATE_DIRECTORY")); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return "/var/lib/profilemate"
	}
	if d := os.Getenv("XDG_STATE_HOME"); filepath.IsAbs(d) {
		return filepath.Join(d, "profilemate")
	}
	if h, err := os.UserHomeDir(); err == nil && h != "" {
		return filepath.Join(h, ".local", "state", "profilemate")
	}
	return userTemp()
}

// Runtime returns <runtime root>/sub, where the runtime root is the first entry of
// $RUNTIME_DIRECTORY, else /run/profilemate as root, else $XDG_RUNTIME_DIR/profilemate, else
// $TMPDIR/profilemate-<uid>.
func Runtime(sub string) string {
	return filepath.Join(runtimeRoot(), sub)
}

func runtimeRoot() string {
	if d := firstEntry(os.Getenv("RUNTIME_DIRECTORY")); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return "/run/profilemate"
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); filepath.IsAbs(d) {
		return filepath.Join(d, "profilemate")
	}
	return userTemp()
}

func userTemp() string {
	return filepath.Join(os.TempDir(), "profilemate-"+strconv.Itoa(os.Getuid()))
}

// firstEntry: systemd joins several folders of one kind with ':'; ours is the first.
func firstEntry(list string) string {
	first, _, _ := strings.Cut(list, ":")
	if !filepath.IsAbs(first) {
		return ""
	}
	return first
}
