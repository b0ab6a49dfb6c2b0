// Package sdk is what a ProfileMate profiler plugin is written against: a plain Go interface
// (Profiler), the values it sees (Session, Batch, Event) and returns (Row, Finding), and Serve,
// which turns a Profiler into a go-plugin gRPC server that pmhub starts, feeds and restarts.
//
// A plugin's main is one line:
//
//	func main() { sdk.Serve(myProfiler{}) }
//
// The package pulls in nothing beyond go-plugin, gRPC, protobuf and ProfileMate's generated wire
// messages (proto/pmpb, plugins/pluginpb): no NATS, no hub. docs/plugins.md walks through writing
// one; plugins/example is a complete plugin.
package sdk

import (
	"context"
	"fmt"
	"regexp"
	"strings"
)

// APIVersion is the version of this Go interface. Describe reports it so the host can refuse a
// plugin built against an API it does not speak. History:
//
//	1  Describe, OpenSession, Consume (one event batch per call), CloseSession; optional
//	   InputWatcher; the findings table.
const APIVersion = 1

// Profiler is a profiler plugin. The host calls it from one goroutine at a time, in this order
// per session: OpenSession, Consume for every event batch of the kinds it asked for (in stream
// order), CloseSession. Several sessions may be open at once; batches of different sessions
// interleave.
//
// A plugin is restarted when it crashes, exits or misses a call's deadline, and is then fed its
// open sessions again from their first event: keep derived state in memory and compute rows from
// the input alone (no clocks, no randomness), so the replay gives the same rows. The host writes
// each row once, keyed by (plugin, version, input stream sequence, position).
type Profiler interface {
	// Describe says who the plugin is and what it reads and writes. It is called once per start
	// and must not fail.
	Describe() Info
	// OpenSession announces a session before its first batch. An error ends the plugin's work on
	// that session (logged); other sessions go on.
	OpenSession(ctx context.Context, s Session) error
	// Consume takes one event batch (one process, one kind, events in seq order) and returns the
	// rows it gives, if any. An error is logged and the batch is skipped.
	Consume(ctx context.Context, b Batch) ([]Row, error)
	// CloseSession ends a session; it returns the plugin's final rows for it (summaries,
	// findings).
	CloseSession(ctx context.Context, session string) ([]Row, error)
}

// InputWatcher is optionally implemented by a Profiler that wants to know when a kind it reads
// is switched on or off in a session (by a person with pmhub profilers, or by the hub). While a
// kind is off its batches stop coming; the plugin may say so in a finding.
type InputWatcher interface {
	InputChanged(ctx context.Context, session, kind string, enabled bool, reason string)
}

// Info describes a plugin.
type Info struct {
	// Name is [a-z][a-z0-9_]{0,39}: the plugin's proc token is plugin-<name>; unique on a hub.
	Name string
	// Version is the plugin's own version (semver recommended). A new version is a new key for
	// its rows: replacing a binary by another version recomputes open sessions under that version.
	Version string
	// Description is one line for pmhub plugins ls.
	Description string
	// Components are the vLLM components the plugin studies: api_server, engine_core, worker.
	Components []string
	// Kinds are the event kinds it consumes (proto/tables "kind": cuda_graph, kv_cache,
	// moe_expert, forward_pass, cpu_timing, batch_util, preemption, encoder_decoder, gpu).
	Kinds []string
	// Tables are the derived tables it writes, besides the common findings table.
	Tables []Table
}

// Table is a derived table in the shape of proto/tables/*.json. The host adds the common columns
// (session, host, pid, role, dp, pp, tp, ep, seq, step, ts_ns) in front and the key columns
// (plugin, plugin_version, input_seq, row) behind them; Columns are the table's own.
type Table struct {
	Table   string   `json:"table"` // snake_case, not a seed table's name, unique on the hub
	Kind    string   `json:"kind"`  // derived kind, snake_case: last token of its NATS subject
	Since   string   `json:"since"`
	Columns []Column `json:"columns"`
}

// Column is one column of a table: Type is int, float, string or bool; Unit may be empty.
type Column struct {
	Name    string `json:"name"`
	Type    string `json:"type"`
	Unit    string `json:"unit"`
	Meaning string `json:"meaning"`
}

// Column types.
const (
	TypeInt    = "int"
	TypeFloat  = "float"
	TypeString = "string"
	TypeBool   = "bool"
)

// Session is what the host knows of a session when it opens it for the plugin.
type Session struct {
	ID        string
	StartNS   int64 // Unix epoch nanoseconds; 0 when unknown
	Processes []Process
	// MetadataJSON is the hub's metadata.json of the session as it stood when opened (may be
	// empty); see docs/hub.md for its fields.
	MetadataJSON []byte
}

// Process is who recorded a batch. Unknown ranks are -1.
type Process struct {
	Host string
	PID  int64
	Role string // api_server, launcher, engine_core, worker, agent
	DP   int32
	PP   int32
	TP   int32
	EP   int32
	Rank int32 // global worker rank (worker), API server index (api_server)
	// InstanceKey is the multi-node vLLM instance of the process (docs/multinode.md), as the
	// hub's metadata knew it when the session opened; "" when unknown (and in batches).
	InstanceKey string
}

