package main

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/urfave/cli/v2"

	"github.com/profilemate/profilemate/agent"
	"github.com/profilemate/profilemate/agent/install"
	"github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/shim"
)

var runCommand = &cli.Command{
	Name:      "run",
	Usage:     "run a vLLM command with the shim in every process and ship its events",
	ArgsUsage: "-- <command> [args…]",
	Description: "Unpacks the shim, puts it on PYTHONPATH, and runs the command with an agent inside this\n" +
		"process (or with the `pmagent serve` listening on --socket). The exit code is the command's.",
	Flags: append(pipelineFlags(),
		&cli.StringFlag{Name: "session", Usage: "session name (default: a new id YYYYMMDD_HHMMSS_<6hex>)", EnvVars: []string{"PROFILEMATE_SESSION"}},
		&cli.StringFlag{Name: "socket", Usage: "use the pmagent serve listening on this socket instead of an agent of its own", EnvVars: []string{"PROFILEMATE_SOCKET"}},
		&cli.StringFlag{Name: "output-dir", Usage: "standalone folder the shim falls back to (PROFILEMATE_OUTPUT_DIR)", EnvVars: []string{"PROFILEMATE_OUTPUT_DIR"}},
		&cli.StringFlag{Name: "cache", Usage: "folder for the unpacked shim", EnvVars: []string{"PROFILEMATE_CACHE"}, Value: shimCacheRoot()},
		shimPythonFlag(),
		&cli.DurationFlag{Name: "drain-timeout", Usage: "how long to wait for the processes' last lines after the command exited", EnvVars: []string{"PROFILEMATE_DRAIN_TIMEOUT"}, Value: 10 * time.Second},
	),
	Action: runAction,
}

// shimCacheRoot: $XDG_CACHE_HOME/profilemate (the install package's rule).
func shimCacheRoot() string { return install.DefaultCacheRoot() }

func runAction(c *cli.Context) error {
	argv := c.Args().Slice()
	if len(argv) == 0 {
		return cli.Exit("pmagent run: no command given (pmagent run -- vllm serve MODEL)", 2)
	}
	cfg, err := agentConfig(c)
	if err != nil {
		return err
	}
	log := cmdLog(cfg)
	cache := c.String("cache")
	if cache == "" {
		cache = shimCacheRoot()
	}
	shimDir, err := install.ShimCache(cache, shim.Version, shim.Unpack)
	if err != nil {
		return cli.Exit("pmagent run: "+err.Error(), 1)
	}
	prepareByteCode(shimDir, install.Interpreters(c.StringSlice("python"), argv[0], exec.LookPath))
	session := c.String("session")
	if session == "" {
		session = agent.NewSessionID(time.Now())
	}
	if err := proto.ValidateSession(session); err != nil {
		return cli.Exit("pmagent run: --session / PROFILEMATE_SESSION: "+err.Error(), 2)
	}
	socket := c.String("socket")
	if socket == socketOff {
		// PROFILEMATE_SOCKET=off is the shim's "no agent"; here it means no running one: run our own.
		socket = ""
	}
	var a *agent.Agent
	if socket != "" && socketLive(socket) {
		log.Info("using the running agent", "socket", socket)
	} else {
		if socket == "" {
			dir, err := os.MkdirTemp("", "pmagent-run-")
			if err != nil {
				return cli.Exit("pmagent run: "+err.Error(), 1)
			}
			defer os.RemoveAll(dir)
			socket = filepath.Join(dir, "agent.sock")
		}
		cfg.Socket, cfg.Session = socket, session
		a, err = agent.New(cfg)
		if err != nil {
			return cli.Exit("pmagent run: "+err.Error(), 1)
		}
		// The agent outlives the interrupt: it must still read the processes' last lines.
		if err := a.Start(context.Background()); err != nil {
			return cli.Exit("pmagent run: "+err.Error(), 1)
		}
		startGPU(c, a)
	}
	host := cfg.Host
	if a != nil {
		host = a.Host()
	}

	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = childEnv(os.Environ(), shimDir, session, socket, host, c.String("output-dir"))
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	code := 0
	var waitStatus *syscall.WaitStatus
	if err := cmd.Start(); err != nil {
		log.Error("start command", "argv0", argv[0], "err", err)
		code = 127
	} else {
		if a != nil {
			// This process is the command's parent: it records how the command ended.
			a.Watch(cmd.Process.Pid)
		}
		done := make(chan struct{})
		go func() {
			for {
				select {
				case s := <-sigs:
					// Ctrl-C on a terminal already reached the command (same foreground process
					// group); a second SIGINT would make vLLM skip its orderly shutdown.
					if s == syscall.SIGINT && ttyForeground() {
						continue
					}
					_ = cmd.Process.Signal(s)
				case <-done:
					return
				}
			}
		}()
		err := cmd.Wait()
		close(done)
		code = exitCode(err)
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
			waitStatus = &ws
		}
	}
	if a != nil {
		ctx, cancel := context.WithTimeout(context.Background(), c.Duration("drain-timeout"))
		if !a.WaitIdle(ctx) {
			log.Warn("processes still connected after the command exited; closing them", "timeout", c.Duration("drain-timeout"))
		}
		cancel()
		// After its last lines were read: a bye it sent still counts as a clean end.
		if waitStatus != nil {
			a.Exited(cmd.Process.Pid, *waitStatus)
		}
		a.EndSession(session)
		_ = shutdown(a, log, c.Duration("flush-timeout"))
	}
	if code != 0 {
		return cli.Exit("", code)
	}
	return nil
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	if err != nil {
		return 1
	}
	return 0
}

