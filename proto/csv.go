package proto

import (
	"bytes"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/profilemate/profilemate/proto/pmpb"
)

// CSV cells, the same in the hub's Go writer and the shim's standalone Python writer:
//   int    decimal ("-1")
//   float  Python's repr ("0.5", "12.0", "1e-05", "1.5e+16", "nan", "inf", "-inf")
//   string as is (the csv writer quotes)
//   bool   "true" / "false"
//   absent ""

// FormatValue spells one cell.
func FormatValue(v *pmpb.Value) string {
	switch x := v.GetV().(type) {
	case *pmpb.Value_I:
		return strconv.FormatInt(x.I, 10)
	case *pmpb.Value_D:
		return FormatFloat(x.D)
	case *pmpb.Value_S:
		return x.S
	case *pmpb.Value_B:
		if x.B {
			return "true"
		}
		return "false"
	}
	return ""
}

// FormatFloat spells f as Python's repr(f) does, so both writers produce the same bytes.
func FormatFloat(f float64) string { return string(AppendFloat(nil, f)) }

// AppendFloat appends FormatFloat's spelling of f to dst, without allocating when dst has room.
func AppendFloat(dst []byte, f float64) []byte {
	switch {
	case math.IsNaN(f):
		return append(dst, "nan"...)
	case math.IsInf(f, 1):
		return append(dst, "inf"...)
	case math.IsInf(f, -1):
		return append(dst, "-inf"...)
	}
	// Shortest round-trip digits, computed once; Python switches to exponent form below 1e-4 and
	// from 1e16. strconv's exponent has at least two digits and a sign, as Python's ("1e-05",
	// "1.5e+16"). Between those, the same digits are placed around the point by hand.
	var tmp [32]byte
	e := strconv.AppendFloat(tmp[:0], f, 'e', -1, 64)
	k := bytes.IndexByte(e, 'e')
	exp := 0
	for _, c := range e[k+2:] {
		exp = exp*10 + int(c-'0')
	}
	if e[k+1] == '-' {
		exp = -exp
	}
	if exp < -4 || exp >= 16 {
		return append(dst, e...)
	}
	m := e[:k] // [-]d[.ddd]
	if m[0] == '-' {
		dst = append(dst, '-')
		m = m[1:]
	}
	// The significant digits without the point: m[0], then m[2:] when there is a fraction.
	var digits [24]byte
	d := append(digits[:0], m[0])
	if len(m) > 2 {
		d = append(d, m[2:]...)
	}
	if exp < 0 {
		dst = append(dst, '0', '.')
		for i := -1; i > exp; i-- {
			dst = append(dst, '0')
		}
		return append(dst, d...)
	}
	if len(d) <= exp+1 {
		dst = append(dst, d...)
		for i := len(d); i <= exp; i++ {
			dst = append(dst, '0')
		}
		return append(dst, '.', '0')
	}
	dst = append(dst, d[:exp+1]...)
	dst = append(dst, '.')
	return append(dst, d[exp+1:]...)
}

// ParseValue reads one cell of the given column type; "" gives nil (absent) except for a string
// column, where it gives "".
func ParseValue(typ, cell string) (*pmpb.Value, error) {
	if cell == "" && typ != TypeString {
		return nil, nil
	}
	switch typ {
	case TypeInt:
		n, err := strconv.ParseInt(cell, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("proto: int cell %q: %w", cell, err)
		}
		return &pmpb.Value{V: &pmpb.Value_I{I: n}}, nil
	case TypeFloat:
		f, err := strconv.ParseFloat(cell, 64)
		if err != nil {
			return nil, fmt.Errorf("proto: float cell %q: %w", cell, err)
		}
		return &pmpb.Value{V: &pmpb.Value_D{D: f}}, nil
	case TypeString:
		// CSV cannot tell an empty string from an absent one; it reads back as "".
		return &pmpb.Value{V: &pmpb.Value_S{S: cell}}, nil
	case TypeBool:
		switch cell {
		case "true", "True":
			return &pmpb.Value{V: &pmpb.Value_B{B: true}}, nil
		case "false", "False":
			return &pmpb.Value{V: &pmpb.Value_B{B: false}}, nil
		}
		return nil, fmt.Errorf("proto: bool cell %q", cell)
	}
	return nil, fmt.Errorf("proto: unknown column type %q", typ)
}

