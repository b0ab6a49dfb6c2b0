package hub

import (
	"crypto/rand"
	"encoding/csv"
	"encoding/hex"
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
	"time"

	"github.com/profilemate/profilemate/proto"
)

// EndImported is the end reason of a session `pmhub import` wrote.
const EndImported = "imported"

// importAlignment is the time_alignment of an imported session: standalone shims measured no
// clock offsets.
const importAlignment = "imported from standalone folders: ts_aligned_ns = ts_ns, each process's own wall clock (no agent measured the hosts' clock offsets)"

// ErrImport marks every error Import returns about its input folders (not about writing).
var ErrImport = errors.New("cannot import")

// standaloneMeta is the part of a standalone process folder's metadata.json (the shim's
// runtime.metadata()) an import keeps.
type standaloneMeta struct {
	Session  string `json:"session"`
	Host     string `json:"host"`
	PID      int64  `json:"pid"`
	PPID     int64  `json:"ppid"`
	Instance string `json:"instance"`
	Ident    struct {
		Role string `json:"role"`
		DP   int64  `json:"dp"`
		PP   int64  `json:"pp"`
		TP   int64  `json:"tp"`
		EP   int64  `json:"ep"`
		Rank int64  `json:"rank"`
	} `json:"ident"`
	Python string            `json:"python"`
	VLLM   string            `json:"vllm"`
	Argv   []string          `json:"argv"`
	Env    map[string]string `json:"env"`
	// InstanceKey is PROFILEMATE_INSTANCE_KEY when the process last wrote its metadata (Ray).
	InstanceKey string        `json:"instance_key"`
	Targets     []Target      `json:"targets"`
	Tables      []TableStatus `json:"tables"`
	Dropped     uint64        `json:"dropped"`
	LastSeq     uint64        `json:"last_seq"`
	StartNS     int64         `json:"start_ns"`
	EndNS       int64         `json:"end_ns"`
	EndState    string        `json:"end_state"`
	EndSignal   string        `json:"end_signal"`
}

// importProc is one process folder of an input folder.
type importProc struct {
	dir  string // the process folder
	meta *ProcMeta
}

// importFolder is one input folder: one host's standalone session_<id>/ folder.
type importFolder struct {
	path  string
	key   string // the instance its processes name; "" when none does
	node  int64  // the node rank the process that started the instance there names; -1: none
	procs []importProc
}