func socketLive(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// childEnv puts the shim first on PYTHONPATH and sets the shim's variables, naming them in
// VLLM_RAY_EXTRA_ENV_VARS_TO_COPY so Ray workers get them too.
func childEnv(env []string, shimDir, session, socket, host, outputDir string) []string {
	set := map[string]string{
		"PROFILEMATE_SESSION": session,
		"PROFILEMATE_SOCKET":  socket,
		"PROFILEMATE_HOST":    host,
	}
	if outputDir != "" {
		set["PROFILEMATE_OUTPUT_DIR"] = outputDir
	}
	out := make([]string, 0, len(env)+6)
	var pythonPath, rayCopy string
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		switch {
		case k == "PYTHONPATH":
			pythonPath = v
		case k == "VLLM_RAY_EXTRA_ENV_VARS_TO_COPY":
			rayCopy = v
		case set[k] != "" || k == "PROFILEMATE_ARMED":
			// ours wins; a stale ARMED from an outer run would stop the shim from arming.
		default:
			out = append(out, kv)
		}
	}
	if pythonPath != "" {
		pythonPath = shimDir + string(os.PathListSeparator) + pythonPath
	} else {
		pythonPath = shimDir
	}
	out = append(out, "PYTHONPATH="+pythonPath)
	names := map[string]bool{}
	var list []string
	for _, n := range strings.Split(rayCopy, ",") {
		if n = strings.TrimSpace(n); n != "" && !names[n] {
			names[n] = true
			list = append(list, n)
		}
	}
	for _, n := range install.RayCopied {
		if !names[n] {
			names[n] = true
			list = append(list, n)
		}
	}
	out = append(out, "VLLM_RAY_EXTRA_ENV_VARS_TO_COPY="+strings.Join(list, ","))
	for k, v := range set {
		if v != "" {
			out = append(out, k+"="+v)
		}
	}
	return out
}

// ttyForeground reports whether this process runs in the foreground of its terminal, where the
// terminal sends SIGINT to the whole process group, the command included.
func ttyForeground() bool {
	f, err := os.Open("/dev/tty")
	if err != nil {
		return false
	}
	defer f.Close()
	var pgrp int32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), syscall.TIOCGPGRP, uintptr(unsafe.Pointer(&pgrp))); e != 0 {
		return false
	}
	return int(pgrp) == syscall.Getpgrp()
}
