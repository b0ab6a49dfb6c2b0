package report

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/profilemate/profilemate/hub"
)

// Rows streams one session table: <dir>/<table>.csv as the hub writes it (the common columns, the
// table's own columns of proto/tables, then ts_aligned_ns). A table the session has no file for
// has no rows and no error; a malformed file is an error naming the file and line.
type Rows struct {
	Table  string
	path   string
	f      *os.File
	r      *csv.Reader
	index  map[string]int
	rec    []string
	line   int
	closed bool
	// tornTail accepts a malformed last line (a running session's file being appended to); Torn
	// says one was skipped.
	tornTail bool
	Torn     bool
}

// OpenTable opens dir/table.csv for streaming; ok is false when the session has no such file.
func OpenTable(dir, table string) (rows *Rows, ok bool, err error) {
	p := filepath.Join(dir, table+".csv")
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("open %s: %w", p, err)
	}
	r := csv.NewReader(f)
	r.ReuseRecord = true
	r.FieldsPerRecord = -1
	header, err := r.Read()
	if err == io.EOF {
		f.Close()
		return nil, false, nil
	}
	if err != nil {
		f.Close()
		return nil, false, fmt.Errorf("%s: header: %w", p, err)
	}
	idx := make(map[string]int, len(header))
	for i, h := range header {
		idx[h] = i
	}
	return &Rows{Table: table, path: p, f: f, r: r, index: idx, line: 1}, true, nil
}

// Header returns the file's columns in file order.
func (t *Rows) Header() []string {
	h := make([]string, len(t.index))
	for name, i := range t.index {
		h[i] = name
	}
	return h
}

// Has reports whether the file has the named column.
func (t *Rows) Has(col string) bool { _, ok := t.index[col]; return ok }

// Next reads the next row; false at the end of the file or on an error (see Err).
func (t *Rows) Next() (bool, error) {
	rec, err := t.r.Read()
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
