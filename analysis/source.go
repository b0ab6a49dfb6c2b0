package analysis

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/profilemate/profilemate/hub"
)

// Row is one table row: column name → cell text exactly as the CSV holds it (the common columns
// session, host, pid, role, dp, pp, tp, ep, seq, step, ts_ns and the table's own columns of
// proto/tables/<table>.json). A missing column reads as "".
type Row map[string]string

// Str is the cell of col, "" when absent.
func (r Row) Str(col string) string { return r[col] }

// Int is the cell of col as an integer; ok is false when the cell is empty or not a number.
func (r Row) Int(col string) (v int64, ok bool) {
	s := r[col]
	if s == "" {
		return 0, false
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		f, ferr := strconv.ParseFloat(s, 64)
		if ferr != nil {
			return 0, false
		}
		return int64(f), true
	}
	return v, true
}

// Float is the cell of col as a float; ok is false when the cell is empty or not a number.
func (r Row) Float(col string) (v float64, ok bool) {
	s := r[col]
	if s == "" {
		return 0, false
	}
	v, err := strconv.ParseFloat(s, 64)
	return v, err == nil
}

// Bool is the cell of col as a bool (true, 1, True); false otherwise.
func (r Row) Bool(col string) bool {
	switch strings.ToLower(r[col]) {
	case "true", "1", "yes":
		return true
	}
	return false
}

// Process is one recorded process of a session, from its metadata (hub metadata.json
// "processes", or a standalone process folder's metadata.json "ident"). Rank is the global worker
// rank (the "w<rank>" process token); -1 when unknown.
type Process struct {
	Host string
	PID  int64
	Role string
	Rank int64
	DP   int64
	PP   int64
	TP   int64
	EP   int64
	// InstanceKey is the multi-node vLLM instance the process belongs to (metadata's
	// instance_key, docs/multinode.md); "" when unknown.
	InstanceKey string
}

// Source gives an analysis the rows of a session's tables.
type Source interface {
	// Rows calls fn for every row of table, in recorded order per process; a table the session
	// does not have yields no rows and no error. The first error fn returns stops the walk and
	// is returned. fn must not keep r after it returns: a source may reuse it for the next row.
	Rows(table string, fn func(Row) error) error
	// Processes lists the session's processes as far as metadata knows them (may be empty).
	Processes() []Process
}

// Tables is an in-memory Source: table name → rows, plus the processes. A plugin collects the
// events of its batches into one (Add) and analyses it when the session closes.
type Tables struct {
	Data  map[string][]Row
	Procs []Process
}

var _ Source = (*Tables)(nil)

// NewTables is an empty in-memory Source.
func NewTables() *Tables { return &Tables{Data: map[string][]Row{}} }

// Add appends one row to table.
func (t *Tables) Add(table string, r Row) {
	if t.Data == nil {
		t.Data = map[string][]Row{}
	}
	t.Data[table] = append(t.Data[table], r)
}

// AddProcess records a process (replacing one with the same host and pid; a known InstanceKey
// stays when p has none: event batches do not carry it).
func (t *Tables) AddProcess(p Process) {
	for i, q := range t.Procs {
		if q.Host == p.Host && q.PID == p.PID {
			if p.InstanceKey == "" {
				p.InstanceKey = q.InstanceKey
			}
			t.Procs[i] = p
			return
		}
	}
	t.Procs = append(t.Procs, p)
}

