package hub

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestImportRefusesNonStandaloneFolders: a folder without process folders (a hub session, an
// empty folder) and a folder that does not exist are refused with ErrImport, naming the folder,
// and leave the data folder without a session.
func TestImportRefusesNonStandaloneFolders(t *testing.T) {
	data := t.TempDir()
	hubSession := t.TempDir()
	if err := os.WriteFile(filepath.Join(hubSession, MetadataFile), []byte(`{"session":"s"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{hubSession, t.TempDir(), filepath.Join(t.TempDir(), "missing")} {
		_, err := Import(data, []string{dir}, "")
		if !errors.Is(err, ErrImport) || !strings.Contains(err.Error(), filepath.Base(dir)) {
			t.Errorf("%s: err %v, want ErrImport naming the folder", dir, err)
		}
	}
	if _, err := Import(data, nil, ""); !errors.Is(err, ErrImport) {
		t.Errorf("no folder: err %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(data, "sessions")); len(ents) != 0 {
		t.Errorf("refused imports left %d entries", len(ents))
	}
}