// Row builds a CSV row of ev's table: the common columns from p and ev, then the table's columns
// in schema order (absent ones empty).
func Row(p *pmpb.Process, ev *pmpb.Event) ([]string, error) { return Default().Row(p, ev) }

// Row builds a CSV row; see the package function.
func (r *Registry) Row(p *pmpb.Process, ev *pmpb.Event) ([]string, error) {
	s, ok := r.table(ev.GetTable())
	if !ok {
		return nil, fmt.Errorf("proto: unknown table %q", ev.GetTable())
	}
	row := make([]string, 0, len(commonNames)+len(s.Columns))
	row = append(row, p.GetSession(), p.GetHost(), strconv.FormatInt(p.GetPid(), 10), p.GetRole(),
		strconv.Itoa(int(p.GetDp())), strconv.Itoa(int(p.GetPp())), strconv.Itoa(int(p.GetTp())), strconv.Itoa(int(p.GetEp())),
		strconv.FormatUint(ev.GetSeq(), 10), strconv.FormatInt(ev.GetStep(), 10), strconv.FormatInt(ev.GetTsNs(), 10))
	for _, c := range s.Columns {
		v := ev.GetCols()[c.Name]
		if v != nil && !typeMatches(c.Type, v) {
			return nil, fmt.Errorf("proto: table %s column %s: value %v is not %s", s.Table, c.Name, v.GetV(), c.Type)
		}
		row = append(row, FormatValue(v))
	}
	for name := range ev.GetCols() {
		if _, ok := s.index[name]; !ok {
			return nil, fmt.Errorf("proto: table %s has no column %q", s.Table, name)
		}
	}
	return row, nil
}

func typeMatches(typ string, v *pmpb.Value) bool {
	switch v.GetV().(type) {
	case *pmpb.Value_I:
		return typ == TypeInt
	case *pmpb.Value_D:
		return typ == TypeFloat
	case *pmpb.Value_S:
		return typ == TypeString
	case *pmpb.Value_B:
		return typ == TypeBool
	}
	return false
}

// ParseRow reads a CSV row of table back into a Process (identity columns only) and an Event;
// header must be the table's header (the hub checks an existing file's header before appending).
func ParseRow(table string, header, rec []string) (*pmpb.Process, *pmpb.Event, error) {
	return Default().ParseRow(table, header, rec)
}

// ParseRow reads a CSV row back; see the package function.
func (r *Registry) ParseRow(table string, header, rec []string) (*pmpb.Process, *pmpb.Event, error) {
	s, ok := r.table(table)
	if !ok {
		return nil, nil, fmt.Errorf("proto: unknown table %q", table)
	}
	want := s.Header()
	if strings.Join(header, ",") != strings.Join(want, ",") {
		return nil, nil, fmt.Errorf("proto: %s header %v, want %v", table, header, want)
	}
	if len(rec) != len(want) {
		return nil, nil, fmt.Errorf("proto: %s row has %d cells, want %d", table, len(rec), len(want))
	}
	var nums [8]int64
	for i, idx := range []int{2, 4, 5, 6, 7, 8, 9, 10} { // pid dp pp tp ep seq step ts_ns
		n, err := strconv.ParseInt(rec[idx], 10, 64)
		if err != nil {
			return nil, nil, fmt.Errorf("proto: %s column %s: %q: %w", table, want[idx], rec[idx], err)
		}
		nums[i] = n
	}
	p := &pmpb.Process{Session: rec[0], Host: rec[1], Pid: nums[0], Role: rec[3],
		Dp: int32(nums[1]), Pp: int32(nums[2]), Tp: int32(nums[3]), Ep: int32(nums[4]), Rank: -1}
	ev := &pmpb.Event{Kind: s.Kind, Table: table, Seq: uint64(nums[5]), Step: nums[6], TsNs: nums[7],
		Cols: map[string]*pmpb.Value{}}
	for i, c := range s.Columns {
		v, err := ParseValue(c.Type, rec[len(commonNames)+i])
		if err != nil {
			return nil, nil, fmt.Errorf("proto: %s column %s: %w", table, c.Name, err)
		}
		if v != nil {
			ev.Cols[c.Name] = v
		}
	}
	return p, ev, nil
}
