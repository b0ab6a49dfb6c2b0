package export

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/parquet-go/parquet-go"

	"github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/report"
)

// ParquetSchema returns the Parquet schema of a session table file with the given CSV header:
// every column optional (an empty CSV cell is null), typed from proto/tables — int as INT64,
// float as DOUBLE, bool as BOOLEAN, string as a UTF-8 BYTE_ARRAY — and zstd-compressed. A column
// the schema does not know (a newer minor version) is kept as a string. Parquet orders a group's
// columns by name; Columns of the schema gives that order.
func ParquetSchema(table string, header []string) *parquet.Schema {
	g := parquet.Group{}
	for _, c := range header {
		typ, _ := ColumnType(table, c)
		var n parquet.Node
		switch typ {
		case proto.TypeInt:
			n = parquet.Int(64)
		case proto.TypeFloat:
			n = parquet.Leaf(parquet.DoubleType)
		case proto.TypeBool:
			n = parquet.Leaf(parquet.BooleanType)
		default:
			n = parquet.String()
		}
		g[c] = parquet.Compressed(parquet.Optional(n), &parquet.Zstd)
	}
	return parquet.NewSchema(table, g)
}

// ParquetTables are the tables WriteParquet converts: every table of proto/tables.
func ParquetTables() []string {
	var t []string
	for _, s := range proto.Default().Tables() {
		t = append(t, s.Table)
	}
	return t
}

// WriteParquet writes one <table>.parquet into outDir for every table the session folder dir has
// a CSV file for, with the same rows in the same order; it returns the files and their row counts.
// Errors: a cell that does not parse as its column's type (named by file, line and column), or an
// unwritable outDir; the file being written is removed then.
func WriteParquet(dir, outDir string) (map[string]int64, error) {
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return nil, fmt.Errorf("parquet: %w", err)
	}
	out := map[string]int64{}
	for _, table := range ParquetTables() {
		t, ok, err := report.OpenTable(dir, table)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		path := filepath.Join(outDir, table+".parquet")
		n, err := writeTable(t, table, path)
		t.Close()
		if err != nil {
			os.Remove(path)
			return nil, err
		}
		out[path] = n
	}
	return out, nil
}

func writeTable(t *report.Rows, table, path string) (int64, error) {
	header := t.Header()
	schema := ParquetSchema(table, header)
	pos := map[string]int{}
	for i, c := range schema.Columns() {
		pos[c[0]] = i
	}
	types := make([]string, len(header))
	for i, c := range header {
		types[i], _ = ColumnType(table, c)
	}
	f, err := os.Create(path)
	if err != nil {
		return 0, fmt.Errorf("parquet: %w", err)
	}
	defer f.Close()
	w := parquet.NewWriter(f, schema)
	batch := make([]parquet.Row, 0, 1024)
	var n int64
	flush := func() error {
		if _, err := w.WriteRows(batch); err != nil {
			return fmt.Errorf("parquet %s: %w", path, err)
		}
		batch = batch[:0]
		return nil
	}
	for {
		more, err := t.Next()
		if err != nil {
			return n, err
		}
		if !more {
			break
		}
		row := make(parquet.Row, len(header))
		for i, c := range header {
			cell := t.Str(c)
			col := pos[c]
			if cell == "" {
				row[col] = parquet.NullValue().Level(0, 0, col)
				continue
			}
			var v parquet.Value
			switch types[i] {
			case proto.TypeInt:
				x, err := strconv.ParseInt(cell, 10, 64)
				if err != nil {
					return n, fmt.Errorf("%s.csv line %d column %s: %q is not an int", table, t.Line(), c, cell)
				}
				v = parquet.Int64Value(x)
			case proto.TypeFloat:
				x, err := strconv.ParseFloat(cell, 64)
				if err != nil {
					return n, fmt.Errorf("%s.csv line %d column %s: %q is not a float", table, t.Line(), c, cell)
				}
				v = parquet.DoubleValue(x)
			case proto.TypeBool:
				x, err := strconv.ParseBool(cell)
				if err != nil {
					return n, fmt.Errorf("%s.csv line %d column %s: %q is not a bool", table, t.Line(), c, cell)
				}
				v = parquet.BooleanValue(x)
			default:
				v = parquet.ByteArrayValue([]byte(cell))
			}
			row[col] = v.Level(0, 1, col)
		}
		batch = append(batch, row)
		n++
		if len(batch) == cap(batch) {
			if err := flush(); err != nil {
				return n, err
			}
		}
	}
	if err := flush(); err != nil {
		return n, err
	}
	if err := w.Close(); err != nil {
		return n, fmt.Errorf("parquet %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return n, fmt.Errorf("parquet %s: %w", path, err)
	}
	return n, nil
}
