package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/testbed"
)

// demoEra is the vLLM-shaped tree the demo drives: the newest era, V2 model runner by default.
const demoEra = "main_2026_08_20"

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "run the whole pipeline on this machine: embedded hub, two agents, one simulated vLLM instance with 4 workers on each",
		Description: "Needs no GPU and no vLLM: the simulated engine and its vLLM-shaped module tree ship inside the binary.\n" +
			"The two agents (--host hostA, hostB) run one multi-node vLLM instance of the simulator under the shim\n" +
			"(`vllm serve -tp 2N --nnodes 2`: API server, EngineCore and ranks 0..N-1 on hostA, ranks N..2N-1 on hostB\n" +
			"under a headless `vllm serve`); the hub merges both hosts into one session; once it has started the demo hot-adds the four in-tree profiler plugins (straggler, moe_balance,\n" +
			"kv_pressure, cudagraph_coverage), then prints the session's summary with their findings and where its files are.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "dir", EnvVars: []string{"PROFILEMATE_DEMO_DIR"}, Usage: "folder for everything the demo writes: the hub's data folder (hub/), agent logs, the simulated vLLM (default: a new temporary folder, kept after the demo)"},
			&cli.IntFlag{Name: "workers", Value: 4, EnvVars: []string{"PROFILEMATE_DEMO_WORKERS"}, Usage: "simulated tensor-parallel workers per host"},
			&cli.StringFlag{Name: "python", EnvVars: []string{"PROFILEMATE_DEMO_PYTHON"}, Usage: "Python 3.9+ interpreter for the simulated vLLM (default: python3 on PATH)"},
			&cli.StringFlag{Name: "pmagent", EnvVars: []string{"PROFILEMATE_PMAGENT"}, Usage: "pmagent binary (default: beside pmhub, then PATH)"},
			&cli.DurationFlag{Name: "timeout", Value: 3 * time.Minute, EnvVars: []string{"PROFILEMATE_DEMO_TIMEOUT"}, Usage: "give up after this long, stopping every process the demo started (exit code 1)"},
		},
		Action: demo,
	}
}

func demo(c *cli.Context) error {
	if c.NArg() > 0 {
		return cli.Exit(fmt.Sprintf("pmhub demo: takes no arguments, got %q (flags: pmhub demo --help)", c.Args().Slice()), 2)
	}
	if w := c.Int("workers"); w < 1 {
		return cli.Exit(fmt.Sprintf("pmhub demo: --workers %d: must be at least 1", w), 2)
	}
	ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
	defer cancel()
	if err := adoptOrphans(); err != nil {
		fmt.Fprintf(c.App.ErrWriter, "pmhub demo: processes of a stopped agent may outlive it: %v\n", err)
	}
	out := c.App.Writer

	agentBin, err := findPMAgent(c.String("pmagent"))
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	python := c.String("python")
	if python == "" {
		if python, err = exec.LookPath("python3"); err != nil {
			return cli.Exit("pmhub demo: no python3 on PATH (the simulated vLLM needs Python 3.9+); pass --python", 2)
		}
	}
	if out, err := exec.CommandContext(ctx, python, "-c",
		"import sys; print('%d.%d' % sys.version_info[:2]); sys.exit(sys.version_info < (3, 9))").CombinedOutput(); err != nil {
		return cli.Exit(fmt.Sprintf("pmhub demo: %s is not a usable Python 3.9+ (%s: %v); pass --python", python, strings.TrimSpace(string(out)), err), 2)
	}
	data := c.String("dir")
	if data == "" {
		if data, err = os.MkdirTemp("", "profilemate-demo-"); err != nil {
			return err
		}
	}
	tree := filepath.Join(data, "simulated-vllm")
	if err := testbed.Unpack(tree); err != nil {
		return fmt.Errorf("pmhub demo: unpack the simulated vLLM: %w", err)
	}

	// A short session end so the demo finishes as soon as both hosts are done.
	h, err := hub.New(hub.Config{DataDir: filepath.Join(data, "hub"), Listen: "127.0.0.1:-1", SessionIdle: 30 * time.Second})
	if err != nil {
		return err
	}
	if err := h.Start(ctx); err != nil {
		return fmt.Errorf("pmhub demo: start hub: %w", err)
	}
	defer h.Close()
	runDone := make(chan error, 1)
	go func() { runDone <- h.Run(ctx) }()
	fmt.Fprintf(out, "hub: embedded NATS at %s, data in %s\n", h.ClientURL(), filepath.Join(data, "hub"))
	plugins, err := startDemoPlugins(ctx, h, filepath.Join(data, "hub"))
	if err != nil {
		return fmt.Errorf("pmhub demo: plugins: %w", err)
	}
	defer plugins.stop()

	session := time.Now().UTC().Format("20060102_150405") + "_demo00"
	hosts := []string{"hostA", "hostB"}
	var wg sync.WaitGroup
	errs := make([]error, len(hosts))
	port, err := demoPort()
	if err != nil {
		return fmt.Errorf("pmhub demo: %w", err)
	}
	for i, host := range hosts {
		wg.Add(1)
		go func(i int, host string) {
			defer wg.Done()
			errs[i] = runDemoAgent(ctx, agentBin, python, tree, h.ClientURL(), host, session, c.Int("workers"), i, port, filepath.Join(data, host+".log"))
		}(i, host)
	}
	fmt.Fprintf(out, "agents: %s running one `vllm serve demo-model -tp %d --nnodes 2` (simulated, %d workers on each), session %s\n",
		strings.Join(hosts, ", "), 2*c.Int("workers"), c.Int("workers"), session)
	added := make(chan []string, 1)
	go func() {
		names, err := plugins.hotAdd(ctx, h, session, out)
		if err != nil {
			fmt.Fprintf(out, "plugins: %v\n", err)
		}
		added <- names
	}()
	wg.Wait()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return cli.Exit(fmt.Sprintf("pmhub demo: gave up after --timeout %s; its processes were stopped (agent logs in %s)", c.Duration("timeout"), data), 1)
	}
	if ctx.Err() != nil {
		return cli.Exit(fmt.Sprintf("pmhub demo: interrupted; its processes were stopped (agent logs in %s)", data), 1)
	}
	if err := errors.Join(errs...); err != nil {
		return cli.Exit(fmt.Sprintf("pmhub demo: %v (agent logs in %s)", err, data), 1)
	}

	info, err := waitSessionEnded(ctx, h, session, runDone)
	if err != nil {
		return cli.Exit(fmt.Sprintf("pmhub demo: %v", err), 1)
	}
	if err := waitFindings(ctx, info.Dir, <-added); err != nil {
		return cli.Exit(fmt.Sprintf("pmhub demo: plugins: %v", err), 1)
	}
	fmt.Fprintln(out)
	if err := printSessionSummary(out, info.Dir); err != nil {
		return err
	}
	fmt.Fprintf(out, "\nsession files: %s\n", info.Dir)
	fmt.Fprintf(out, "look again with: pmhub show --data %s %s\n", filepath.Join(data, "hub"), session)
	return nil
}

