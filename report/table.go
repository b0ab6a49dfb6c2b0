package report

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/profilemate/profilemate/hub"
)

// Rows streams one session table: <dir>/<table>.csv as the hub writes it (the common columns, the
// table's own columns of proto/tables, then ts_aligned_ns), or, for a folder hub.LinkSegments made,
// the table's file in each segment one after the other. A table the session has no file for
// has no rows and no error; a malformed file is an error naming the file and line.
type Rows struct {
	Table  string
	path   string
	f      *os.File
	r      *csv.Reader
	index  map[string]int  // the current file's columns
	header []string        // the union of the files' columns, in first-seen order
	cols   map[string]bool // the same as a set
	rest   []string        // files still to read
	rec    []string
	line   int
	closed bool
	// tornTail accepts a malformed last line (a running session's file being appended to); Torn
	// says one was skipped.
	tornTail bool
	Torn     bool
}

// OpenTable opens dir/table.csv for streaming (each segment's file in turn for a folder
// hub.LinkSegments made); ok is false when the session has no such file.
func OpenTable(dir, table string) (rows *Rows, ok bool, err error) {
	files, err := hub.TableFiles(dir, table)
	if err != nil {
		return nil, false, err
	}
	t := &Rows{Table: table, closed: true, cols: map[string]bool{}}
	for i, p := range files {
		h, err := readHeaderOf(p)
		if err != nil {
			return nil, false, err
		}
		if h == nil {
			continue
		}
		if t.rest == nil && t.path == "" {
			t.path = p
			t.rest = append([]string{}, files[i+1:]...)
		}
		for _, c := range h {
			if !t.cols[c] {
				t.cols[c] = true
				t.header = append(t.header, c)
			}
		}
	}
	if t.path == "" {
		return nil, false, nil
	}
	if err := t.open(t.path); err != nil {
		return nil, false, err
	}
	return t, true, nil
}

// readHeaderOf is a CSV file's header; nil when the file is missing or empty.
func readHeaderOf(p string) ([]string, error) {
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", p, err)
	}
	defer f.Close()
	r := csv.NewReader(f)
	r.FieldsPerRecord = -1
	h, err := r.Read()
	if err == io.EOF {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s: header: %w", p, err)
	}
	return h, nil
}

// open makes p the file being read, past its header.
func (t *Rows) open(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("open %s: %w", p, err)
	}
	r := csv.NewReader(f)
	r.ReuseRecord = true
	r.FieldsPerRecord = -1
	header, err := r.Read()
	if err != nil && err != io.EOF {
		f.Close()
		return fmt.Errorf("%s: header: %w", p, err)
	}
	idx := make(map[string]int, len(header))
	for i, h := range header {
		idx[h] = i
	}
	t.path, t.f, t.r, t.index, t.line, t.closed, t.rec = p, f, r, idx, 1, false, nil
	return nil
}

// Header returns the table's columns in file order (over several segments: the first segment's,
// then columns only later ones have).
func (t *Rows) Header() []string { return append([]string{}, t.header...) }

// Has reports whether the table has the named column (in any of its files).
func (t *Rows) Has(col string) bool { return t.cols[col] }

// Next reads the next row; false at the end of the file or on an error (see Err).
func (t *Rows) Next() (bool, error) {
	rec, err := t.r.Read()
	for err == io.EOF && len(t.rest) > 0 {
		t.f.Close()
		next := t.rest[0]
		t.rest = t.rest[1:]
		if oerr := t.open(next); oerr != nil {
			return false, oerr
		}
		rec, err = t.r.Read()
	}
	if err == io.EOF {
		return false, nil
	}
	t.line++
	if err != nil && t.tornTail {
		if _, err2 := t.r.Read(); err2 == io.EOF {
			t.Torn = true
			return false, nil
		}
	}
	if err != nil {
		return false, fmt.Errorf("%s: %w", t.path, err)
	}
	t.rec = rec
	return true, nil
}

// Line is the 1-based line number of the current row (the header is line 1).
func (t *Rows) Line() int { return t.line }

// Str returns the current row's named column; "" when the file lacks the column.
func (t *Rows) Str(col string) string {
	i, ok := t.index[col]
	if !ok || i >= len(t.rec) {
		return ""
	}
	return t.rec[i]
}

// Int returns the named integer column; ok is false when the cell is empty or not an integer.
func (t *Rows) Int(col string) (int64, bool) {
	v, err := strconv.ParseInt(t.Str(col), 10, 64)
	return v, err == nil
}

// Float returns the named float column; ok is false when the cell is empty or not a number.
func (t *Rows) Float(col string) (float64, bool) {
	s := t.Str(col)
	if s == "" {
		return 0, false
	}
	v, err := strconv.ParseFloat(s, 64)
	return v, err == nil
}

// TS returns the row's time on the session's aligned clock (ts_aligned_ns, else ts_ns) in ns.
func (t *Rows) TS() (int64, bool) {
	if v, ok := t.Int("ts_aligned_ns"); ok {
		return v, true
	}
	return t.Int("ts_ns")
}

// Close closes the file.
func (t *Rows) Close() error {
	if t.closed {
		return nil
	}
	t.closed = true
	return t.f.Close()
}

// Scan calls fn for every row of dir/table.csv; a missing file calls fn never. fn's error stops the
// scan and is returned.
func Scan(dir, table string, fn func(*Rows) error) error { return scan(dir, table, false, fn) }

// Scan is the package Scan for one of the session's tables; while the session is active (the hub
// still appends), a malformed last line is taken as a row being written and skipped.
func (s *Session) Scan(table string, fn func(*Rows) error) error {
	return scan(s.Dir, table, s.Meta.Status == hub.StatusActive, fn)
}

func scan(dir, table string, tornTail bool, fn func(*Rows) error) error {
	t, ok, err := OpenTable(dir, table)
	if err != nil || !ok {
		return err
	}
	t.tornTail = tornTail
	defer t.Close()
	for {
		more, err := t.Next()
		if err != nil {
			return err
		}
		if !more {
			return nil
		}
		if err := fn(t); err != nil {
			return fmt.Errorf("%s line %d: %w", t.path, t.line, err)
		}
	}
}
