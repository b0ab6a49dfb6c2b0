package proto

import (
	"math"
	"math/rand/v2"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/profilemate/profilemate/internal/pyenv"
	"github.com/profilemate/profilemate/proto/pmpb"
)

var floats = append([]float64{0, math.Copysign(0, -1), 0.5, 12, -3, 1e-4 - 1e-20, 9.999999999999999e15, 0.00012, 100, 1230, 1e-4, 0.001, 1e-05, 1.5e-05, 0.0001, 123456789, 1e15, 9999999999999998, 1e16, 1.5e16,
	1e22, 0.1 + 0.2, 1.0 / 3, -2.5e-7, 5e-324, math.MaxFloat64, 7.125, 48.5, math.Inf(1), math.Inf(-1), math.NaN()},
	spreadFloats()...)

// spreadFloats is a fixed pseudo-random spread over every decimal exponent AppendFloat places
// by hand (-4..15) and a few beyond, with 1 to 17 significant digits, both signs.
func spreadFloats() []float64 {
	r := rand.New(rand.NewPCG(24, 4))
	var out []float64
	for exp := -7; exp <= 18; exp++ {
		for digits := 1; digits <= 17; digits++ {
			m := r.Int64N(int64(math.Pow10(digits)))
			f := float64(m) * math.Pow10(exp-digits+1)
			if r.IntN(2) == 0 {
				f = -f
			}
			out = append(out, f, math.Float64frombits(r.Uint64()>>2|0x3800000000000000))
		}
	}
	return out
}

// TestFormatFloatMatchesPython compares FormatFloat with repr() of a real Python, so the hub's
// and the shim's CSV files spell floats the same.
func TestFormatFloatMatchesPython(t *testing.T) {
	found, _ := pyenv.Find()
	if len(found) == 0 {
		t.Skip("no supported python found")
	}
	var lits []string
	for _, f := range floats {
		switch {
		case math.IsNaN(f):
			lits = append(lits, "float('nan')")
		case math.IsInf(f, 1):
			lits = append(lits, "float('inf')")
		case math.IsInf(f, -1):
			lits = append(lits, "float('-inf')")
		default:
			lits = append(lits, "float.fromhex('"+strconv.FormatFloat(f, 'x', -1, 64)+"')")
		}
	}
	out, err := exec.Command(found[0].Path, "-c", "for x in ["+strings.Join(lits, ",")+"]: print(repr(x))").CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	want := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(want) != len(floats) {
		t.Fatalf("python printed %d lines for %d floats", len(want), len(floats))
	}
	for i, f := range floats {
		if got := FormatFloat(f); got != want[i] {
			t.Errorf("FormatFloat(%v) = %q, python repr %q", f, got, want[i])
		}
	}
}

func TestRowShapeAndErrors(t *testing.T) {
	p := &pmpb.Process{Session: "S", Host: "h.a", Pid: 7, Role: RoleWorker, Dp: 0, Pp: 1, Tp: 2, Ep: -1, Rank: 5}
	ev := &pmpb.Event{Kind: KindForwardPass, Table: "forward_pass_timing", Seq: 3, Step: 9, TsNs: 11,
		Cols: map[string]*pmpb.Value{"cpu_ms": {V: &pmpb.Value_D{D: 2}}, "gpu_status": {V: &pmpb.Value_S{S: "pending"}}}}
	row, err := Row(p, ev)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"S", "h.a", "7", "worker", "0", "1", "2", "-1", "3", "9", "11", "2.0", "", "pending", "", ""}
	if strings.Join(row, "|") != strings.Join(want, "|") || len(row) != len(Header("forward_pass_timing")) {
		t.Errorf("row %q, want %q", row, want)
	}
	ev.Cols["tokens"] = &pmpb.Value{V: &pmpb.Value_S{S: "12"}}
	if _, err := Row(p, ev); err == nil || !strings.Contains(err.Error(), "tokens") {
		t.Errorf("wrong type: %v", err)
	}
	delete(ev.Cols, "tokens")
	ev.Cols["bogus"] = &pmpb.Value{V: &pmpb.Value_I{I: 1}}
	if _, err := Row(p, ev); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("unknown column: %v", err)
	}
	ev.Table = "nope"
	if _, err := Row(p, ev); err == nil {
		t.Error("unknown table accepted")
	}
	if _, _, err := ParseRow("forward_pass_timing", Header("kv_cache_usage"), want); err == nil {
		t.Error("ParseRow accepted another table's header")
	}
	bad := append([]string(nil), want...)
	bad[12] = "fast"
	if _, _, err := ParseRow("forward_pass_timing", Header("forward_pass_timing"), bad); err == nil || !strings.Contains(err.Error(), "gpu_ms") {
		t.Errorf("ParseRow bad float: %v", err)
	}
}
