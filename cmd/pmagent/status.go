package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/profilemate/profilemate/agent"
	"github.com/profilemate/profilemate/agent/gpu"
)

// hostSocketFlag is --socket for the host commands (env, status); PROFILEMATE_SOCKET also sets it.
func hostSocketFlag() cli.Flag {
	return &cli.StringFlag{Name: "socket", Value: agent.DefaultSocket(), Usage: "the agent's Unix socket", EnvVars: []string{"PROFILEMATE_SOCKET"}}
}

var statusCommand = &cli.Command{
	Name:  "status",
	Usage: "show what the running agent sees: processes with roles and ranks, GPUs, NATS, spool, drops",
	Flags: []cli.Flag{
		hostSocketFlag(),
		&cli.BoolFlag{Name: "json", Usage: "print the agent's status as JSON", EnvVars: []string{"PROFILEMATE_JSON"}},
		&cli.DurationFlag{Name: "timeout", Value: 5 * time.Second, Usage: "how long to wait for the agent", EnvVars: []string{"PROFILEMATE_STATUS_TIMEOUT"}},
	},
	Action: func(c *cli.Context) error {
		socket := c.String("socket")
		if !c.IsSet("socket") {
			// Where the shims look: the first agent found among the default places.
			found, tried := agent.FindSocket()
			if found == "" {
				return cli.Exit("pmagent: no agent running on any of "+strings.Join(tried, ", ")+
					" (start one with `pmagent serve`, or pass --socket)", 3)
			}
			socket = found
		}
		raw, err := askAgentStatus(socket, c.Duration("timeout"))
		if err != nil {
			return cli.Exit("pmagent: "+err.Error(), 3)
		}
		if c.Bool("json") {
			var buf bytes.Buffer
			if err := json.Indent(&buf, raw, "", "  "); err != nil {
				return cli.Exit(fmt.Sprintf("pmagent: agent answered invalid JSON: %v", err), 1)
			}
			buf.WriteByte('\n')
			_, err := os.Stdout.Write(buf.Bytes())
			return err
		}
		var st hostStatus
		if err := json.Unmarshal(raw, &st); err != nil {
			return cli.Exit(fmt.Sprintf("pmagent: agent answered %q: %v", hostTruncate(raw, 200), err), 1)
		}
		renderHostStatus(os.Stdout, st)
		return nil
	},
}

// askAgentStatus sends the admin status request over the agent's socket and returns its one-line reply.
func askAgentStatus(socket string, timeout time.Duration) (json.RawMessage, error) {
	conn, err := net.DialTimeout("unix", socket, timeout)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
			return nil, fmt.Errorf("no agent running on %s (start one with `pmagent serve`, or pass --socket)", socket)
		}
		return nil, fmt.Errorf("connect to agent at %s: %w", socket, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(conn, `{"t":"admin","v":1,"op":"status"}`+"\n"); err != nil {
		return nil, fmt.Errorf("send status request to %s: %w", socket, err)
	}
	r := bufio.NewReaderSize(conn, 64<<10)
	line, err := r.ReadBytes('\n')
	if err != nil && !(errors.Is(err, io.EOF) && len(bytes.TrimSpace(line)) > 0) {
		return nil, fmt.Errorf("read status from %s: %w", socket, err)
	}
	line = bytes.TrimSpace(line)
	if !json.Valid(line) {
		return nil, fmt.Errorf("agent at %s answered %q, not JSON", socket, hostTruncate(line, 200))
	}
	var head struct {
		T     string `json:"t"`
		Error string `json:"error"`
	}
	_ = json.Unmarshal(line, &head)
	if head.T == "error" || head.Error != "" {
		return nil, fmt.Errorf("agent at %s: %s", socket, head.Error)
	}
	return line, nil
}

func hostTruncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

// hostStatus is the part of the agent's status reply the table shows; --json prints all of it.
type hostStatus struct {
	Host        string           `json:"host"`
	Version     string           `json:"version"`
	UptimeS     float64          `json:"uptime_s"`
	Processes   []hostProcStatus `json:"processes"`
	GPUSampling string           `json:"gpu_sampling"` // "on", or why it is off
	GPUs        []gpu.Info       `json:"gpus"`
	NATS        struct {
		URL       string `json:"url"`
		Connected bool   `json:"connected"`
		Stream    string `json:"stream"`
		StreamOK  bool   `json:"stream_ok"`
		Error     string `json:"error"`
	} `json:"nats"`
	Spool struct {
		Bytes      int64 `json:"bytes"`
		LimitBytes int64 `json:"limit_bytes"`
		Batches    int64 `json:"batches"`
	} `json:"spool"`
	Dropped int64 `json:"dropped"`
	Clock   *struct {
		OffsetNS      int64 `json:"offset_ns"`
		UncertaintyNS int64 `json:"uncertainty_ns"`
	} `json:"clock"`
}

