package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/profilemate/profilemate/hub"
)

// windowFlags are --since and --until of the commands that read a session (show, report, export):
// a time range across the segments of a rotated session (docs/hub.md "Long-lived sessions").
func windowFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "since", EnvVars: []string{"PROFILEMATE_SINCE"}, Usage: "only rows at or after this time (aligned clock): RFC 3339 (2026-11-30T08:00:00Z) or a duration back from now (3h)"},
		&cli.StringFlag{Name: "until", EnvVars: []string{"PROFILEMATE_UNTIL"}, Usage: "only rows before this time: RFC 3339 or a duration back from now (30m)"},
	}
}

// parseWhen reads a --since/--until value: an RFC 3339 time, or a non-negative duration meaning
// that long before now. Errors name the flag and both forms.
func parseWhen(flag, v string, now time.Time) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("--%s %q: want an RFC 3339 time (2026-11-30T08:00:00Z) or a duration back from now (3h)", flag, v)
}

// window is the --since/--until range of c. Errors: a value of neither form, or --since not
// before --until.
func window(c *cli.Context) (hub.Window, error) {
	now := time.Now()
	since, err := parseWhen("since", c.String("since"), now)
	if err != nil {
		return hub.Window{}, err
	}
	until, err := parseWhen("until", c.String("until"), now)
	if err != nil {
		return hub.Window{}, err
	}
	if !since.IsZero() && !until.IsZero() && !since.Before(until) {
		return hub.Window{}, fmt.Errorf("--since %s is not before --until %s", since.UTC().Format(time.RFC3339), until.UTC().Format(time.RFC3339))
	}
	return hub.Window{Since: since, Until: until}, nil
}

// sessionView is what a reader reads for one SESSION argument.
type sessionView struct {
	// Dir is the folder to read: the session's own folder when it has one segment and no range
	// was asked for, else a temporary folder hub.CopyWindow assembled.
	Dir string
	// Home is the session's own folder (its live segment), for what the commands print.
	Home string
	// Segments are the session's segment folders on disk, oldest first.
	Segments []string
	// Window is the assembled folder's record (nil when Dir is the session's own folder).
	Window *hub.WindowMeta
	tmp    string
}

// Close removes the temporary folder, if any (once; later calls do nothing). Commands close the
// view as soon as they have read it, before printing: a closed pipe (| head) ends the process at
// its next write, before deferred calls run.
func (v *sessionView) Close() {
	if v.tmp != "" {
		os.RemoveAll(v.tmp)
		v.tmp = ""
	}
}

// openView resolves SESSION (an id under data, or a session folder) with the range w: every
// segment of a rotated session, filtered to w (hub.CopyWindow). Errors: no such session or folder;
// the segments cannot be read or copied.
func openView(data, arg string, w hub.Window) (*sessionView, error) {
	return openViewLinked(data, arg, w, false)
}

