// Package proto is ProfileMate's contract in code: the table schemas of proto/tables, the event
// kinds, the NATS subjects and stream, the shim's JSON lines and their conversion to the protobuf
// messages of package pmpb, and CSV rows. The shim (Python), the agent and the hub all take their
// names from here, so a fleet's data keeps lining up.
package proto

//go:generate go test -run TestShimTablesFresh|TestKindsGoFresh -args -update

import (
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
)

// SchemaMajor and SchemaMinor are the version of the tables and messages; see the history and
// the compatibility rule at the top of profilemate/v1/profilemate.proto.
const (
	SchemaMajor = 1
	SchemaMinor = 0
)

// SchemaVersion spells the version as "major.minor".
var SchemaVersion = fmt.Sprintf("%d.%d", SchemaMajor, SchemaMinor)

// Column types.
const (
	TypeInt    = "int"
	TypeFloat  = "float"
	TypeString = "string"
	TypeBool   = "bool"
)

// Common columns, in the order every table starts with.
var commonNames = []string{"session", "host", "pid", "role", "dp", "pp", "tp", "ep", "seq", "step", "ts_ns"}

//go:embed tables/*.json
var tablesFS embed.FS

// Column is one column of a table.
type Column struct {
	Name    string `json:"name"`
	Type    string `json:"type"`
	Unit    string `json:"unit"`
	Meaning string `json:"meaning"`
	Since   string `json:"since,omitempty"` // version the column was added in; empty = the table's
}

// Schema is one table: its own columns (the common ones are not repeated).
type Schema struct {
	Table   string   `json:"table"`
	Kind    string   `json:"kind,omitempty"`
	Since   string   `json:"since"`
	Columns []Column `json:"columns"`

	index map[string]int
}

// Col returns the named column of the table's own columns.
func (s *Schema) Col(name string) (Column, bool) {
	i, ok := s.index[name]
	if !ok {
		return Column{}, false
	}
	return s.Columns[i], true
}

// Header is the table's CSV header: the common columns, then its own columns in schema order.
func (s *Schema) Header() []string {
	h := append([]string(nil), commonNames...)
	for _, c := range s.Columns {
		h = append(h, c.Name)
	}
	return h
}

// Kind is one event kind: its name (KindName's grammar), who emits it ("shim", "agent", or "hub"
// for kinds declared at run time, e.g. a plugin's derived kinds) and what it records.
type Kind struct {
	Kind    string `json:"kind"`
	By      string `json:"by"`
	Meaning string `json:"meaning"`
}

// Who emits a kind (Kind.By).
const (
	ByShim  = "shim"
	ByAgent = "agent"
	ByHub   = "hub"
)

// Registry is a loaded, validated set of schema files, plus the kinds declared at run time
// (Declare). Reads are lock-free and safe while another goroutine declares.
type Registry struct {
	Common []Column
	mu     sync.Mutex // serializes Declare
	st     atomic.Pointer[regState]
}

// regState is one immutable version of the registry's kinds and tables.
type regState struct {
	kinds  []Kind
	kindIx map[string]int
	tables []*Schema // in kind order, then by file name
	byName map[string]*Schema
	byKind map[string][]string
}

func (r *Registry) state() *regState { return r.st.Load() }

var (
	defOnce sync.Once
	defReg  *Registry
	defErr  error
)

// Default returns the registry of the embedded proto/tables; a broken embedded schema is a build
// defect, so the error only ever shows in this package's tests.
func Default() *Registry {
	defOnce.Do(func() { defReg, defErr = NewRegistry() })
	if defErr != nil {
		panic(fmt.Sprintf("proto: embedded tables invalid: %v", defErr))
	}
	return defReg
}

// NewRegistry loads a fresh registry of the embedded tables: one whose declared kinds are its own
// (tests, or a process that keeps plugins' kinds apart from Default's).
func NewRegistry() (*Registry, error) {
	sub, err := fs.Sub(tablesFS, "tables")
	if err != nil {
		return nil, fmt.Errorf("proto: embedded tables: %w", err)
	}
	return Load(sub)
}

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// kindsFile is the one list of built-in kinds, in their order.
const kindsFile = "kinds.json"