// Import merges standalone session folders (`<PROFILEMATE_OUTPUT_DIR>/session_<id>/`, one per
// host, each process in its own `<role>-<rank>-<pid>/` folder: the shim writing without an agent)
// of one multi-node vLLM instance into one session of the hub's data folder, as the hub writes
// them: one CSV per table with ts_aligned_ns = ts_ns, and metadata.json with every process, its
// instance key and node rank (docs/multinode.md). The instance key of a folder comes from its
// processes' command lines (proto.InstanceKey) or their PROFILEMATE_INSTANCE_KEY. session names
// the new session ("": a new id from the earliest process start). One folder is imported as it
// is, instance or not.
//
// Errors (wrapping ErrImport): a folder with no process folder, two folders naming different
// instances or one naming none, a global worker rank (or an EngineCore's DP rank, or a
// process) in two folders, folders whose every process an imported session of data already
// holds (imported before), an existing session of that id, a session name outside proto's
// grammar; then any error reading the folders or writing the session.
func Import(data string, folders []string, session string) (*Metadata, error) {
	if len(folders) == 0 {
		return nil, fmt.Errorf("%w: no folder given", ErrImport)
	}
	var in []*importFolder
	for _, f := range folders {
		ff, err := readImportFolder(f)
		if err != nil {
			return nil, err
		}
		in = append(in, ff)
	}
	if err := checkOneInstance(in); err != nil {
		return nil, err
	}
	if err := checkNotImported(data, in); err != nil {
		return nil, err
	}
	start, end := int64(0), int64(0)
	for _, f := range in {
		for _, p := range f.procs {
			if s := p.meta.StartNS; s > 0 && (start == 0 || s < start) {
				start = s
			}
			end = max(end, p.meta.EndNS)
		}
	}
	if session == "" {
		var b [3]byte
		_, _ = rand.Read(b[:])
		t := time.Now()
		if start > 0 {
			t = time.Unix(0, start)
		}
		session = t.UTC().Format("20060102_150405") + "_" + hex.EncodeToString(b[:])
	}
	if err := proto.ValidateSession(session); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrImport, err)
	}
	dir := SessionDir(data, session)
	if _, err := os.Stat(dir); err == nil {
		return nil, fmt.Errorf("%w: session %s exists in %s", ErrImport, session, data)
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o750); err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	// Written beside and renamed at the end: a failed import leaves no half session.
	tmp, err := os.MkdirTemp(filepath.Dir(dir), "."+session+".import-")
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	defer os.RemoveAll(tmp)

	m := &Metadata{SchemaVersion: proto.SchemaVersion, Session: session, Status: StatusEnded, EndReason: EndImported,
		StartNS: start, EndNS: end, TimeAlignment: importAlignment, Hosts: map[string]*HostMeta{}, Rows: map[string]int64{}}
	for _, f := range in {
		for _, p := range f.procs {
			m.Processes = append(m.Processes, p.meta)
			if m.Hosts[p.meta.Host] == nil {
				m.Hosts[p.meta.Host] = &HostMeta{Started: true, Ended: true, EndReason: EndImported}
			}
			h := m.Hosts[p.meta.Host]
			h.ShimDropped += p.meta.Dropped
			if f.node >= 0 {
				n := f.node
				h.NodeRank = &n
			}
		}
		if f.key != "" && !contains(m.Instances, f.key) {
			m.Instances = append(m.Instances, f.key)
		}
	}
	sortProcs(m.Processes)
	uniqueTokens(m.Processes)
	for _, t := range proto.Default().Tables() {
		n, size, err := importTable(tmp, t, session, in)
		if err != nil {
			return nil, err
		}
		if n > 0 {
			m.Rows[t.Table] = n
			m.Bytes += size
		}
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(filepath.Join(tmp, MetadataFile), b); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	return m, nil
}

// importedProc names one process life across imports: host, pid, start and the shim's per-start id.
func importedProc(p *ProcMeta) string {
	return fmt.Sprintf("%s/%d/%d/%s", p.Host, p.PID, p.StartNS, p.Instance)
}

// checkNotImported refuses folders whose every process is already in one imported session of
// data (the same folders imported before): "the folders were imported before as session X".
// Sessions the hub recorded, and ones whose metadata cannot be read, are not compared.
func checkNotImported(data string, in []*importFolder) error {
	want := map[string]bool{}
	for _, f := range in {
		for _, p := range f.procs {
			want[importedProc(p.meta)] = true
		}
	}
	ents, err := os.ReadDir(sessionsDir(data))
	if err != nil || len(want) == 0 {
		return nil // no sessions yet (or none to compare): nothing was imported
	}
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		m, err := ReadMetadata(filepath.Join(sessionsDir(data), e.Name()))
		if err != nil || m.EndReason != EndImported {
			continue
		}
		have := 0
		for _, p := range m.Processes {
			if want[importedProc(p)] {
				have++
			}
		}
		if have == len(want) {
			return fmt.Errorf("%w: the folders were imported before as session %s (pmhub show --data %s %s)", ErrImport, m.Session, data, m.Session)
		}
	}
	return nil
}

