package dirs

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

func TestSystemdFoldersWin(t *testing.T) {
	t.Setenv("STATE_DIRECTORY", "/var/lib/pm-a:/var/lib/pm-b")
	t.Setenv("RUNTIME_DIRECTORY", "/run/pm-a")
	if got := State("hub"); got != "/var/lib/pm-a/hub" {
		t.Errorf("State = %s", got)
	}
	if got := Runtime("agent.sock"); got != "/run/pm-a/agent.sock" {
		t.Errorf("Runtime = %s", got)
	}
}

func TestUserFolders(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root gets the system folders")
	}
	t.Setenv("STATE_DIRECTORY", "")
	t.Setenv("RUNTIME_DIRECTORY", "")
	t.Setenv("XDG_STATE_HOME", "")
	t.Setenv("HOME", "/home/you")
	t.Setenv("XDG_RUNTIME_DIR", "relative/ignored")
	if got := State("hub"); got != "/home/you/.local/state/profilemate/hub" {
		t.Errorf("State = %s", got)
	}
	if got := Runtime("agent.sock"); got != filepath.Join(os.TempDir(), "profilemate-"+strconv.Itoa(os.Getuid()), "agent.sock") {
		t.Errorf("Runtime = %s", got)
	}
}

func TestRootFolders(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("not root")
	}
	t.Setenv("STATE_DIRECTORY", "")
	t.Setenv("RUNTIME_DIRECTORY", "")
	if State("hub") != "/var/lib/profilemate/hub" || Runtime("agent.sock") != "/run/profilemate/agent.sock" {
		t.Errorf("root: %s, %s", State("hub"), Runtime("agent.sock"))
	}
}
