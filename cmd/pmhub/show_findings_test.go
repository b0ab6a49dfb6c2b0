package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/profilemate/profilemate/hub"
)

// showOut runs `pmhub show --data data SESSION [--json]` and returns its output.
func showOut(t *testing.T, data, session string, jsonOut bool) string {
	t.Helper()
	app := &cli.App{Name: "pmhub", Commands: []*cli.Command{showCommand()}}
	var out bytes.Buffer
	app.Writer, app.ErrWriter = &out, &out
	args := []string{"pmhub", "show", "--data", data}
	if jsonOut {
		args = append(args, "--json")
	}
	args = append(args, session)
	if err := app.Run(args); err != nil {
		t.Fatalf("pmhub show: %v\n%s", err, out.String())
	}
	return out.String()
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// A session without plugins gets the analyses' findings computed from its tables, said so; a
// session whose plugins wrote findings.csv gets those rows and no computed ones.
func TestShowFindings(t *testing.T) {
	data := t.TempDir()
	dir := hub.SessionDir(data, "s1")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, hub.MetadataFile), `{"session":"s1","status":"ended","processes":[
		{"host":"a","pid":1,"proc":"w0","role":"worker","dp":0,"pp":0,"tp":0,"ep":-1,"rank":0},
		{"host":"a","pid":2,"proc":"w1","role":"worker","dp":0,"pp":0,"tp":1,"ep":-1,"rank":1}]}`)
	var b strings.Builder
	b.WriteString("session,host,pid,role,dp,pp,tp,ep,seq,step,ts_ns,ts_aligned_ns,cpu_ms,gpu_ms,gpu_status,tokens,runtime_mode\n")
	for step := 1; step <= 10; step++ {
		b.WriteString("s1,a,1,worker,0,0,0,-1," + strconv.Itoa(step) + "," + strconv.Itoa(step) + ",1,1,10,,unavailable,8,NONE\n")
		b.WriteString("s1,a,2,worker,0,0,1,-1," + strconv.Itoa(step) + "," + strconv.Itoa(step) + ",1,1,20,,unavailable,8,NONE\n")
	}
	writeFile(t, filepath.Join(dir, "forward_pass_timing.csv"), b.String())

	out := showOut(t, data, "s1", false)
	if !strings.Contains(out, "[critical] rank 1 on host a is 2.00x the median rank") ||
		!strings.Contains(out, "(computed now from the session's tables by package analysis: no plugin wrote findings.csv)") {
		t.Errorf("computed findings missing:\n%s", out)
	}
	var sum Summary
	if err := json.Unmarshal([]byte(showOut(t, data, "s1", true)), &sum); err != nil {
		t.Fatal(err)
	}
	if len(sum.Findings) != 1 || sum.Findings[0].Version != computedVersion || sum.Findings[0].Plugin != "straggler" ||
		!strings.Contains(sum.Findings[0].Numbers, `"ratio_to_median":2`) || sum.Findings[0].Ranks != "1" {
		t.Errorf("json findings %+v", sum.Findings)
	}

	// The hub's findings.csv: common and key columns in front of the SDK's findings columns.
	writeFile(t, filepath.Join(dir, "findings.csv"),
		"session,host,pid,role,dp,pp,tp,ep,seq,step,ts_ns,plugin,plugin_version,input_seq,row,severity,title,numbers,ranks,first_step,last_step,detail\n"+
			`s1,hubhost,9,plugin,-1,-1,-1,-1,1,3,5,kv_pressure,1.0.0,0,0,warning,"dp 0: 4 preemptions","{""preemptions"":4}",,1,3,"units: preemptions count"`+"\n")
	out = showOut(t, data, "s1", false)
	if !strings.Contains(out, "[warning] dp 0: 4 preemptions (kv_pressure)") || strings.Contains(out, "straggler") ||
		strings.Contains(out, "computed now") {
		t.Errorf("plugin findings not shown as written:\n%s", out)
	}
}

// TestShowFindingsOrderStable: plugins append to findings.csv as they finish, in no fixed order;
// show lists one session's findings the same way whatever the file's order: most severe first,
// then by plugin and title.
func TestShowFindingsOrderStable(t *testing.T) {
	const header = "session,host,pid,role,dp,pp,tp,ep,seq,step,ts_ns,plugin,plugin_version,input_seq,row,severity,title,numbers,ranks,first_step,last_step,detail\n"
	rows := []string{
		`s1,hub,9,plugin,-1,-1,-1,-1,1,1,5,moe_balance,1.0.0,0,0,critical,"hostA+hostB dp 0 layer 2: busiest expert","{}",,1,3,""`,
		`s1,hub,9,plugin,-1,-1,-1,-1,2,2,6,cudagraph_coverage,1.0.0,0,0,warning,"hostA+hostB dp 0: eager steps","{}",,1,3,""`,
		`s1,hub,9,plugin,-1,-1,-1,-1,3,3,7,kv_pressure,1.0.0,0,0,critical,"hostA dp 0: 5 preemptions","{}",,1,3,""`,
		`s1,hub,9,plugin,-1,-1,-1,-1,4,4,8,straggler,1.0.0,0,0,warning,"rank 0 on host hostA is 1.24x","{}",0,1,3,""`,
	}
	var outs []string
	for _, order := range [][]int{{0, 1, 2, 3}, {3, 2, 1, 0}, {1, 3, 0, 2}} {
		data := t.TempDir()
		dir := hub.SessionDir(data, "s1")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, hub.MetadataFile), `{"session":"s1","status":"ended","processes":[]}`)
		body := header
		for _, i := range order {
			body += rows[i] + "\n"
		}
		writeFile(t, filepath.Join(dir, "findings.csv"), body)
		outs = append(outs, showOut(t, data, "s1", false))
	}
	if outs[0] != outs[1] || outs[0] != outs[2] {
		t.Fatalf("findings order depends on the file's order:\n%s\n---\n%s\n---\n%s", outs[0], outs[1], outs[2])
	}
	want := []string{"(kv_pressure)", "(moe_balance)", "(cudagraph_coverage)", "(straggler)"}
	last := -1
	for _, w := range want {
		i := strings.Index(outs[0], w)
		if i < last {
			t.Fatalf("findings not most severe first, then by plugin:\n%s", outs[0])
		}
		last = i
	}
}