// readImportFolder reads one input folder's process folders and their instance.
func readImportFolder(path string) (*importFolder, error) {
	ents, err := os.ReadDir(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrImport, err)
	}
	f := &importFolder{path: path, node: -1}
	keys := map[string]bool{}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		pdir := filepath.Join(path, e.Name())
		b, err := os.ReadFile(filepath.Join(pdir, MetadataFile))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrImport, err)
		}
		var sm standaloneMeta
		if err := json.Unmarshal(b, &sm); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrImport, filepath.Join(pdir, MetadataFile), err)
		}
		if err := proto.ValidateHost(sm.Host); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrImport, filepath.Join(pdir, MetadataFile), err)
		}
		pm := &ProcMeta{Host: sm.Host, PID: sm.PID, Instance: sm.Instance, PPID: sm.PPID, Python: sm.Python, VLLM: sm.VLLM,
			Argv: sm.Argv, StartNS: sm.StartNS, EndNS: sm.EndNS, EndState: sm.EndState, EndSignal: sm.EndSignal,
			Targets: sm.Targets, Tables: sm.Tables, Dropped: sm.Dropped, LastSeq: sm.LastSeq, Rows: map[string]int64{},
			Ident: Ident{Role: sm.Ident.Role, DP: sm.Ident.DP, PP: sm.Ident.PP, TP: sm.Ident.TP, EP: sm.Ident.EP, Rank: sm.Ident.Rank}}
		pm.Ended = sm.EndNS > 0 || sm.EndState != ""
		pm.Proc = proto.ProcToken(pm.Role, int(pm.DP), int(pm.Rank), int(pm.PID))
		if k := proto.InstanceKey(sm.Argv); k != "" {
			keys[k] = true
			if n := proto.NodeRank(sm.Argv); n >= 0 {
				f.node = int64(n)
			}
		} else if k := sm.InstanceKey; k != "" {
			keys[k] = true
		}
		f.procs = append(f.procs, importProc{dir: pdir, meta: pm})
	}
	if len(f.procs) == 0 {
		return nil, fmt.Errorf("%w: %s holds no process folder (<role>-<rank>-<pid>/ with metadata.json): give the session_<id> folders the shim wrote without an agent", ErrImport, path)
	}
	if len(keys) > 1 {
		return nil, fmt.Errorf("%w: %s holds processes of several instances (%s)", ErrImport, path, strings.Join(sortedSet(keys), ", "))
	}
	for k := range keys {
		f.key = k
	}
	for _, p := range f.procs {
		if f.key != "" {
			p.meta.InstanceKey = f.key
		}
		if f.node >= 0 {
			n := f.node
			p.meta.NodeRank = &n
		}
	}
	return f, nil
}

// checkOneInstance refuses folders of different instances and folders that overlap.
func checkOneInstance(in []*importFolder) error {
	if len(in) > 1 {
		for _, f := range in {
			if f.key == "" {
				return fmt.Errorf("%w: %s names no multi-node instance (no process there was started with --nnodes, --data-parallel-* or PROFILEMATE_INSTANCE_KEY), so it cannot be matched with the other folders: import it alone", ErrImport, f.path)
			}
		}
		for _, f := range in[1:] {
			if f.key != in[0].key {
				return fmt.Errorf("%w: the folders are of different instances: %s is %s, %s is %s", ErrImport, in[0].path, in[0].key, f.path, f.key)
			}
		}
	}
	type owner struct {
		path string
		p    *ProcMeta
	}
	procs := map[[3]string]owner{}
	workers, engines := map[int64]owner{}, map[int64]owner{}
	clash := func(what string, a, b owner) error {
		return fmt.Errorf("%w: %s is in two folders: %s (host %s pid %d) and %s (host %s pid %d); the folders overlap (one host's folder given twice, or folders of two runs)",
			ErrImport, what, a.path, a.p.Host, a.p.PID, b.path, b.p.Host, b.p.PID)
	}
	for _, f := range in {
		for _, ip := range f.procs {
			p, o := ip.meta, owner{f.path, ip.meta}
			k := [3]string{p.Host, strconv.FormatInt(p.PID, 10), p.Instance}
			if prev, ok := procs[k]; ok {
				return clash(fmt.Sprintf("process %s/%d", p.Host, p.PID), prev, o)
			}
			procs[k] = o
			switch {
			case p.Role == proto.RoleWorker && p.Rank >= 0:
				if prev, ok := workers[p.Rank]; ok && prev.path != f.path {
					return clash(fmt.Sprintf("global rank %d", p.Rank), prev, o)
				}
				workers[p.Rank] = o
			case p.Role == proto.RoleEngineCore && p.DP >= 0 && strings.HasPrefix(f.key, "dp:"):
				if prev, ok := engines[p.DP]; ok && prev.path != f.path {
					return clash(fmt.Sprintf("the EngineCore of DP rank %d", p.DP), prev, o)
				}
				engines[p.DP] = o
			}
		}
	}
	return nil
}

