package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStatusNoAgent(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	_, err := askAgentStatus(sock, time.Second)
	if err == nil || !strings.Contains(err.Error(), "no agent running on "+sock) {
		t.Fatalf("got %v, want a clear no-agent error", err)
	}
	// A socket file left behind by a dead agent reads the same.
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if _, err := askAgentStatus(sock, time.Second); err == nil || !strings.Contains(err.Error(), "no agent running") {
		t.Fatalf("stale socket: got %v", err)
	}
}

// serveOneStatus serves one admin request on a Unix socket with reply, checking the request's shape.
func serveOneStatus(t *testing.T, reply string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "a.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		line, _ := bufio.NewReader(c).ReadBytes('\n')
		var req map[string]any
		if json.Unmarshal(line, &req) != nil || req["t"] != "admin" || req["op"] != "status" || req["v"] != float64(1) {
			c.Write([]byte(`{"t":"error","error":"bad request"}` + "\n"))
			return
		}
		c.Write([]byte(reply + "\n"))
	}()
	return sock
}

const sampleHostStatus = `{"t":"status","v":1,"host":"gpu-node-7","version":"0.1.0","uptime_s":3725,
"processes":[{"pid":4242,"role":"worker","session":"20260101_000000_abcdef","dp":0,"pp":0,"tp":1,"ep":-1,"rank":1,"events":1200,"dropped":3,"vllm":"0.16.0",
  "profilers":[{"kind":"kv_cache","enabled":false,"by":"PROFILEMATE_PROFILERS"},{"kind":"moe_expert","enabled":true,"by":"pmhub","at_ns":1}]},
 {"pid":4200,"role":"api_server","session":"20260101_000000_abcdef","rank":-1,"events":10,"dropped":0,"vllm":"0.16.0"}],
"gpu_sampling":"on",
"gpus":[{"index":1,"uuid":"GPU-1","name":"NVIDIA H100 80GB HBM3","util_gpu_pct":87,"mem_used_bytes":10737418240,"mem_total_bytes":85899345920,"power_w":412.4,"temperature_c":61,"processes":[{"pid":4242,"used_bytes":1,"role":"worker","rank":1}],"sampled_at_ns":1}],
"nats":{"url":"nats://hub:4222","connected":true,"stream":"PROFILEMATE","stream_ok":true},
"spool":{"bytes":2048,"limit_bytes":1073741824,"batches":2},"dropped":3,"clock":{"offset_ns":-1500000,"uncertainty_ns":200000}}`

func TestStatusTable(t *testing.T) {
	raw, err := askAgentStatus(serveOneStatus(t, strings.ReplaceAll(sampleHostStatus, "\n", "")), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var st hostStatus
	if err := json.Unmarshal(raw, &st); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	renderHostStatus(&out, st)
	got := out.String()
	for _, want := range []string{
		"host gpu-node-7", "up 1h2m5s", "nats nats://hub:4222 (connected)  stream PROFILEMATE ok",
		"spool 2.0 KiB of 1.0 GiB (2 batches)  dropped 3", "clock offset -1.5ms ± 200µs",
		"processes (2)", "4242  worker      1     0   0   1   -",
		"kv_cache off (PROFILEMATE_PROFILERS), moe_expert on (pmhub)",
		"gpus (1)", "87%", "10.0 GiB/80.0 GiB", "412 W", "61 C", "4242 worker rank 1",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("table lacks %q:\n%s", want, got)
		}
	}
}

func TestStatusAgentError(t *testing.T) {
	_, err := askAgentStatus(serveOneStatus(t, `{"t":"error","v":1,"error":"unknown op"}`), 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "unknown op") {
		t.Fatalf("got %v, want the agent's error", err)
	}
	_, err = askAgentStatus(serveOneStatus(t, `not json`), 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "not JSON") {
		t.Fatalf("got %v, want a not-JSON error", err)
	}
}