// Rows implements Source.
func (t *Tables) Rows(table string, fn func(Row) error) error {
	for _, r := range t.Data[table] {
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

// Processes implements Source.
func (t *Tables) Processes() []Process { return t.Procs }

// Dir is a session folder on disk: either a hub session (`<data>/sessions/<id>/<table>.csv` with
// one metadata.json) or a standalone shim session (`session_<id>/<role>-<rank>-<pid>/<table>.csv`,
// each process folder with its own metadata.json). Files are read on each Rows call.
type Dir struct {
	// Path is the session folder.
	Path string
	// csvDirs are the folders holding <table>.csv files: Path itself, or its process folders.
	csvDirs []string
	procs   []Process
}

var _ Source = (*Dir)(nil)

// ErrNotSession is returned by OpenDir for a folder that holds neither table CSVs nor process
// folders with them.
var ErrNotSession = errors.New("not a session folder")

// OpenDir opens a hub or standalone session folder. Errors: the folder cannot be read;
// ErrNotSession (wrapped) when it holds no table CSVs at either level; a metadata.json that is
// not JSON.
func OpenDir(path string) (*Dir, error) {
	ents, err := os.ReadDir(path)
	if err != nil {
		return nil, fmt.Errorf("open session %s: %w", path, err)
	}
	d := &Dir{Path: path}
	// A folder hub.LinkSegments made stands for the segments it lists: their CSVs in order.
	if segs, err := hub.LinkedSegments(path); err != nil {
		return nil, err
	} else if segs != nil {
		procs, err := hubProcesses(filepath.Join(path, "metadata.json"))
		if err != nil {
			return nil, err
		}
		d.csvDirs, d.procs = segs, procs
		return d, nil
	}
	hasCSV := false
	var subs []string
	for _, e := range ents {
		if e.IsDir() {
			subs = append(subs, filepath.Join(path, e.Name()))
		} else if strings.HasSuffix(e.Name(), ".csv") {
			hasCSV = true
		}
	}
	if hasCSV {
		d.csvDirs = []string{path}
		procs, err := hubProcesses(filepath.Join(path, "metadata.json"))
		if err != nil {
			return nil, err
		}
		d.procs = procs
		return d, nil
	}
	sort.Strings(subs)
	for _, s := range subs {
		m, _ := filepath.Glob(filepath.Join(s, "*.csv"))
		if len(m) == 0 {
			continue
		}
		d.csvDirs = append(d.csvDirs, s)
		p, ok, err := standaloneProcess(s)
		if err != nil {
			return nil, err
		}
		if ok {
			d.procs = append(d.procs, p)
		}
	}
	if len(d.csvDirs) == 0 {
		return nil, fmt.Errorf("open session %s: %w", path, ErrNotSession)
	}
	return d, nil
}

// Processes implements Source.
func (d *Dir) Processes() []Process { return d.procs }

// Rows implements Source. Errors: a CSV that cannot be parsed (named with its path).
func (d *Dir) Rows(table string, fn func(Row) error) error {
	for _, dir := range d.csvDirs {
		if err := readCSV(filepath.Join(dir, table+".csv"), fn); err != nil {
			return err
		}
	}
	return nil
}

func readCSV(path string, fn func(Row) error) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	cr := csv.NewReader(f)
	cr.FieldsPerRecord = -1
	cr.ReuseRecord = true
	header, err := cr.Read()
	if err == io.EOF {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	header = append([]string(nil), header...)
	r := make(Row, len(header))
	for {
		rec, err := cr.Read()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		// one map for the whole file: fn may not keep it (Source.Rows), and a fresh map per row
		// was most of the cost on large sessions.
		clear(r)
		for i, h := range header {
			if i < len(rec) {
				r[h] = rec[i]
			}
		}
		if err := fn(r); err != nil {
			return err
		}
	}
}

type identJSON struct {
	Host string `json:"host"`
	PID  int64  `json:"pid"`
	Role string `json:"role"`
	Rank *int64 `json:"rank"`
	DP   int64  `json:"dp"`
	PP   int64  `json:"pp"`
	TP   int64  `json:"tp"`
	EP   int64  `json:"ep"`
	// InstanceKey: hub metadata's instance_key.
	InstanceKey string `json:"instance_key"`
	Ident       *struct {
		Role string `json:"role"`
		Rank *int64 `json:"rank"`
		DP   int64  `json:"dp"`
		PP   int64  `json:"pp"`
		TP   int64  `json:"tp"`
		EP   int64  `json:"ep"`
	} `json:"ident"`
}

func (j identJSON) process() Process {
	p := Process{Host: j.Host, PID: j.PID, Role: j.Role, Rank: -1, DP: j.DP, PP: j.PP, TP: j.TP, EP: j.EP, InstanceKey: j.InstanceKey}
	if j.Rank != nil {
		p.Rank = *j.Rank
	}
	if id := j.Ident; id != nil {
		p.Role, p.DP, p.PP, p.TP, p.EP = id.Role, id.DP, id.PP, id.TP, id.EP
		if id.Rank != nil {
			p.Rank = *id.Rank
		}
	}
	return p
}

// hubProcesses reads the "processes" list of a hub session's metadata.json; a missing file is
// no processes.
func hubProcesses(path string) ([]Process, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	var m struct {
		Processes []identJSON `json:"processes"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	out := make([]Process, 0, len(m.Processes))
	for _, p := range m.Processes {
		out = append(out, p.process())
	}
	return out, nil
}

// standaloneProcess reads a standalone process folder's metadata.json; ok is false when it has
// none.
func standaloneProcess(dir string) (Process, bool, error) {
	path := filepath.Join(dir, "metadata.json")
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Process{}, false, nil
	}
	if err != nil {
		return Process{}, false, fmt.Errorf("read %s: %w", path, err)
	}
	var j identJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return Process{}, false, fmt.Errorf("read %s: %w", path, err)
	}
	return j.process(), true, nil
}

// procKey names a process inside a session.
type procKey struct {
	host string
	pid  int64
}

func keyOf(r Row) procKey {
	pid, _ := r.Int("pid")
	return procKey{r.Str("host"), pid}
}

// rankIndex resolves a row's global worker rank: the metadata rank of its process when known,
// else its tp column (pp·tp-size is not known without metadata), else -1.
type rankIndex map[procKey]int64

func newRankIndex(src Source) rankIndex {
	ix := rankIndex{}
	for _, p := range src.Processes() {
		if p.Rank >= 0 {
			ix[procKey{p.Host, p.PID}] = p.Rank
		}
	}
	return ix
}

func (ix rankIndex) rank(r Row) int64 {
	if v, ok := ix[keyOf(r)]; ok {
		return v
	}
	if v, ok := r.Int("tp"); ok {
		return v
	}
	return -1
}
