package host

import (
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/plugins/pluginpb"
	"github.com/profilemate/profilemate/plugins/sdk"
	"github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

// rowKey orders a plugin's rows in one file: rows of batches by (input_seq, row), the final rows
// of CloseSession (input_seq 0) after all of them.
type rowKey struct {
	final    bool
	inputSeq uint64
	row      int64
}

func (a rowKey) after(b rowKey) bool {
	if a.final != b.final {
		return a.final
	}
	if a.inputSeq != b.inputSeq {
		return a.inputSeq > b.inputSeq
	}
	return a.row > b.row
}

// fileLocks serialises appends to one derived file across plugins (findings.csv is shared).
var fileLocks sync.Map // path → *sync.Mutex

func lockFile(path string) func() {
	m, _ := fileLocks.LoadOrStore(path, &sync.Mutex{})
	mu := m.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

// derivedHeader is a derived table's CSV header: common columns, key columns, its own.
func derivedHeader(t sdk.Table) []string {
	h := append(append([]string{}, sdk.CommonColumns...), sdk.KeyColumns...)
	for _, c := range t.Columns {
		h = append(h, c.Name)
	}
	return h
}

// sessionWriter appends one plugin's (one version's) rows to one session's live folder, each row
// at most once across all the session's segments: it knows, per file, the highest key it already
// holds for this plugin and version and the last seq it gave, read back from the file in every
// segment folder of the session when opened (hub.Segments: a row written before a rotation moved
// into a closed segment still counts), so neither a crash between writing and acknowledging nor a
// replay after a restart duplicates a row.
type sessionWriter struct {
	dataDir         string
	dir, session    string // dir: the live folder, hub.SessionDir(dataDir, session)
	plugin, version string
	hostName        string
	pid             int64
	info            sdk.Info
	max             map[string]rowKey // table → highest key on disk for plugin+version
	has             map[string]bool   // table → some row of plugin+version on disk
	seq             int64             // last common seq given in this session
	rows            map[string]int64  // table → rows of plugin+version on disk, all segments
	live            os.FileInfo       // the live folder as last written to
	// rotated is set by a write that found a new live folder (the hub rotated the session since
	// the last one): the caller then writes the plugin's plugins.json entry there.
	rotated bool
}

// errWrite marks a failed write to disk (as opposed to rows the plugin got wrong): the run stops
// and starts again, so what is on disk is read back and nothing is lost or written twice.
var errWrite = errors.New("derived rows not written")

func newSessionWriter(dataDir, session string, info sdk.Info, hostName string) (*sessionWriter, error) {
	w := &sessionWriter{dataDir: dataDir, dir: hub.SessionDir(dataDir, session), session: session, plugin: info.Name,
		version: info.Version, hostName: hostName, info: info, max: map[string]rowKey{}, has: map[string]bool{}, rows: map[string]int64{}}
	// Under the rotation lock the session's folders do not move while they are read.
	unlock, err := hub.LockRotation(dataDir, false)
	if err != nil {
		return nil, err
	}
	defer unlock()
	w.live, _ = os.Stat(w.dir)
	dirs, err := hub.Segments(dataDir, session)
	if errors.Is(err, os.ErrNotExist) {
		dirs = nil
	} else if err != nil {
		return nil, err
	}
	tables := append([]sdk.Table{sdk.FindingsSchema}, info.Tables...)
	for _, d := range dirs {
		for _, t := range tables {
			if err := w.scan(filepath.Join(d, t.Table+".csv"), t.Table); err != nil {
				return nil, err
			}
		}
	}
	return w, nil
}

// scan reads a table file's rows of this plugin and version (in any segment of the session): the
// highest key, the highest seq and the row count. A torn last line (a crash mid-write) is cut off.
func (w *sessionWriter) scan(path, table string) error {
	defer lockFile(path)()
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	good := bytes.LastIndexByte(data, '\n') + 1
	if good < len(data) {
		if err := os.Truncate(path, int64(good)); err != nil {
			return fmt.Errorf("cut torn line of %s: %w", path, err)
		}
	}
	r := csv.NewReader(bytes.NewReader(data[:good]))
	r.FieldsPerRecord = -1
	r.ReuseRecord = true
	hdr, err := r.Read()
	if err != nil {
		return nil
	}
	idx := map[string]int{}
	for i, c := range hdr {
		idx[c] = i
	}
	pl, ver, in, ro, sq := idx["plugin"], idx["plugin_version"], idx["input_seq"], idx["row"], idx["seq"]
	for {
		rec, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		if len(rec) <= max(pl, ver, in, ro, sq) || rec[pl] != w.plugin || rec[ver] != w.version {
			continue
		}
		seqIn, _ := strconv.ParseUint(rec[in], 10, 64)
		row, _ := strconv.ParseInt(rec[ro], 10, 64)
		k := rowKey{final: seqIn == 0, inputSeq: seqIn, row: row}
		if !w.has[table] || k.after(w.max[table]) {
			w.max[table] = k
		}
		w.has[table] = true
		w.rows[table]++
		if s, err := strconv.ParseInt(rec[sq], 10, 64); err == nil && s > w.seq {
			w.seq = s
		}
	}
	return nil
}

// written is what write appended: per table the rows as events (for NATS) and their count.
type written map[string][]*pmpb.Event

// write appends the rows that are new (by key), syncs every file it touched and returns them.
// Rows are numbered per input_seq in the order given; a row of an undeclared table or with a
// column of the wrong type is an error naming it (nothing of that call is written).
func (w *sessionWriter) write(rows []*pluginpb.Row, nowNS int64) (written, error) {
	type line struct {
		table string
		key   rowKey
		row   *pluginpb.Row
	}
	var lines []line
	n := map[uint64]int64{}
	for _, r := range rows {
		t, ok := w.info.Table(r.GetTable())
		if !ok {
			return nil, fmt.Errorf("row of undeclared table %q", r.GetTable())
		}
		for name, v := range r.GetCols() {
			c, ok := colOf(t, name)
			if !ok {
				return nil, fmt.Errorf("table %s has no column %q", t.Table, name)
			}
			if !typeOK(c.Type, v) {
				return nil, fmt.Errorf("table %s column %s: value %v is not %s", t.Table, name, v, c.Type)
			}
			if i, ok := v.GetV().(*pmpb.Value_I); ok && c.Type == sdk.TypeFloat {
				r.Cols[name] = &pmpb.Value{V: &pmpb.Value_D{D: float64(i.I)}} // so the cell reads 3.0, not 3
			}
		}
		k := rowKey{final: r.GetInputSeq() == 0, inputSeq: r.GetInputSeq(), row: n[r.GetInputSeq()]}
		n[r.GetInputSeq()]++
		if w.has[t.Table] && !k.after(w.max[t.Table]) {
			continue // already on disk: a replay after a restart or a redelivery
		}
		lines = append(lines, line{t.Table, k, r})
	}
	if len(lines) == 0 {
		return nil, nil
	}
	bufs := map[string]*bytes.Buffer{}
	out := written{}
	var order []string
	for _, l := range lines {
		t, _ := w.info.Table(l.table)
		b := bufs[l.table]
		if b == nil {
			b = &bytes.Buffer{}
			bufs[l.table] = b
			order = append(order, l.table)
		}
		w.seq++
		ts := l.row.GetTsNs()
		if ts == 0 {
			ts = nowNS
		}
		ev := &pmpb.Event{Kind: t.Kind, Table: l.table, Seq: uint64(w.seq), Step: l.row.GetStep(), TsNs: ts, Cols: map[string]*pmpb.Value{}}
		rec := []string{w.session, w.hostName, strconv.FormatInt(w.pid, 10), proto.RolePlugin,
			strconv.Itoa(int(l.row.GetDp())), strconv.Itoa(int(l.row.GetPp())), strconv.Itoa(int(l.row.GetTp())), strconv.Itoa(int(l.row.GetEp())),
			strconv.FormatInt(w.seq, 10), strconv.FormatInt(l.row.GetStep(), 10), strconv.FormatInt(ts, 10),
			w.plugin, w.version, strconv.FormatUint(l.key.inputSeq, 10), strconv.FormatInt(l.key.row, 10)}
		for _, c := range t.Columns {
			v := l.row.GetCols()[c.Name]
			rec = append(rec, proto.FormatValue(v))
			if v != nil {
				ev.Cols[c.Name] = v
			}
		}
		ev.Cols["plugin"] = &pmpb.Value{V: &pmpb.Value_S{S: w.plugin}}
		ev.Cols["plugin_version"] = &pmpb.Value{V: &pmpb.Value_S{S: w.version}}
		ev.Cols["input_seq"] = &pmpb.Value{V: &pmpb.Value_I{I: int64(l.key.inputSeq)}}
		ev.Cols["row"] = &pmpb.Value{V: &pmpb.Value_I{I: l.key.row}}
		cw := csv.NewWriter(b)
		_ = cw.Write(rec)
		cw.Flush()
		out[l.table] = append(out[l.table], ev)
		w.max[l.table], w.has[l.table] = l.key, true
		w.rows[l.table]++
	}
	// Shared with other writers, exclusive with the hub's rotation: the live folder is there and
	// stays the live one until every file of this call is appended.
	unlock, err := hub.LockRotation(w.dataDir, false)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errWrite, err)
	}
	defer unlock()
	if _, err := os.Stat(filepath.Join(w.dir, hub.MetadataFile)); err != nil {
		// The hub makes the live folder before any plugin sees the session and replaces it within
		// a rotation; gone now, it is the hub's to make again (a rotation a crash cut short).
		return nil, fmt.Errorf("%w: live folder of session %s: %w", errWrite, w.session, err)
	}
	if st, err := os.Stat(w.dir); err == nil {
		if w.live != nil && !os.SameFile(st, w.live) {
			w.rotated = true
		}
		w.live = st
	}
	for _, table := range order {
		t, _ := w.info.Table(table)
		if err := appendSynced(filepath.Join(w.dir, table+".csv"), derivedHeader(t), bufs[table].Bytes()); err != nil {
			return nil, fmt.Errorf("%w: %w", errWrite, err)
		}
	}
	return out, nil
}

// appendSynced appends data (whole lines) to path in one write, writing the header first when
// the file is new or empty, and syncs it.
func appendSynced(path string, header []string, data []byte) error {
	defer lockFile(path)()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Size() == 0 {
		var hb bytes.Buffer
		cw := csv.NewWriter(&hb)
		_ = cw.Write(header)
		cw.Flush()
		data = append(hb.Bytes(), data...)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return nil
}

func colOf(t sdk.Table, name string) (sdk.Column, bool) {
	for _, c := range t.Columns {
		if c.Name == name {
			return c, true
		}
	}
	return sdk.Column{}, false
}

func typeOK(typ string, v *pmpb.Value) bool {
	switch v.GetV().(type) {
	case nil:
		return true
	case *pmpb.Value_I:
		return typ == sdk.TypeInt || typ == sdk.TypeFloat
	case *pmpb.Value_D:
		return typ == sdk.TypeFloat
	case *pmpb.Value_S:
		return typ == sdk.TypeString
	case *pmpb.Value_B:
		return typ == sdk.TypeBool
	}
	return false
}