// Load reads kinds.json (the kinds, in order), common.json and every other *.json of fsys as table
// schemas and validates them: known types, snake_case unique names, common columns exactly as
// fixed, every table of a listed kind and every kind with a table.
func Load(fsys fs.FS) (*Registry, error) {
	names, err := fs.Glob(fsys, "*.json")
	if err != nil {
		return nil, fmt.Errorf("proto: list tables: %w", err)
	}
	r := &Registry{}
	st := &regState{kindIx: map[string]int{}, byName: map[string]*Schema{}, byKind: map[string][]string{}}
	kb, err := fs.ReadFile(fsys, kindsFile)
	if err != nil {
		return nil, fmt.Errorf("proto: read %s: %w", kindsFile, err)
	}
	var kf struct {
		Kinds []Kind `json:"kinds"`
	}
	dec := json.NewDecoder(strings.NewReader(string(kb)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&kf); err != nil {
		return nil, fmt.Errorf("proto: %s: %w", kindsFile, err)
	}
	for _, k := range kf.Kinds {
		if err := ValidateKind(k.Kind); err != nil {
			return nil, fmt.Errorf("proto: %s: %w", kindsFile, err)
		}
		if _, dup := st.kindIx[k.Kind]; dup {
			return nil, fmt.Errorf("proto: %s: kind %s twice", kindsFile, k.Kind)
		}
		if k.By != ByShim && k.By != ByAgent {
			return nil, fmt.Errorf("proto: %s: kind %s: by %q, want %q or %q", kindsFile, k.Kind, k.By, ByShim, ByAgent)
		}
		if k.Meaning == "" {
			return nil, fmt.Errorf("proto: %s: kind %s: no meaning", kindsFile, k.Kind)
		}
		st.kindIx[k.Kind] = len(st.kinds)
		st.kinds = append(st.kinds, k)
	}
	var all []*Schema
	sawCommon := false
	for _, n := range names {
		if n == kindsFile {
			continue
		}
		b, err := fs.ReadFile(fsys, n)
		if err != nil {
			return nil, fmt.Errorf("proto: read %s: %w", n, err)
		}
		var s Schema
		dec := json.NewDecoder(strings.NewReader(string(b)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&s); err != nil {
			return nil, fmt.Errorf("proto: %s: %w", n, err)
		}
		if want := strings.TrimSuffix(path.Base(n), ".json"); s.Table != want {
			return nil, fmt.Errorf("proto: %s names table %q, want %q", n, s.Table, want)
		}
		if err := validateColumns(s.Table, s.Columns); err != nil {
			return nil, err
		}
		if s.Since == "" {
			return nil, fmt.Errorf("proto: %s: no \"since\"", n)
		}
		if s.Table == "common" {
			sawCommon = true
			if len(s.Columns) != len(commonNames) {
				return nil, fmt.Errorf("proto: common.json has %d columns, want %v", len(s.Columns), commonNames)
			}
			for i, c := range s.Columns {
				if c.Name != commonNames[i] {
					return nil, fmt.Errorf("proto: common column %d is %q, want %q", i, c.Name, commonNames[i])
				}
			}
			r.Common = s.Columns
			continue
		}
		if _, ok := st.kindIx[s.Kind]; !ok {
			return nil, fmt.Errorf("proto: table %s has unknown kind %q (kinds: %s)", s.Table, s.Kind, kindsFile)
		}
		sc := s
		all = append(all, &sc)
	}
	if !sawCommon {
		return nil, fmt.Errorf("proto: common.json missing")
	}
	sort.SliceStable(all, func(i, j int) bool { return st.kindIx[all[i].Kind] < st.kindIx[all[j].Kind] })
	for _, s := range all {
		if err := st.addTable(s); err != nil {
			return nil, err
		}
	}
	for _, k := range st.kinds {
		if len(st.byKind[k.Kind]) == 0 {
			return nil, fmt.Errorf("proto: kind %s has no table", k.Kind)
		}
	}
	r.st.Store(st)
	return r, nil
}

// addTable indexes a validated schema into st (which is not yet published).
func (st *regState) addTable(s *Schema) error {
	if _, dup := st.byName[s.Table]; dup {
		return fmt.Errorf("proto: table %s twice", s.Table)
	}
	for _, c := range s.Columns {
		for _, cn := range commonNames {
			if c.Name == cn {
				return fmt.Errorf("proto: table %s repeats common column %q", s.Table, c.Name)
			}
		}
	}
	s.index = map[string]int{}
	for i, c := range s.Columns {
		s.index[c.Name] = i
	}
	st.tables = append(st.tables, s)
	st.byName[s.Table] = s
	st.byKind[s.Kind] = append(st.byKind[s.Kind], s.Table)
	return nil
}

// Declare adds a kind and its tables at run time: what a hub plugin emits as derived events. The
// kind follows KindName; its tables follow the schema rules of Load (snake_case names, known types,
// a meaning per column, no common column repeated) and get Kind set to it; Since defaults to the
// current schema version. Declaring the same kind again with identical tables is a no-op; anything
// else that clashes with a known kind or table is an error. Readers see the kind at once.
func (r *Registry) Declare(kind Kind, tables ...Schema) error {
	if err := ValidateKind(kind.Kind); err != nil {
		return fmt.Errorf("proto: declare: %w", err)
	}
	if kind.By == "" {
		kind.By = ByHub
	}
	if len(tables) == 0 {
		return fmt.Errorf("proto: declare kind %s: no table", kind.Kind)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.state()
	if i, ok := old.kindIx[kind.Kind]; ok {
		if old.kinds[i].By == kind.By && sameTables(old, kind.Kind, tables) {
			return nil
		}
		return fmt.Errorf("proto: declare kind %s: already known with other tables", kind.Kind)
	}
	st := &regState{
		kinds:  append(append([]Kind(nil), old.kinds...), kind),
		kindIx: map[string]int{},
		tables: append([]*Schema(nil), old.tables...),
		byName: map[string]*Schema{},
		byKind: map[string][]string{},
	}
	for i, k := range st.kinds {
		st.kindIx[k.Kind] = i
	}
	for n, s := range old.byName {
		st.byName[n] = s
	}
	for k, ts := range old.byKind {
		st.byKind[k] = ts
	}
	for i := range tables {
		s := tables[i]
		s.Kind = kind.Kind
		if s.Since == "" {
			s.Since = SchemaVersion
		}
		if !nameRE.MatchString(s.Table) {
			return fmt.Errorf("proto: declare kind %s: table name %q is not snake_case", kind.Kind, s.Table)
		}
		s.Columns = append([]Column(nil), s.Columns...)
		if err := validateColumns(s.Table, s.Columns); err != nil {
			return fmt.Errorf("proto: declare kind %s: %w", kind.Kind, err)
		}
		if err := st.addTable(&s); err != nil {
			return fmt.Errorf("proto: declare kind %s: %w", kind.Kind, err)
		}
	}
	r.st.Store(st)
	return nil
}

func sameTables(st *regState, kind string, tables []Schema) bool {
	have := st.byKind[kind]
	if len(have) != len(tables) {
		return false
	}
	for i, t := range tables {
		s := st.byName[have[i]]
		if s.Table != t.Table || len(s.Columns) != len(t.Columns) {
			return false
		}
		for j, c := range t.Columns {
			if s.Columns[j].Name != c.Name || s.Columns[j].Type != c.Type {
				return false
			}
		}
	}
	return true
}

func validateColumns(table string, cols []Column) error {
	if len(cols) == 0 {
		return fmt.Errorf("proto: table %s has no columns", table)
	}
	seen := map[string]bool{}
	for i, c := range cols {
		if !nameRE.MatchString(c.Name) {
			return fmt.Errorf("proto: table %s column %d: name %q is not snake_case", table, i, c.Name)
		}
		if seen[c.Name] {
			return fmt.Errorf("proto: table %s: column %q twice", table, c.Name)
		}
		seen[c.Name] = true
		switch c.Type {
		case TypeInt, TypeFloat, TypeString, TypeBool:
		default:
			return fmt.Errorf("proto: table %s column %s: unknown type %q", table, c.Name, c.Type)
		}
		if c.Meaning == "" {
			return fmt.Errorf("proto: table %s column %s: no meaning", table, c.Name)
		}
	}
	return nil
}

// Tables returns the tables in kind order (declared kinds last).
func (r *Registry) Tables() []*Schema { return append([]*Schema(nil), r.state().tables...) }

// Table returns one table's schema.
func (r *Registry) Table(name string) (*Schema, bool) { return r.table(name) }

func (r *Registry) table(name string) (*Schema, bool) {
	s, ok := r.state().byName[name]
	return s, ok
}

// KindTables returns the tables a kind feeds (nil for an unknown kind).
func (r *Registry) KindTables(kind string) []string {
	return append([]string(nil), r.state().byKind[kind]...)
}

// Header returns a table's CSV header, nil for an unknown table.
func (r *Registry) Header(table string) []string {
	s, ok := r.table(table)
	if !ok {
		return nil
	}
	return s.Header()
}

// Kinds returns every kind's name in order: the built-in ones of kinds.json, then declared ones.
func (r *Registry) Kinds() []string {
	st := r.state()
	out := make([]string, len(st.kinds))
	for i, k := range st.kinds {
		out[i] = k.Kind
	}
	return out
}

// KindsBy returns the kinds one emitter records (ByShim, ByAgent, ByHub), in order.
func (r *Registry) KindsBy(by string) []string {
	var out []string
	for _, k := range r.state().kinds {
		if k.By == by {
			out = append(out, k.Kind)
		}
	}
	return out
}

// KindInfo returns a kind's entry.
func (r *Registry) KindInfo(kind string) (Kind, bool) {
	st := r.state()
	i, ok := st.kindIx[kind]
	if !ok {
		return Kind{}, false
	}
	return st.kinds[i], true
}

// IsKind reports whether kind is known (built in or declared).
func (r *Registry) IsKind(kind string) bool {
	_, ok := r.state().kindIx[kind]
	return ok
}

// ColumnIndex binds a column by name: its index in the table's CSV header (common columns first),
// and its schema. Code that picks cells by column (pmhub show, the hub's metrics) binds once with
// this, so a renamed or missing column is an error at start and in tests, never a silent blank.
// Errors: unknown table, or a column neither common nor the table's own.
func (r *Registry) ColumnIndex(table, column string) (int, Column, error) {
	s, ok := r.table(table)
	if !ok {
		return 0, Column{}, fmt.Errorf("proto: no table %q", table)
	}
	for i, c := range r.Common {
		if c.Name == column {
			return i, c, nil
		}
	}
	if i, ok := s.index[column]; ok {
		return len(r.Common) + i, s.Columns[i], nil
	}
	return 0, Column{}, fmt.Errorf("proto: table %s has no column %q", table, column)
}

// OwnIndex binds one of a table's own columns by name: its index among the table's own columns
// (the hub's Event.Cols order). Errors: unknown table or column.
func (r *Registry) OwnIndex(table, column string) (int, error) {
	s, ok := r.table(table)
	if !ok {
		return 0, fmt.Errorf("proto: no table %q", table)
	}
	i, ok := s.index[column]
	if !ok {
		return 0, fmt.Errorf("proto: table %s has no own column %q", table, column)
	}
	return i, nil
}

// Tables returns the embedded tables in kind order.
func Tables() []*Schema { return Default().Tables() }

// Table returns one embedded table's schema.
func Table(name string) (*Schema, bool) { return Default().Table(name) }

// Kinds returns every event kind (built-in ones in the order of kinds.json, then declared ones).
func Kinds() []string { return Default().Kinds() }

// ShimKinds returns the kinds the shim records (every built-in kind but the agent's gpu).
func ShimKinds() []string { return Default().KindsBy(ByShim) }

// IsKind reports whether k is a known event kind.
func IsKind(k string) bool { return Default().IsKind(k) }

// KindTables returns the tables a kind feeds.
func KindTables(kind string) []string { return Default().KindTables(kind) }

// Header returns a table's CSV header (common columns + its own), nil for an unknown table.
func Header(table string) []string { return Default().Header(table) }

// ColumnIndex binds a column of an embedded or declared table by name; see Registry.ColumnIndex.
func ColumnIndex(table, column string) (int, Column, error) {
	return Default().ColumnIndex(table, column)
}

// OwnIndex binds one of a table's own columns by name; see Registry.OwnIndex.
func OwnIndex(table, column string) (int, error) { return Default().OwnIndex(table, column) }

// CommonColumns returns the common columns every table starts with.
func CommonColumns() []Column { return append([]Column(nil), Default().Common...) }

// TableNames returns every table name in kind order (the CSV file names without .csv).
func TableNames() []string {
	var n []string
	for _, s := range Tables() {
		n = append(n, s.Table)
	}
	return n
}

// ShimTablesJSON is the shim's copy of the tables (shim/profilemate/_tables.json), which
// profilemate.schema reads: {"schema_major", "schema_minor", "common": [columns], "kinds":
// {kind: [tables]}, "tables": {table: schema}, "names": {"session"|"host"|"kind": NameRule},
// "kind_list": [Kind in order]}. Kinds declared at run time are not in it.
// Regenerate it with `go generate ./proto`.
func (r *Registry) ShimTablesJSON() ([]byte, error) {
	type out struct {
		SchemaMajor int                  `json:"schema_major"`
		SchemaMinor int                  `json:"schema_minor"`
		Common      []Column             `json:"common"`
		Kinds       map[string][]string  `json:"kinds"`
		Tables      map[string]*Schema   `json:"tables"`
		Names       map[string]*NameRule `json:"names"`
		KindList    []Kind               `json:"kind_list"`
	}
	o := out{SchemaMajor: SchemaMajor, SchemaMinor: SchemaMinor, Common: r.Common,
		Kinds: map[string][]string{}, Tables: map[string]*Schema{}, Names: map[string]*NameRule{}}
	for _, n := range NameRules() {
		o.Names[n.What] = n
	}
	for _, k := range r.state().kinds {
		if k.By == ByHub {
			continue // declared at run time, not part of the shipped contract
		}
		o.Kinds[k.Kind] = r.KindTables(k.Kind)
		o.KindList = append(o.KindList, k)
		for _, t := range o.Kinds[k.Kind] {
			o.Tables[t], _ = r.table(t)
		}
	}
	b, err := json.MarshalIndent(o, "", " ")
	if err != nil {
		return nil, fmt.Errorf("proto: shim tables: %w", err)
	}
	return append(b, '\n'), nil
}
