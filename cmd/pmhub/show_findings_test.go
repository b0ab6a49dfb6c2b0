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