// openViewLinked is openView; with linked and no range, a rotated session's rows are not copied:
// the view is a hub.LinkSegments folder, for readers that read one (report, export, analysis).
func openViewLinked(data, arg string, w hub.Window, linked bool) (*sessionView, error) {
	var segs []string
	if st, err := os.Stat(filepath.Join(arg, hub.MetadataFile)); err == nil && !st.IsDir() {
		segs = []string{arg}
		// A folder under <data>/sessions/ of a rotated session: read its siblings too.
		if m, err := hub.ReadMetadata(arg); err == nil && m.Segment != nil && filepath.Base(filepath.Dir(filepath.Clean(arg))) == "sessions" {
			if all, err := hub.Segments(filepath.Dir(filepath.Dir(filepath.Clean(arg))), m.Session); err == nil {
				segs = all
			}
		}
	} else {
		all, err := hub.Segments(data, arg)
		if errors.Is(err, os.ErrNotExist) || strings.ContainsAny(arg, `/\`) {
			return nil, sessionNotFound(data, arg)
		}
		if err != nil {
			return nil, err
		}
		segs = all
	}
	v := &sessionView{Dir: segs[len(segs)-1], Home: segs[len(segs)-1], Segments: segs}
	if len(segs) == 1 && w.IsZero() {
		return v, nil
	}
	tmp, err := os.MkdirTemp("", "pmhub-window-")
	if err != nil {
		return nil, err
	}
	v.tmp = tmp
	dir := filepath.Join(tmp, filepath.Base(v.Home))
	copyWindow := hub.CopyWindow
	if w.IsZero() && linked {
		// Every row of every segment: the readers read the segments' own files in order.
		copyWindow = func(segs []string, _ hub.Window, dst string) (*hub.Metadata, error) {
			return hub.LinkSegments(segs, dst)
		}
	}
	m, err := copyWindow(segs, w, dir)
	if err != nil {
		v.Close()
		return nil, err
	}
	v.Dir, v.Window = dir, m.Window
	return v, nil
}

// describe is one line about the view for a human: the segments read and the range, "" for a
// plain one-segment session. rows is how many rows the view holds: a range that selects none says
// so, with when the session's rows are ("no rows from A to B; the session's rows are from C to D"),
// instead of counting the live segment it always reads.
func (v *sessionView) describe(rows int64) string {
	if v.Window == nil {
		return ""
	}
	ranged := v.Window.SinceNS != 0 || v.Window.UntilNS != 0
	if ranged && rows == 0 {
		s := fmt.Sprintf("no rows from %s to %s", when(v.Window.SinceNS), when(v.Window.UntilNS))
		if lo, hi := v.rowSpan(); lo != 0 {
			s += fmt.Sprintf("; the session's rows are from %s to %s", when(lo), when(hi))
		}
		return s
	}
	s := fmt.Sprintf("%d of %d segments", len(v.Window.Segments), len(v.Segments))
	if ranged {
		s += fmt.Sprintf(", rows from %s to %s", when(v.Window.SinceNS), when(v.Window.UntilNS))
	}
	return s
}

// rowSpan is the smallest and largest ts_aligned_ns of the rows of the session's segments on disk
// (their SegmentMeta; a session that never rotated: its start and end), 0 0 when unknown.
func (v *sessionView) rowSpan() (lo, hi int64) {
	for _, d := range v.Segments {
		m, err := hub.ReadMetadata(d)
		if err != nil {
			continue
		}
		first, last := m.StartNS, m.EndNS
		if g := m.Segment; g != nil {
			first, last = g.FirstAlignedNS, g.LastAlignedNS
		}
		if first != 0 && (lo == 0 || first < lo) {
			lo = first
		}
		hi = max(hi, last)
	}
	return lo, hi
}

// notes are what a reader of the view should know that its rows cannot tell: the segments
// retention removed (the oldest segment on disk has index k > 0: segments 0..k-1 are gone) when
// the range w reaches before the oldest row left ("segments 0-2 were removed by retention: no rows
// before 2026-11-30T08:10:00Z"). The session's metadata is read again; unreadable, no note.
func (v *sessionView) notes(w hub.Window) []string {
	if len(v.Segments) == 0 {
		return nil
	}
	m, err := hub.ReadMetadata(v.Segments[0])
	if err != nil || m.Segment == nil || m.Segment.Index == 0 {
		return nil
	}
	kept := m.Segment.FirstAlignedNS
	if kept == 0 {
		kept = m.Segment.StartNS
	}
	if !w.Since.IsZero() && kept != 0 && w.Since.UnixNano() >= kept {
		return nil // the range starts after what was removed
	}
	gone := "segment 0 was"
	if m.Segment.Index > 1 {
		gone = fmt.Sprintf("segments 0-%d were", m.Segment.Index-1)
	}
	return []string{fmt.Sprintf("%s removed by retention: no rows before %s", gone, when(kept))}
}

func when(ns int64) string {
	if ns == 0 {
		return "-"
	}
	return time.Unix(0, ns).UTC().Format(time.RFC3339)
}
