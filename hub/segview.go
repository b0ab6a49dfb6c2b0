package hub

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// SegmentsFile, in a folder LinkSegments made, lists the segment folders whose CSV files together
// are its tables: {"segments": [absolute folder, ...]}, oldest first.
const SegmentsFile = "segments.json"

type segmentsList struct {
	Segments []string `json:"segments"`
}

// LinkSegments makes dst stand for every row of the segment folders dirs (oldest first, as
// Segments returns them) without copying a row: dst gets SegmentsFile naming them, the newest
// plugins.json found, and metadata.json as CopyWindow writes it for an open range (rows, bytes and
// per-process rows summed from the segments' own metadata, the drop counters summed, start_ns the
// session's start, Window naming every segment). Readers that understand SegmentsFile
// (TableFiles: report, export, analysis) read each table from the segments in order; a time range
// still needs CopyWindow. It returns the written metadata. Errors: a segment's metadata cannot be
// read, dst cannot be written.
func LinkSegments(dirs []string, dst string) (*Metadata, error) {
	if len(dirs) == 0 {
		return nil, errors.New("hub: link segments: no segment folders")
	}
	var metas []*Metadata
	abs := make([]string, len(dirs))
	for i, d := range dirs {
		m, err := ReadMetadata(d)
		if err != nil {
			return nil, err
		}
		metas = append(metas, m)
		if abs[i], err = filepath.Abs(d); err != nil {
			return nil, fmt.Errorf("hub: link segments: %w", err)
		}
	}
	newest := metas[len(metas)-1]
	out := *newest
	out.Segment = nil
	out.Rows, out.Bytes = map[string]int64{}, 0
	out.Duplicates, out.DroppedByCap, out.AlignedClamped = 0, 0, 0
	var firstRow int64
	for _, m := range metas {
		for t, n := range m.Rows {
			out.Rows[t] += n
		}
		out.Bytes += m.Bytes
		out.Duplicates += m.Duplicates
		out.DroppedByCap += m.DroppedByCap
		out.AlignedClamped += m.AlignedClamped
		if m.StartNS > 0 && (out.StartNS == 0 || m.StartNS < out.StartNS) {
			out.StartNS = m.StartNS
		}
		if g := m.Segment; g != nil && (g.FirstAlignedNS != 0 || g.LastAlignedNS != 0) && (firstRow == 0 || g.FirstAlignedNS < firstRow) {
			firstRow = g.FirstAlignedNS
		}
	}
	// As CopyWindow: when the session's first segments are gone (retention), time starts at the
	// first row still there.
	if metas[0].Segment != nil && metas[0].Segment.Index > 0 && firstRow > 0 {
		out.StartNS = firstRow
	}
	// Processes go on from segment to segment; a process only an older segment knows is kept too.
	// Rows carry host and pid, not the instance: a reused pid's rows go to its latest start.
	known := map[procKey]bool{}
	var procs []*ProcMeta
	for i := len(metas) - 1; i >= 0; i-- {
		for _, p := range metas[i].Processes {
			if k := (procKey{p.Host, p.PID, p.Instance}); !known[k] {
				known[k] = true
				cp := *p
				procs = append(procs, &cp)
			}
		}
	}
	sortProcs(procs)
	owner := map[string]*ProcMeta{}
	for _, p := range procs {
		p.Rows, p.EarlierSeqs = map[string]int64{}, nil
		k := p.Host + "/" + strconv.FormatInt(p.PID, 10)
		if o := owner[k]; o == nil || p.StartNS >= o.StartNS {
			owner[k] = p
		}
	}
	for _, m := range metas {
		for _, p := range m.Processes {
			if o := owner[p.Host+"/"+strconv.FormatInt(p.PID, 10)]; o != nil {
				for t, n := range p.Rows {
					o.Rows[t] += n
				}
			}
		}
	}
	out.Processes = procs
	out.Window = &WindowMeta{}
	for _, d := range dirs {
		out.Window.Segments = append(out.Window.Segments, filepath.Base(d))
	}
	if err := os.MkdirAll(dst, 0o750); err != nil {
		return nil, fmt.Errorf("hub: link segments: %w", err)
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if b, err := os.ReadFile(filepath.Join(dirs[i], pluginsFile)); err == nil {
			if err := os.WriteFile(filepath.Join(dst, pluginsFile), b, 0o640); err != nil {
				return nil, fmt.Errorf("hub: link segments: %w", err)
			}
			break
		}
	}
	b, err := json.MarshalIndent(segmentsList{Segments: abs}, "", "  ")
	if err == nil {
		err = os.WriteFile(filepath.Join(dst, SegmentsFile), append(b, '\n'), 0o640)
	}
	if err != nil {
		return nil, fmt.Errorf("hub: link segments: %w", err)
	}
	if b, err = json.MarshalIndent(&out, "", "  "); err == nil {
		err = os.WriteFile(filepath.Join(dst, MetadataFile), append(b, '\n'), 0o640)
	}
	if err != nil {
		return nil, fmt.Errorf("hub: link segments: %w", err)
	}
	return &out, nil
}

// LinkedSegments returns the segment folders a LinkSegments folder stands for (nil, nil for any
// other folder). Errors: SegmentsFile cannot be read or parsed.
func LinkedSegments(dir string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(dir, SegmentsFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("hub: %w", err)
	}
	var l segmentsList
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("hub: %s: %w", filepath.Join(dir, SegmentsFile), err)
	}
	return l.Segments, nil
}

// TableFiles are the CSV files that hold table for the session folder dir, in row order: the
// segments' files (those that exist) for a LinkSegments folder, else dir/<table>.csv whether or not
// it exists. Errors: as LinkedSegments.
func TableFiles(dir, table string) ([]string, error) {
	segs, err := LinkedSegments(dir)
	if err != nil {
		return nil, err
	}
	if segs == nil {
		return []string{filepath.Join(dir, table+".csv")}, nil
	}
	var out []string
	for _, s := range segs {
		p := filepath.Join(s, table+".csv")
		if _, err := os.Stat(p); err == nil {
			out = append(out, p)
		}
	}
	return out, nil
}