// findPMAgent looks for pmagent next to this executable (make build puts both in bin/), then on PATH.
func findPMAgent(flag string) (string, error) {
	if flag != "" {
		if _, err := exec.LookPath(flag); err != nil {
			return "", fmt.Errorf("pmhub demo: --pmagent %s: %w", flag, err)
		}
		return flag, nil
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "pmagent")
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	if p, err := exec.LookPath("pmagent"); err == nil {
		return p, nil
	}
	return "", errors.New("pmhub demo: pmagent not found beside pmhub or on PATH; run `make build` and use bin/pmhub")
}

// demoPort is a free loopback port for the instance's rendezvous (--master-port).
func demoPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// runDemoAgent runs node nodeRank of the demo's two-node instance (workers ranks per node) under a
// `pmagent run` with --host host, in a process group of its own: when ctx ends the group gets
// SIGTERM, then SIGKILL demoStopGrace later. It returns once every process of the group (the
// agent, the simulated vLLM and its workers) has exited and been reaped.
func runDemoAgent(ctx context.Context, agentBin, python, tree, natsURL, host, session string, workers, nodeRank, port int, logPath string) error {
	log, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.CommandContext(ctx, agentBin, "run", "--nats", natsURL, "--host", host, "--session", session,
		"--spool-dir", filepath.Join(filepath.Dir(logPath), host+"-spool"),
		"--", python, filepath.Join(tree, "bin", "vllm"), "serve", "demo-model", "-tp", fmt.Sprint(2*workers),
		"--nnodes", "2", "--node-rank", fmt.Sprint(nodeRank), "--master-addr", "127.0.0.1", "--master-port", fmt.Sprint(port))
	if nodeRank > 0 {
		cmd.Args = append(cmd.Args, "--headless")
	}
	cmd.Env = append(os.Environ(),
		"PYTHONPATH="+filepath.Join(tree, "eras", demoEra)+string(os.PathListSeparator)+tree,
		"PMSIM_STEP_WORK_MS=2",
		"PMSIM_GROUND_TRUTH="+filepath.Join(filepath.Dir(logPath), host+"-ground-truth.json"),
	)
	cmd.Stdout, cmd.Stderr = log, log
	ownGroup(cmd)
	err = cmd.Run()
	// Whatever ended the agent, nothing it started outlives it.
	if rerr := reapGroup(cmd); rerr != nil && err == nil {
		err = fmt.Errorf("stop its processes: %w", rerr)
	}
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: stopped: %w", host, ctx.Err())
		}
		return fmt.Errorf("%s: %w", host, err)
	}
	return nil
}

// waitSessionEnded polls the hub until the session's processes all ended (every agent closed it).
func waitSessionEnded(ctx context.Context, h *hub.Server, session string, runDone <-chan error) (hub.SessionInfo, error) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, s := range h.Sessions() {
			if s.Session == session && s.Status != hub.StatusActive {
				return s, nil
			}
		}
		select {
		case <-ctx.Done():
			return hub.SessionInfo{}, fmt.Errorf("session %s did not end in time", session)
		case err := <-runDone:
			return hub.SessionInfo{}, fmt.Errorf("hub stopped: %v", err)
		case <-tick.C:
		}
	}
}

// printSessionSummary prints what `pmhub show` prints for the session.
func printSessionSummary(w io.Writer, dir string) error {
	sum, err := summarize(dir)
	if err != nil {
		return fmt.Errorf("summarise session: %w", err)
	}
	sum.print(w)
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