// importTable writes table t of every input process into dir/<table>.csv in the hub's layout
// (proto's header + ts_aligned_ns, the session column set to session); no file when no process
// has a row. It returns the rows and bytes written.
func importTable(dir string, t *proto.Schema, session string, in []*importFolder) (int64, int64, error) {
	header := append(t.Header(), AlignedColumn)
	var out *os.File
	var w *csv.Writer
	var rows int64
	for _, f := range in {
		for _, ip := range f.procs {
			path := filepath.Join(ip.dir, t.Table+".csv")
			src, err := os.Open(path)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return 0, 0, fmt.Errorf("%w: %w", ErrImport, err)
			}
			r := csv.NewReader(src)
			r.FieldsPerRecord = -1
			hdr, err := r.Read()
			if err == io.EOF {
				src.Close()
				continue
			}
			if err != nil {
				src.Close()
				return 0, 0, fmt.Errorf("%w: %s: %w", ErrImport, path, err)
			}
			pos := map[string]int{}
			for i, h := range hdr {
				pos[h] = i
			}
			rec := make([]string, len(header))
			for {
				in, err := r.Read()
				if err == io.EOF {
					break
				}
				if err != nil {
					src.Close()
					return 0, 0, fmt.Errorf("%w: %s: %w", ErrImport, path, err)
				}
				for i, h := range header {
					rec[i] = ""
					if j, ok := pos[h]; ok && j < len(in) {
						rec[i] = in[j]
					}
				}
				rec[0] = session
				rec[len(rec)-1] = rec[pos2(header, "ts_ns")] // no offsets measured: aligned = own clock
				if out == nil {
					if out, err = os.Create(filepath.Join(dir, t.Table+".csv")); err != nil {
						src.Close()
						return 0, 0, fmt.Errorf("import: %w", err)
					}
					w = csv.NewWriter(out)
					_ = w.Write(header)
				}
				if err := w.Write(rec); err != nil {
					src.Close()
					out.Close()
					return 0, 0, fmt.Errorf("import: %w", err)
				}
				rows++
				ip.meta.Rows[t.Table]++
			}
			src.Close()
		}
	}
	if out == nil {
		return 0, 0, nil
	}
	w.Flush()
	if err := w.Error(); err != nil {
		out.Close()
		return 0, 0, fmt.Errorf("import: %w", err)
	}
	st, err := out.Stat()
	if err != nil {
		out.Close()
		return 0, 0, fmt.Errorf("import: %w", err)
	}
	if err := out.Close(); err != nil {
		return 0, 0, fmt.Errorf("import: %w", err)
	}
	return rows, st.Size(), nil
}

// pos2 is the index of name in header (-1 when absent; ts_ns is a common column, always there).
func pos2(header []string, name string) int {
	for i, h := range header {
		if h == name {
			return i
		}
	}
	return -1
}

// uniqueTokens keeps process tokens unique per host, as the agent does: a second process of one
// token becomes p<pid>.
func uniqueTokens(procs []*ProcMeta) {
	seen := map[string]bool{}
	for _, p := range procs {
		k := p.Host + "/" + p.Proc
		if seen[k] {
			p.Proc = "p" + strconv.FormatInt(p.PID, 10)
			k = p.Host + "/" + p.Proc
		}
		seen[k] = true
	}
}

func sortedSet(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