// Batch is one stream message: events of one process and one kind, in seq order.
type Batch struct {
	Session   string
	StreamSeq uint64 // JetStream stream sequence: the key of the rows this batch gives
	Kind      string
	Process   Process
	Events    []Event
	Dropped   uint64 // events the process dropped so far (cumulative)
}

// Event is one row of a seed table (proto/tables/<Table>.json).
type Event struct {
	Table string
	Seq   uint64 // per-process sequence number; gaps are drops
	Step  int64  // -1 when not tied to a step
	TSNS  int64  // wall clock of the recording process, Unix epoch nanoseconds
	// Cols holds the table's own columns: int64, float64, string or bool by the column's type.
	// A column absent here is an empty cell.
	Cols map[string]any
}

// Int returns an int column (an int stored as float is truncated); ok is false when absent.
func (e Event) Int(name string) (int64, bool) {
	switch v := e.Cols[name].(type) {
	case int64:
		return v, true
	case float64:
		return int64(v), true
	}
	return 0, false
}

// Float returns a numeric column as float64; ok is false when absent.
func (e Event) Float(name string) (float64, bool) {
	switch v := e.Cols[name].(type) {
	case float64:
		return v, true
	case int64:
		return float64(v), true
	}
	return 0, false
}

// String returns a string column; ok is false when absent.
func (e Event) String(name string) (string, bool) {
	v, ok := e.Cols[name].(string)
	return v, ok
}

// Row is one derived row. Step is -1 when the row is not tied to a step; TSNS 0 takes the host's
// clock; ranks default to -1 (use NoRanks or set all four). Cols keys are the table's columns with
// int64 (or int), float64, string or bool values.
type Row struct {
	Table string
	Step  int64
	TSNS  int64
	DP    int32
	PP    int32
	TP    int32
	EP    int32
	Cols  map[string]any
}

// NewRow starts a row of table with no step and unknown ranks.
func NewRow(table string, cols map[string]any) Row {
	return Row{Table: table, Step: -1, DP: -1, PP: -1, TP: -1, EP: -1, Cols: cols}
}

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,39}$`)

// Validate checks an Info as the host does: a name, a version, at least one kind, well-formed
// tables with unique names and typed columns. Errors name the first problem.
func (in Info) Validate() error {
	if !nameRE.MatchString(in.Name) {
		return fmt.Errorf("plugin name %q: want [a-z][a-z0-9_]{0,39}", in.Name)
	}
	if strings.TrimSpace(in.Version) == "" || strings.ContainsAny(in.Version, " \t\n,/") {
		return fmt.Errorf("plugin %s: version %q: want a non-empty word", in.Name, in.Version)
	}
	if len(in.Kinds) == 0 {
		return fmt.Errorf("plugin %s: no kinds to consume", in.Name)
	}
	seen := map[string]bool{FindingsTable: true}
	for _, t := range in.Tables {
		if !nameRE.MatchString(t.Table) {
			return fmt.Errorf("plugin %s: table name %q: want snake_case", in.Name, t.Table)
		}
		if seen[t.Table] {
			return fmt.Errorf("plugin %s: table %q declared twice (or named like the common findings table)", in.Name, t.Table)
		}
		seen[t.Table] = true
		if !nameRE.MatchString(t.Kind) {
			return fmt.Errorf("plugin %s: table %s: kind %q: want snake_case", in.Name, t.Table, t.Kind)
		}
		if len(t.Columns) == 0 {
			return fmt.Errorf("plugin %s: table %s has no columns", in.Name, t.Table)
		}
		cols := map[string]bool{}
		for _, c := range t.Columns {
			if !nameRE.MatchString(c.Name) {
				return fmt.Errorf("plugin %s: table %s: column name %q: want snake_case", in.Name, t.Table, c.Name)
			}
			if reserved[c.Name] || cols[c.Name] {
				return fmt.Errorf("plugin %s: table %s: column %q is reserved or repeated", in.Name, t.Table, c.Name)
			}
			cols[c.Name] = true
			switch c.Type {
			case TypeInt, TypeFloat, TypeString, TypeBool:
			default:
				return fmt.Errorf("plugin %s: table %s: column %s: type %q: want int, float, string or bool", in.Name, t.Table, c.Name, c.Type)
			}
		}
	}
	return nil
}

// reserved are the columns the host writes itself.
var reserved = map[string]bool{
	"session": true, "host": true, "pid": true, "role": true, "dp": true, "pp": true, "tp": true,
	"ep": true, "seq": true, "step": true, "ts_ns": true,
	"plugin": true, "plugin_version": true, "input_seq": true, "row": true,
}

// CommonColumns are the columns the host writes in front of every derived row (the seed tables'
// common columns; host is the hub's, role is "plugin", pid the plugin process's), and KeyColumns
// the ones it writes after them: the row's exactly-once key.
var (
	CommonColumns = []string{"session", "host", "pid", "role", "dp", "pp", "tp", "ep", "seq", "step", "ts_ns"}
	KeyColumns    = []string{"plugin", "plugin_version", "input_seq", "row"}
)

// Table finds a declared table (the findings table included) by name.
func (in Info) Table(name string) (Table, bool) {
	if name == FindingsTable {
		return FindingsSchema, true
	}
	for _, t := range in.Tables {
		if t.Table == name {
			return t, true
		}
	}
	return Table{}, false
}
