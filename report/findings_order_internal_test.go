package report

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// TestFindingsOrderStable: the report lists one session's findings the same way whatever order
// the plugins appended them to findings.csv in: most severe first, then by plugin and title.
func TestFindingsOrderStable(t *testing.T) {
	const header = "session,host,pid,role,dp,pp,tp,ep,seq,step,ts_ns,plugin,plugin_version,input_seq,row,severity,title,numbers,ranks,first_step,last_step,detail\n"
	rows := []string{
		`s1,hub,9,plugin,-1,-1,-1,-1,1,1,5,straggler,1.0.0,0,0,warning,"rank 0 is slow","{}",0,1,3,""`,
		`s1,hub,9,plugin,-1,-1,-1,-1,2,2,6,moe_balance,1.0.0,0,0,critical,"dp 0 busiest expert","{}",,1,3,""`,
		`s1,hub,9,plugin,-1,-1,-1,-1,3,3,7,cudagraph_coverage,1.0.0,0,0,warning,"dp 0 eager steps","{}",,1,3,""`,
	}
	titles := func(order []int) []string {
		dir := t.TempDir()
		body := header
		for _, i := range order {
			body += rows[i] + "\n"
		}
		if err := os.WriteFile(filepath.Join(dir, FindingsTable+".csv"), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := readFindings(&Session{Dir: dir}, nil, false)
		if err != nil {
			t.Fatal(err)
		}
		col := -1
		for i, c := range f.Columns {
			if c == "finding" {
				col = i
			}
		}
		var out []string
		for _, r := range f.Rows {
			out = append(out, r[col])
		}
		return out
	}
	want := []string{"dp 0 busiest expert", "dp 0 eager steps", "rank 0 is slow"}
	for _, order := range [][]int{{0, 1, 2}, {2, 1, 0}, {1, 0, 2}} {
		if got := titles(order); !reflect.DeepEqual(got, want) {
			t.Errorf("file order %v: findings %q, want %q", order, got, want)
		}
	}
}

// TestFindingsShownAsShowDoes: the findings section lists what `pmhub show` lists (plugin,
// severity, the finding, ranks, steps, readable numbers), not the table's raw columns (host "hub",
// role "plugin", dp -1, seq, ...).
func TestFindingsShownAsShowDoes(t *testing.T) {
	dir := t.TempDir()
	body := "session,host,pid,role,dp,pp,tp,ep,seq,step,ts_ns,plugin,plugin_version,input_seq,row,severity,title,numbers,ranks,first_step,last_step,detail\n" +
		`s1,hub,9,plugin,-1,-1,-1,-1,1,1,5,straggler,1.0.0,0,0,warning,"rank 3 is slow","{""skew"":1.5}",3|5,10,90,""` + "\n" +
		`s1,hub,9,plugin,-1,-1,-1,-1,2,2,6,kv_pressure,1.0.0,0,0,info,"KV cache fine","{}",,-1,-1,""` + "\n"
	if err := os.WriteFile(filepath.Join(dir, FindingsTable+".csv"), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := readFindings(&Session{Dir: dir}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"plugin", "severity", "finding", "ranks", "steps", "numbers"}; !reflect.DeepEqual(f.Columns, want) {
		t.Errorf("columns %q, want %q", f.Columns, want)
	}
	want := [][]string{{"straggler", "warning", "rank 3 is slow", "3 5", "10-90", "skew 1.5"}, {"kv_pressure", "info", "KV cache fine", "", "", ""}}
	if !reflect.DeepEqual(f.Rows, want) {
		t.Errorf("rows %q, want %q", f.Rows, want)
	}
}
