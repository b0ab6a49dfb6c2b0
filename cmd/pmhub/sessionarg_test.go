package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSessionNotFoundSaysWhere: a SESSION that show, report and export cannot find is a usage
// error (exit 2) that names the folder looked in and what it holds: the sessions there, none, a
// data folder that does not exist or is not a hub's (the sessions/ folder itself given as --data).
// Flags may follow SESSION (`show S --data D` used to say "give one SESSION id").
func TestSessionNotFoundSaysWhere(t *testing.T) {
	full, empty := t.TempDir(), t.TempDir()
	for _, id := range []string{"20260101_000000_aaaaaa", "20260102_000000_bbbbbb"} {
		if err := os.MkdirAll(filepath.Join(full, "sessions", id), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(empty, "sessions"), 0o755); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "nowhere")
	// A shim's standalone folder (no agent): process folders, each with its metadata.json.
	standalone := filepath.Join(t.TempDir(), "session_20260103_000000_cccccc")
	if err := os.MkdirAll(filepath.Join(standalone, "worker-0-123"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(standalone, "worker-0-123", "metadata.json"), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	sessions := filepath.Join(full, "sessions")
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"show", "nope", "--data", full}, []string{`no session "nope" in ` + sessions, "20260101_000000_aaaaaa, 20260102_000000_bbbbbb"}},
		{[]string{"show", "--data", full, "nope"}, []string{`no session "nope" in ` + sessions}},
		{[]string{"show", "nope", "--data", empty}, []string{"in " + filepath.Join(empty, "sessions"), "no sessions yet"}},
		{[]string{"show", "nope", "--data", missing}, []string{"the data folder " + missing + " does not exist"}},
		{[]string{"show", "nope", "--data", sessions}, []string{sessions + " is not a hub data folder", "its parent, " + full}},
		{[]string{"show", "nope", "--json", "--data", full}, []string{`no session "nope" in ` + sessions}},
		{[]string{"show", t.TempDir(), "--data", full}, []string{"is not a session folder"}},
		{[]string{"show", standalone, "--data", full}, []string{standalone + " is a standalone folder", "pmhub import --data " + full + " " + standalone}},
		{[]string{"report", standalone, "--data", full}, []string{"pmhub import"}},
		{[]string{"report", "nope", "--data", full}, []string{`no session "nope" in ` + sessions, "20260102_000000_bbbbbb"}},
		{[]string{"export", "nope", "--data", missing}, []string{"does not exist"}},
		{[]string{"sessions", "--data", missing}, []string{"the data folder " + missing + " does not exist"}},
	} {
		code, out := runServe(t, c.args...)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2; output %q", c.args, code, out)
		}
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("%v: output %q does not say %q", c.args, out, w)
			}
		}
	}
}
