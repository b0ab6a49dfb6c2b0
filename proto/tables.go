// Package proto is ProfileMate's contract in code: the table schemas of proto/tables, the event
// kinds, the NATS subjects and stream, the shim's JSON lines and their conversion to the protobuf
// messages of package pmpb, and CSV rows. The shim (Python), the agent and the hub all take their
// names from here, so a fleet's data keeps lining up.
package proto

//go:generate go test -run TestShimTablesFresh -update .

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

// Event kinds (docs/ARCHITECTURE.md "Kinds and tables").
const (
	KindCudaGraph      = "cuda_graph"
	KindKVCache        = "kv_cache"
	KindMoEExpert      = "moe_expert"
	KindForwardPass    = "forward_pass"
	KindCPUTiming      = "cpu_timing"
	KindBatchUtil      = "batch_util"
	KindPreemption     = "preemption"
	KindEncoderDecoder = "encoder_decoder"
	KindGPU            = "gpu" // written by the agent only
)

// kindOrder is the order Kinds returns; it is also the order of tables in Tables.
var kindOrder = []string{
	KindCudaGraph, KindKVCache, KindMoEExpert, KindForwardPass, KindCPUTiming,
	KindBatchUtil, KindPreemption, KindEncoderDecoder, KindGPU,
}

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

// Registry is a loaded, validated set of schema files.
type Registry struct {
	Common []Column
	tables []*Schema // in kind order, then by file name
	byName map[string]*Schema
	byKind map[string][]string
}

var (
	defOnce sync.Once
	defReg  *Registry
	defErr  error
)

// Default returns the registry of the embedded proto/tables; a broken embedded schema is a build
// defect, so the error only ever shows in this package's tests.
func Default() *Registry {
	defOnce.Do(func() {
		sub, err := fs.Sub(tablesFS, "tables")
		if err != nil {
			defErr = err
			return
		}
		defReg, defErr = Load(sub)
	})
	if defErr != nil {
		panic(fmt.Sprintf("proto: embedded tables invalid: %v", defErr))
	}
	return defReg
}

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// Load reads common.json and every other *.json of fsys as table schemas and validates them:
// known types, snake_case unique names, common columns exactly as fixed, every table of a known
// kind and every kind with a table.
func Load(fsys fs.FS) (*Registry, error) {
	names, err := fs.Glob(fsys, "*.json")
	if err != nil {
		return nil, fmt.Errorf("proto: list tables: %w", err)
	}
	r := &Registry{byName: map[string]*Schema{}, byKind: map[string][]string{}}
	var all []*Schema
	sawCommon := false
	for _, n := range names {
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
		if !isKind(s.Kind) {
			return nil, fmt.Errorf("proto: table %s has unknown kind %q (kinds: %v)", s.Table, s.Kind, kindOrder)
		}
		s.index = map[string]int{}
		for i, c := range s.Columns {
			s.index[c.Name] = i
		}
		sc := s
		all = append(all, &sc)
	}
	if !sawCommon {
		return nil, fmt.Errorf("proto: common.json missing")
	}
	for _, s := range all {
		for _, c := range s.Columns {
			for _, cn := range commonNames {
				if c.Name == cn {
					return nil, fmt.Errorf("proto: table %s repeats common column %q", s.Table, c.Name)
				}
			}
		}
	}
	pos := map[string]int{}
	for i, k := range kindOrder {
		pos[k] = i
	}
	sort.SliceStable(all, func(i, j int) bool { return pos[all[i].Kind] < pos[all[j].Kind] })
	for _, s := range all {
		r.tables = append(r.tables, s)
		r.byName[s.Table] = s
		r.byKind[s.Kind] = append(r.byKind[s.Kind], s.Table)
	}
	for _, k := range kindOrder {
		if len(r.byKind[k]) == 0 {
			return nil, fmt.Errorf("proto: kind %s has no table", k)
		}
	}
	return r, nil
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

func isKind(k string) bool {
	for _, x := range kindOrder {
		if x == k {
			return true
		}
	}
	return false
}

// Tables returns the tables in kind order.
func (r *Registry) Tables() []*Schema { return append([]*Schema(nil), r.tables...) }

// Table returns one table's schema.
func (r *Registry) Table(name string) (*Schema, bool) {
	s, ok := r.byName[name]
	return s, ok
}

// KindTables returns the tables a kind feeds (nil for an unknown kind).
func (r *Registry) KindTables(kind string) []string {
	return append([]string(nil), r.byKind[kind]...)
}

// Header returns a table's CSV header, nil for an unknown table.
func (r *Registry) Header(table string) []string {
	s, ok := r.byName[table]
	if !ok {
		return nil
	}
	return s.Header()
}

// Tables returns the embedded tables in kind order.
func Tables() []*Schema { return Default().Tables() }

// Table returns one embedded table's schema.
func Table(name string) (*Schema, bool) { return Default().Table(name) }

// Kinds returns every event kind, gpu last.
func Kinds() []string { return append([]string(nil), kindOrder...) }

// ShimKinds returns the kinds the shim records (every kind but gpu, which the agent samples).
func ShimKinds() []string { return append([]string(nil), kindOrder[:len(kindOrder)-1]...) }

// IsKind reports whether k is a known event kind.
func IsKind(k string) bool { return isKind(k) }

// KindTables returns the tables a kind feeds.
func KindTables(kind string) []string { return Default().KindTables(kind) }

// Header returns a table's CSV header (common columns + its own), nil for an unknown table.
func Header(table string) []string { return Default().Header(table) }

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
// {kind: [tables]}, "tables": {table: schema}, "names": {"session"|"host"|"kind": NameRule}}.
// Regenerate it with `go generate ./proto`.
func (r *Registry) ShimTablesJSON() ([]byte, error) {
	type out struct {
		SchemaMajor int                  `json:"schema_major"`
		SchemaMinor int                  `json:"schema_minor"`
		Common      []Column             `json:"common"`
		Kinds       map[string][]string  `json:"kinds"`
		Tables      map[string]*Schema   `json:"tables"`
		Names       map[string]*NameRule `json:"names"`
	}
	o := out{SchemaMajor: SchemaMajor, SchemaMinor: SchemaMinor, Common: r.Common,
		Kinds: map[string][]string{}, Tables: map[string]*Schema{}, Names: map[string]*NameRule{}}
	for _, n := range NameRules() {
		o.Names[n.What] = n
	}
	for _, k := range kindOrder {
		o.Kinds[k] = r.KindTables(k)
	}
	for _, s := range r.tables {
		o.Tables[s.Table] = s
	}
	b, err := json.MarshalIndent(o, "", " ")
	if err != nil {
		return nil, fmt.Errorf("proto: shim tables: %w", err)
	}
	return append(b, '\n'), nil
}
