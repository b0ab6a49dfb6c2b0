package hub

import (
	"bufio"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Window is a range of the aligned clock: rows with Since <= ts_aligned_ns < Until. A zero
// Since or Until leaves that side open.
type Window struct {
	Since, Until time.Time
}

// IsZero reports whether the window is open on both sides (every row).
func (w Window) IsZero() bool { return w.Since.IsZero() && w.Until.IsZero() }

func (w Window) bounds() (lo, hi int64) {
	lo, hi = 0, int64(^uint64(0)>>1)
	if !w.Since.IsZero() {
		lo = w.Since.UnixNano()
	}
	if !w.Until.IsZero() {
		hi = w.Until.UnixNano()
	}
	return lo, hi
}

// pluginsFile is the plugin host's per-session record (plugins/host); a window without a time
// range keeps the newest segment's.
const pluginsFile = "plugins.json"

// findingsFile is the plugins' findings table. A time range leaves it out: plugin findings speak
// for whole segments, so readers compute findings from the rows in the range instead.
const findingsFile = "findings.csv"

// CopyWindow assembles the segment folders dirs (oldest first, as Segments returns them) into
// the new folder dst, as one session folder every reader of session folders understands: each
// table's CSV holds the rows of every segment whose ts_aligned_ns lies in w (tables without that
// column, such as plugins' derived tables, are filtered by ts_ns; rows of a table with neither are
// all kept), under the union of the segments' headers; metadata.json is the newest segment's, with
// rows, bytes and per-process rows counted from what was copied, duplicates and the other drop
// counters summed over the segments read, start_ns the session's start (or, when its first
// segment is not read, the first row's aligned time; at least Since), no segment record, and Window saying which segments and
// range it holds. Ended segments whose rows' aligned range (SegmentMeta) lies outside w are not
// read.
// Without a range, findings.csv is concatenated and plugins.json copied; with one, both are left
// out (findings are then computed from the rows in range). It returns the written metadata.
// Errors: a segment's metadata or CSV cannot be read, dst cannot be written.
func CopyWindow(dirs []string, w Window, dst string) (*Metadata, error) {
	if len(dirs) == 0 {
		return nil, errors.New("hub: copy window: no segment folders")
	}
	lo, hi := w.bounds()
	var metas []*Metadata
	var read []string
	for _, d := range dirs {
		m, err := ReadMetadata(d)
		if err != nil {
			return nil, err
		}
		// Only a finished segment's range is final: a live one may hold rows its metadata does
		// not count yet (written, metadata next), so it is always read.
		if g := m.Segment; g != nil && m.Status == StatusEnded && !w.IsZero() && (g.FirstAlignedNS != 0 || g.LastAlignedNS != 0) &&
			(g.LastAlignedNS < lo || g.FirstAlignedNS >= hi) {
			continue
		}
		metas = append(metas, m)
		read = append(read, d)
	}
	newest, err := ReadMetadata(dirs[len(dirs)-1])
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dst, 0o750); err != nil {
		return nil, fmt.Errorf("hub: copy window: %w", err)
	}
	// Tables: every CSV of the segments read, in name order.
	tableSet := map[string]bool{}
	counted := map[string]bool{} // the hub's tables: those metadata counts rows of
	for i, d := range read {
		for t := range metas[i].Rows {
			counted[t] = true
		}
		files, _ := filepath.Glob(filepath.Join(d, "*.csv"))
		for _, f := range files {
			name := filepath.Base(f)
			if name == findingsFile && !w.IsZero() {
				continue
			}
			tableSet[name] = true
		}
	}
	out := *newest
	out.Rows, out.Bytes = map[string]int64{}, 0
	out.Duplicates, out.DroppedByCap, out.AlignedClamped = 0, 0, 0
	procRows := map[string]map[string]int64{} // host/pid -> table -> rows
	for _, name := range sortedKeys(tableSet) {
		table := strings.TrimSuffix(name, ".csv")
		n, size, err := copyTable(read, dst, name, lo, hi, w.IsZero(), procRows, table)
		if err != nil {
			return nil, err
		}
		if counted[table] {
			out.Rows[table] = n
			out.Bytes += size
		}
	}
	var firstRow int64 // the smallest ts_aligned_ns of the segments read (0: unknown)
	for _, m := range metas {
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
	// Readers count time from start_ns (report's plots): when the session's first segments are
	// not read (removed by retention, or before the range), the copy starts at its first row.
	if len(metas) > 0 && metas[0].Segment != nil && metas[0].Segment.Index > 0 && firstRow > 0 {
		out.StartNS = firstRow
	}
	if !w.Since.IsZero() && w.Since.UnixNano() > out.StartNS {
		out.StartNS = w.Since.UnixNano()
	}
	// Processes go on from segment to segment; a process only an older segment knows is kept too.
	known := map[procKey]bool{}
	var procs []*ProcMeta
	for _, p := range newest.Processes {
		known[procKey{p.Host, p.PID, p.Instance}] = true
		procs = append(procs, p)
	}
	for _, m := range metas {
		for _, p := range m.Processes {
			if k := (procKey{p.Host, p.PID, p.Instance}); !known[k] {
				known[k] = true
				procs = append(procs, p)
			}
		}
	}
	sortProcs(procs)
	// Rows carry host and pid, not the instance: a reused pid's rows go to its latest start.
	owner := map[string]*ProcMeta{}
	for _, p := range procs {
		p.Rows, p.EarlierSeqs = map[string]int64{}, nil
		k := p.Host + "/" + strconv.FormatInt(p.PID, 10)
		if o := owner[k]; o == nil || p.StartNS >= o.StartNS {
			owner[k] = p
		}
	}
	for k, rows := range procRows {
		if p := owner[k]; p != nil {
			for t, n := range rows {
				if counted[t] {
					p.Rows[t] += n
				}
			}
		}
	}
	out.Processes = procs
	out.Segment = nil
	out.Window = &WindowMeta{}
	for _, d := range read {
		out.Window.Segments = append(out.Window.Segments, filepath.Base(d))
	}
	if !w.Since.IsZero() {
		out.Window.SinceNS = w.Since.UnixNano()
	}
	if !w.Until.IsZero() {
		out.Window.UntilNS = w.Until.UnixNano()
	}
	if w.IsZero() {
		for i := len(read) - 1; i >= 0; i-- {
			if b, err := os.ReadFile(filepath.Join(read[i], pluginsFile)); err == nil {
				if err := os.WriteFile(filepath.Join(dst, pluginsFile), b, 0o640); err != nil {
					return nil, fmt.Errorf("hub: copy window: %w", err)
				}
				break
			}
		}
	}
	b, err := json.MarshalIndent(&out, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("hub: copy window: encode metadata: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dst, MetadataFile), append(b, '\n'), 0o640); err != nil {
		return nil, fmt.Errorf("hub: copy window: %w", err)
	}
	return &out, nil
}

// copyTable writes table file name's rows from every folder in dirs that has it into dst/name,
// under the union of their headers (columns in order of first appearance), filtered to [lo, hi)
// on ts_aligned_ns (else ts_ns) unless all is set. It returns the rows and bytes written and
// counts each row in procRows[host/pid][table].
func copyTable(dirs []string, dst, name string, lo, hi int64, all bool, procRows map[string]map[string]int64, table string) (int64, int64, error) {
	var union []string
	pos := map[string]int{}
	var srcs []string
	for _, d := range dirs {
		p := filepath.Join(d, name)
		h, err := readHeader(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, 0, fmt.Errorf("hub: copy window: %s: %w", p, err)
		}
		if h == nil {
			continue
		}
		srcs = append(srcs, p)
		for _, c := range h {
			if _, ok := pos[c]; !ok {
				pos[c] = len(union)
				union = append(union, c)
			}
		}
	}
	if len(srcs) == 0 {
		return 0, 0, nil
	}
	path := filepath.Join(dst, name)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return 0, 0, fmt.Errorf("hub: copy window: %w", err)
	}
	bw := bufio.NewWriterSize(f, 256<<10)
	cw := csv.NewWriter(bw)
	_ = cw.Write(union)
	var rows int64
	outRec := make([]string, len(union))
	for _, src := range srcs {
		if err := func() error {
			in, err := os.Open(src)
			if err != nil {
				return err
			}
			defer in.Close()
			r := csv.NewReader(bufio.NewReaderSize(in, 256<<10))
			r.FieldsPerRecord = -1
			r.ReuseRecord = true
			hdr, err := r.Read()
			if err != nil {
				return err
			}
			to := make([]int, len(hdr))
			tsCol, hostCol, pidCol := -1, -1, -1
			for i, c := range hdr {
				to[i] = pos[c]
				switch c {
				case AlignedColumn:
					tsCol = i
				case "ts_ns":
					if tsCol < 0 || hdr[tsCol] != AlignedColumn {
						tsCol = i
					}
				case "host":
					hostCol = i
				case "pid":
					pidCol = i
				}
			}
			for {
				rec, err := r.Read()
				if err == io.EOF {
					return nil
				}
				if err != nil {
					return err
				}
				if !all && tsCol >= 0 && tsCol < len(rec) {
					ts, err := strconv.ParseInt(rec[tsCol], 10, 64)
					if err != nil || ts < lo || ts >= hi {
						continue
					}
				}
				for i := range outRec {
					outRec[i] = ""
				}
				for i, v := range rec {
					if i < len(to) {
						outRec[to[i]] = v
					}
				}
				if err := cw.Write(outRec); err != nil {
					return err
				}
				rows++
				if hostCol >= 0 && pidCol >= 0 && hostCol < len(rec) && pidCol < len(rec) {
					k := rec[hostCol] + "/" + rec[pidCol]
					if procRows[k] == nil {
						procRows[k] = map[string]int64{}
					}
					procRows[k][table]++
				}
			}
		}(); err != nil {
			f.Close()
			return 0, 0, fmt.Errorf("hub: copy window: %s: %w", src, err)
		}
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		f.Close()
		return 0, 0, fmt.Errorf("hub: copy window: %w", err)
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return 0, 0, fmt.Errorf("hub: copy window: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return 0, 0, fmt.Errorf("hub: copy window: %w", err)
	}
	if err := f.Close(); err != nil {
		return 0, 0, fmt.Errorf("hub: copy window: %w", err)
	}
	return rows, st.Size(), nil
}

// readHeader returns the first record of a CSV file (nil, nil when the file is empty).
func readHeader(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := csv.NewReader(bufio.NewReader(f))
	r.FieldsPerRecord = -1
	h, err := r.Read()
	if err == io.EOF {
		return nil, nil
	}
	return h, err
}