type hostProcStatus struct {
	Pid     int    `json:"pid"`
	Role    string `json:"role"`
	Session string `json:"session"`
	DP      *int   `json:"dp"`
	PP      *int   `json:"pp"`
	TP      *int   `json:"tp"`
	EP      *int   `json:"ep"`
	Rank    *int   `json:"rank"`
	Events  int64  `json:"events"`
	Dropped int64  `json:"dropped"`
	VLLM    string `json:"vllm"`
	GPUUUID string `json:"gpu_uuid"`
	// Profilers: kinds switched at run time or off since start (agent.ProfilerState).
	Profilers []struct {
		Kind    string `json:"kind"`
		Enabled bool   `json:"enabled"`
		By      string `json:"by"`
	} `json:"profilers"`
}

// hostProfilers is the PROFILERS cell: "moe_expert off (pmhub), kv_cache off (PROFILEMATE_PROFILERS)",
// "-" when every kind is on since start.
func hostProfilers(p hostProcStatus) string {
	var parts []string
	for _, k := range p.Profilers {
		state := "off"
		if k.Enabled {
			state = "on"
		}
		parts = append(parts, fmt.Sprintf("%s %s (%s)", k.Kind, state, hostOrDash(k.By)))
	}
	return hostOrDash(strings.Join(parts, ", "))
}

func hostRank(p *int) string {
	if p == nil || *p < 0 {
		return "-"
	}
	return fmt.Sprint(*p)
}

func renderHostStatus(w io.Writer, st hostStatus) {
	fmt.Fprintf(w, "host %s  pmagent %s  up %s\n", hostOrDash(st.Host), hostOrDash(st.Version), time.Duration(st.UptimeS*float64(time.Second)).Round(time.Second))
	nats := "disconnected"
	if st.NATS.Connected {
		nats = "connected"
	}
	stream := "unavailable"
	if st.NATS.StreamOK {
		stream = "ok"
	}
	fmt.Fprintf(w, "nats %s (%s)  stream %s %s", hostOrDash(st.NATS.URL), nats, hostOrDash(st.NATS.Stream), stream)
	if st.NATS.Error != "" {
		fmt.Fprintf(w, "  error: %s", st.NATS.Error)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "spool %s", hostBytes(st.Spool.Bytes))
	if st.Spool.LimitBytes > 0 {
		fmt.Fprintf(w, " of %s", hostBytes(st.Spool.LimitBytes))
	}
	fmt.Fprintf(w, " (%d batches)  dropped %d", st.Spool.Batches, st.Dropped)
	if st.Clock != nil {
		fmt.Fprintf(w, "  clock offset %v ± %v", time.Duration(st.Clock.OffsetNS), time.Duration(st.Clock.UncertaintyNS))
	}
	fmt.Fprintln(w)

	fmt.Fprintf(w, "\nprocesses (%d)\n", len(st.Processes))
	if len(st.Processes) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "PID\tROLE\tRANK\tDP\tPP\tTP\tEP\tSESSION\tEVENTS\tDROPPED\tVLLM\tPROFILERS")
		for _, p := range st.Processes {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", p.Pid, hostOrDash(p.Role), hostRank(p.Rank), hostRank(p.DP),
				hostRank(p.PP), hostRank(p.TP), hostRank(p.EP), hostOrDash(p.Session), p.Events, p.Dropped, hostOrDash(p.VLLM), hostProfilers(p))
		}
		tw.Flush()
	}

	fmt.Fprintf(w, "\ngpus (%d)", len(st.GPUs))
	if st.GPUSampling != "" && st.GPUSampling != "on" {
		fmt.Fprintf(w, "  sampling off: %s", st.GPUSampling)
	}
	fmt.Fprintln(w)
	if len(st.GPUs) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "GPU\tNAME\tUTIL\tMEMORY\tPOWER\tTEMP\tPROCESSES\tUUID")
		for _, g := range st.GPUs {
			util, mem, pw, temp := "-", "-", "-", "-"
			if g.UtilGPU != nil {
				util = fmt.Sprintf("%d%%", *g.UtilGPU)
			}
			if g.MemUsedBytes != nil && g.MemTotalBytes != nil {
				mem = hostBytes(int64(*g.MemUsedBytes)) + "/" + hostBytes(int64(*g.MemTotalBytes))
			}
			if g.PowerW != nil {
				pw = fmt.Sprintf("%.0f W", *g.PowerW)
			}
			if g.TemperatureC != nil {
				temp = fmt.Sprintf("%d C", *g.TemperatureC)
			}
			var procs []string
			for _, p := range g.Processes {
				s := fmt.Sprint(p.Pid)
				if p.Role != "" {
					s += " " + p.Role
					if p.Rank >= 0 {
						s += fmt.Sprintf(" rank %d", p.Rank)
					}
				}
				procs = append(procs, s)
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", g.Index, hostOrDash(g.Name), util, mem, pw, temp, hostOrDash(strings.Join(procs, ", ")), hostOrDash(g.UUID))
		}
		tw.Flush()
	}
}

func hostOrDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func hostBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
