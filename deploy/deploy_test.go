// Package deploy holds ProfileMate's Ansible roles, systemd units and Grafana dashboard; its test
// applies the playbook for real to this machine (as root, without systemd as PID 1), starts the
// installed binaries exactly as the rendered units say, and profiles a simulated vLLM from an
// installed Python environment.
package deploy

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test changes this machine (users, /usr/local/bin, /etc/systemd/system, /etc/profilemate,
// /var/lib/pm*): it runs on CI, where it must, and elsewhere only when asked.
func requireDeployMachine(t *testing.T) {
	t.Helper()
	ci := os.Getenv("CI") == "true"
	if !ci && os.Getenv("PROFILEMATE_DEPLOY_TEST") != "1" {
		t.Skip("applies the playbook to this machine as root: runs on CI, or with PROFILEMATE_DEPLOY_TEST=1")
	}
	if os.Geteuid() != 0 {
		t.Fatal("the deploy test needs root (it creates system users and installs units)")
	}
	for _, tool := range []string{"ansible-playbook", "ansible-lint", "systemd-analyze", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found (scripts/setup.sh installs it): %v", tool, err)
		}
	}
	if _, err := os.Stat("/usr/local/bin/pmhub"); err == nil {
		t.Fatal("/usr/local/bin/pmhub exists already: this machine has a ProfileMate install the test would overwrite")
	}
}

const vllmUser = "pmtestvllm"

func repoRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(wd)
}

// build compiles pmhub and pmagent with a version label into dir.
func build(t *testing.T, dir, version string) {
	t.Helper()
	for _, cmd := range []string{"pmhub", "pmagent"} {
		b := exec.Command("go", "build", "-ldflags=-extldflags=-Wl,-z,lazy -X main.version="+version,
			"-o", filepath.Join(dir, cmd), "./cmd/"+cmd)
		b.Dir = repoRoot(t)
		b.Env = append(os.Environ(), "CGO_CFLAGS=-Wno-deprecated-declarations")
		if out, err := b.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", cmd, err, out)
		}
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// makeVenv creates a vLLM environment as a fleet has one: a venv of the system Python with the
// test tree's vllm package and the simulator installed into site-packages and a `vllm` script.
func makeVenv(t *testing.T, dir string) string {
	t.Helper()
	run(t, "", "/usr/bin/python3", "-m", "venv", "--without-pip", dir)
	py := filepath.Join(dir, "bin", "python")
	out := run(t, "", py, "-I", "-c", `import sysconfig;print(sysconfig.get_paths()["purelib"])`)
	site := strings.TrimSpace(out)
	root := repoRoot(t)
	copyTree(t, filepath.Join(root, "testbed", "eras", "main_2026_08_20", "vllm"), filepath.Join(site, "vllm"))
	copyTree(t, filepath.Join(root, "testbed", "pmsim"), filepath.Join(site, "pmsim"))
	script, err := os.ReadFile(filepath.Join(root, "testbed", "bin", "vllm"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitN(string(script), "\n", 2)
	script = []byte("#!" + py + "\n" + lines[1])
	if err := os.WriteFile(filepath.Join(dir, "bin", "vllm"), script, 0o755); err != nil {
		t.Fatal(err)
	}
	return py
}

func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.Name() == "__pycache__" {
			return filepath.SkipDir
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o644)
	})
	if err != nil {
		t.Fatalf("copy %s: %v", src, err)
	}
}

// treeHash hashes every path, mode and content under dir (byte-identity of an environment).
func treeHash(t *testing.T, dir string) string {
	t.Helper()
	h := sha256.New()
	var paths []string
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil {
			paths = append(paths, p)
		}
		return nil
	})
	sort.Strings(paths)
	for _, p := range paths {
		st, err := os.Lstat(p)
		if err != nil {
			continue
		}
		fmt.Fprintf(h, "%s %o\n", strings.TrimPrefix(p, dir), st.Mode())
		if st.Mode().IsRegular() {
			f, err := os.Open(p)
			if err == nil {
				_, _ = io.Copy(h, f)
				f.Close()
			}
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

func run(t *testing.T, dir string, name string, args ...string) string {
	t.Helper()
	c := exec.Command(name, args...)
	c.Dir = dir
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

type playbook struct {
	dir, inventory string
}

var recapRE = regexp.MustCompile(`(?m)^localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)`)

// apply runs site.yml with extra variables and returns the recap's changed count.
func (p playbook) apply(t *testing.T, vars map[string]any) int {
	t.Helper()
	ev, _ := json.Marshal(vars)
	c := exec.Command("ansible-playbook", "-i", p.inventory, "site.yml", "-e", string(ev))
	c.Dir = p.dir
	c.Env = append(os.Environ(), "ANSIBLE_NOCOLOR=1", "ANSIBLE_FORCE_COLOR=0", "ANSIBLE_DISPLAY_OK_HOSTS=0", "ANSIBLE_DISPLAY_SKIPPED_HOSTS=0")
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("ansible-playbook: %v\n%s", err, out)
	}
	t.Logf("ansible-playbook %s:\n%s", vars["pmhub_state"], changedTasks(out))
	m := recapRE.FindSubmatch(out)
	if m == nil {
		t.Fatalf("no recap for localhost:\n%s", out)
	}
	if string(m[4]) != "0" || string(m[3]) != "0" {
		t.Fatalf("playbook failed:\n%s", out)
	}
	n, _ := strconv.Atoi(string(m[2]))
	return n
}

// changedTasks lists the TASK headers followed by a "changed:" line, for failure messages.
func changedTasks(out []byte) string {
	var task, b strings.Builder
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "TASK [") {
			task.Reset()
			task.WriteString(l)
		}
		if strings.HasPrefix(l, "changed:") {
			b.WriteString(task.String() + " " + l + "\n")
		}
	}
	return b.String()
}

// unit is what the test needs of a rendered systemd unit.
type unit struct {
	execStart              []string
	user, group            string
	envFiles               []string
	stateDir, runtimeDir   string
	stateMode, runtimeMode os.FileMode
	supplementaryGroups    []string
	umask                  int
	environment            []string
}

func parseUnit(t *testing.T, path string) unit {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unit{stateMode: 0o755, runtimeMode: 0o755, umask: 0o022}
	mode := func(v string) os.FileMode {
		n, err := strconv.ParseUint(v, 8, 32)
		if err != nil {
			t.Fatalf("%s: mode %q", path, v)
		}
		return os.FileMode(n)
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		switch k {
		case "ExecStart":
			u.execStart = strings.Fields(v)
		case "User":
			u.user = v
		case "Group":
			u.group = v
		case "EnvironmentFile":
			u.envFiles = append(u.envFiles, strings.TrimPrefix(v, "-"))
		case "Environment":
			u.environment = append(u.environment, v)
		case "StateDirectory":
			u.stateDir = filepath.Join("/var/lib", v)
		case "RuntimeDirectory":
			u.runtimeDir = filepath.Join("/run", v)
		case "StateDirectoryMode":
			u.stateMode = mode(v)
		case "RuntimeDirectoryMode":
			u.runtimeMode = mode(v)
		case "UMask":
			u.umask = int(mode(v))
		case "SupplementaryGroups":
			u.supplementaryGroups = strings.Fields(v)
		}
	}
	if len(u.execStart) == 0 || u.user == "" {
		t.Fatalf("%s: no ExecStart or User", path)
	}
	return u
}

// notifySocket listens where a Type=notify service reports readiness (NOTIFY_SOCKET) and
// returns its path and a channel that receives every datagram.
func notifySocket(t *testing.T, dir string) (string, <-chan string) {
	t.Helper()
	path := filepath.Join(dir, fmt.Sprintf("notify-%d.sock", time.Now().UnixNano()))
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o777); err != nil { // the service user sends to it
		t.Fatal(err)
	}
	ch := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			ch <- string(buf[:n])
		}
	}()
	t.Cleanup(func() { conn.Close() })
	return path, ch
}

// waitReady waits for READY=1 from a Type=notify service, failing early when it exits.
func waitReady(t *testing.T, svc *service, ch <-chan string, logPath string) {
	t.Helper()
	timeout := time.After(90 * time.Second) // the units' TimeoutStartSec
	for {
		select {
		case m := <-ch:
			if strings.Contains(m, "READY=1") {
				return
			}
		case <-svc.done:
			t.Fatalf("%v exited before READY=1:\n%s", svc.cmd.Args, logTail(logPath))
		case <-timeout:
			t.Fatalf("%v: no READY=1 within TimeoutStartSec:\n%s", svc.cmd.Args, logTail(logPath))
		}
	}
}

// service is a started unit command; done closes when it exited.
type service struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// stop sends SIGTERM and waits (bounded) for the exit, as systemctl stop would.
func (s *service) stop(t *testing.T) {
	t.Helper()
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(60 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
		t.Fatalf("%v did not stop on SIGTERM", s.cmd.Args)
	}
}

// start runs the unit's ExecStart as systemd would: as its user and group, with its environment
// files, STATE_DIRECTORY / RUNTIME_DIRECTORY created with their modes and set, its umask, and a
// NOTIFY_SOCKET; it returns once the service reported READY=1.
func (u unit) start(t *testing.T, logPath string) *service {
	t.Helper()
	notify, ready := notifySocket(t, filepath.Dir(logPath))
	usr, err := user.Lookup(u.user)
	if err != nil {
		t.Fatal(err)
	}
	group := u.group
	if group == "" {
		group = u.user
	}
	grp, err := user.LookupGroup(group)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(usr.Uid)
	gid, _ := strconv.Atoi(grp.Gid)
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
		"USER=" + u.user, "LOGNAME=" + u.user, "HOME=" + usr.HomeDir}
	for _, dir := range []struct {
		path, env string
		mode      os.FileMode
	}{{u.stateDir, "STATE_DIRECTORY", u.stateMode}, {u.runtimeDir, "RUNTIME_DIRECTORY", u.runtimeMode}} {
		if dir.path == "" {
			continue
		}
		if err := os.MkdirAll(dir.path, dir.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir.path, uid, gid); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir.path, dir.mode); err != nil {
			t.Fatal(err)
		}
		env = append(env, dir.env+"="+dir.path)
	}
	env = append(env, "NOTIFY_SOCKET="+notify)
	env = append(env, u.environment...)
	for _, ef := range u.envFiles {
		b, err := os.ReadFile(ef)
		if err != nil {
			continue // "-" prefix: optional
		}
		for _, l := range strings.Split(string(b), "\n") {
			l = strings.TrimSpace(l)
			if l == "" || strings.HasPrefix(l, "#") {
				continue
			}
			env = append(env, l)
		}
	}
	args := append([]string{"--reuid=" + usr.Uid, "--regid=" + grp.Gid, "--init-groups", "--"}, u.execStart...)
	c := exec.Command("setpriv", args...)
	c.Env = env
	c.Dir = "/"
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	c.Stdout, c.Stderr = logf, logf
	old := syscall.Umask(u.umask)
	err = c.Start()
	syscall.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	svc := &service{cmd: c, done: make(chan struct{})}
	go func() { _ = c.Wait(); logf.Close(); close(svc.done) }()
	t.Cleanup(func() {
		select {
		case <-svc.done:
		default:
			svc.stop(t)
		}
	})
	waitReady(t, svc, ready, logPath)
	return svc
}

// poll waits for cond with a bound.
func poll(t *testing.T, what string, limit time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(limit)
	last := ""
	for {
		ok, why := cond()
		if ok {
			return
		}
		last = why
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v (last: %s)", what, limit, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func logTail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

type sessionInfo struct {
	Session   string           `json:"session"`
	Processes int              `json:"processes"`
	Rows      map[string]int64 `json:"rows"`
}

func TestPlaybookOnThisMachine(t *testing.T) {
	requireDeployMachine(t)
	root := repoRoot(t)
	work, err := os.MkdirTemp("/var/tmp", "pm-deploy-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(work, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })

	lint := exec.Command("ansible-lint", "--nocolor", "deploy/ansible")
	lint.Dir = root
	if out, err := lint.CombinedOutput(); err != nil {
		t.Fatalf("ansible-lint: %v\n%s", err, out)
	}
	syntax := exec.Command("ansible-playbook", "--syntax-check", "-i", "inventory.example.yml", "site.yml")
	syntax.Dir = filepath.Join(root, "deploy", "ansible")
	if out, err := syntax.CombinedOutput(); err != nil {
		t.Fatalf("syntax check: %v\n%s", err, out)
	}

	buildA, buildB := filepath.Join(work, "a"), filepath.Join(work, "b")
	build(t, buildA, "1.0.0-a")
	build(t, buildB, "1.0.0-b")

	// The vLLM user and environment exist before ProfileMate arrives, as on a GPU host.
	if _, err := user.Lookup(vllmUser); err != nil {
		run(t, "", "useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", vllmUser)
	}
	t.Cleanup(func() { _ = exec.Command("userdel", vllmUser).Run() })
	venv := filepath.Join(work, "venv")
	py := makeVenv(t, venv)
	venvBefore := treeHash(t, venv)

	inv := filepath.Join(work, "inventory.yml")
	if err := os.WriteFile(inv, []byte("all:\n  children:\n    profilemate_hubs:\n      hosts:\n        localhost:\n    profilemate_gpu_hosts:\n      hosts:\n        localhost:\n  vars:\n    ansible_connection: local\n    ansible_python_interpreter: /usr/bin/python3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	natsPort, httpPort := freePort(t), freePort(t)
	vars := func(build, version, state string) map[string]any {
		return map[string]any{
			"pmhub_state": state, "pmagent_state": state,
			"pmhub_version": version, "pmagent_version": version,
			"pmhub_binary_local_path": filepath.Join(build, "pmhub"), "pmagent_binary_local_path": filepath.Join(build, "pmagent"),
			"pmhub_listen": fmt.Sprintf("127.0.0.1:%d", natsPort), "pmhub_http": fmt.Sprintf("127.0.0.1:%d", httpPort),
			"pmagent_nats_url": fmt.Sprintf("nats://127.0.0.1:%d", natsPort), "pmagent_host": "gpu-host-1",
			"pmagent_vllm_users": []string{vllmUser}, "pmagent_python_envs": []string{py},
			// No systemd as PID 1 here: the test starts the units' commands itself.
			"pmhub_service_start": false, "pmagent_service_start": false,
		}
	}
	pb := playbook{dir: filepath.Join(root, "deploy", "ansible"), inventory: inv}
	absentDone := false
	t.Cleanup(func() {
		if !absentDone {
			pb.apply(t, vars(buildA, "1.0.0-a", "absent"))
		}
	})

	if n := pb.apply(t, vars(buildA, "1.0.0-a", "present")); n == 0 {
		t.Fatal("first run changed nothing")
	}
	if n := pb.apply(t, vars(buildA, "1.0.0-a", "present")); n != 0 {
		t.Fatalf("second run: changed=%d, want 0 (not idempotent)", n)
	}
	units := []string{"/etc/systemd/system/pmhub.service", "/etc/systemd/system/pmagent.service"}
	if out, err := exec.Command("systemd-analyze", append([]string{"verify"}, units...)...).CombinedOutput(); err != nil {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}

	session := profileOnce(t, work, py, httpPort, "a")

	// Upgrade to the second build, then roll back: both converge and the session stays.
	for _, step := range []struct{ build, version string }{{buildB, "1.0.0-b"}, {buildA, "1.0.0-a"}} {
		if n := pb.apply(t, vars(step.build, step.version, "present")); n == 0 {
			t.Fatalf("the run to %s changed nothing", step.version)
		}
		out := run(t, "", "/usr/local/bin/pmagent", "--version")
		if !strings.Contains(out, step.version) {
			t.Fatalf("pmagent --version after the run to %s: %q", step.version, out)
		}
		if _, err := os.Stat(filepath.Join("/var/lib/pmhub/hub/sessions", session, "metadata.json")); err != nil {
			t.Fatalf("session %s lost by the run to %s: %v", session, step.version, err)
		}
	}

	pb.apply(t, vars(buildA, "1.0.0-a", "absent"))
	absentDone = true
	for _, p := range []string{"/usr/local/bin/pmhub", "/usr/local/bin/pmagent", "/etc/systemd/system/pmhub.service",
		"/etc/systemd/system/pmagent.service", "/etc/profilemate", "/var/lib/pmhub", "/var/lib/pmagent", "/run/profilemate"} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("state absent left %s", p)
		}
	}
	for _, u := range []string{"pmhub", "pmagent"} {
		if _, err := user.Lookup(u); err == nil {
			t.Errorf("state absent left user %s", u)
		}
	}
	if _, err := user.LookupGroup("profilemate"); err == nil {
		t.Error("state absent left group profilemate")
	}
	if got := treeHash(t, venv); got != venvBefore {
		t.Error("state absent did not leave the vLLM environment byte-identical")
	}
}

// profileOnce starts hub and agent as their units say, runs the simulated vLLM from the installed
// environment as the vLLM user (no PYTHONPATH, no PROFILEMATE_SOCKET), waits for its session at
// the hub and stops both. It returns the session id.
func profileOnce(t *testing.T, work, py string, httpPort int, tag string) string {
	t.Helper()
	hub := parseUnit(t, "/etc/systemd/system/pmhub.service").start(t, filepath.Join(work, "pmhub-"+tag+".log"))
	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	poll(t, "hub /healthz", 60*time.Second, func() (bool, string) {
		r, err := http.Get(base + "/healthz")
		if err != nil {
			return false, err.Error()
		}
		r.Body.Close()
		return r.StatusCode == 200, r.Status
	})
	agentUnit := parseUnit(t, "/etc/systemd/system/pmagent.service")
	agent := agentUnit.start(t, filepath.Join(work, "pmagent-"+tag+".log"))
	sock := filepath.Join(agentUnit.runtimeDir, "agent.sock")
	poll(t, "agent socket", 60*time.Second, func() (bool, string) {
		_, err := os.Stat(sock)
		return err == nil, fmt.Sprint(err) + "\n" + logTail(filepath.Join(work, "pmagent-"+tag+".log"))
	})

	before := sessions(t, base)
	vllm := exec.Command("setpriv", "--reuid="+vllmUser, "--regid="+vllmUser, "--init-groups", "--",
		py, filepath.Join(filepath.Dir(py), "vllm"), "serve", "m")
	vllm.Dir = "/"
	vllm.Env = []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent", "PMSIM_TP=2", "PMSIM_STEP_WORK_MS=0",
		"PMSIM_REQUESTS=8", "PMSIM_RPC_TIMEOUT_S=60", "PROFILEMATE_OUTPUT_DIR=" + filepath.Join(work, "standalone-"+tag)}
	if out, err := vllm.CombinedOutput(); err != nil {
		t.Fatalf("simulated vLLM: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(work, "standalone-"+tag)); err == nil {
		t.Fatalf("the shim wrote a standalone folder: it did not find the agent at %s", sock)
	}
	var got sessionInfo
	poll(t, "session at the hub", 90*time.Second, func() (bool, string) {
		for _, s := range sessions(t, base) {
			if _, old := before[s.Session]; old {
				continue
			}
			got = s
			return s.Processes >= 4 && s.Rows["batch_utilization"] > 0 && s.Rows["forward_pass_timing"] > 0, fmt.Sprintf("%+v", s)
		}
		return false, "no new session\n" + logTail(filepath.Join(work, "pmagent-"+tag+".log"))
	})
	agent.stop(t)
	hub.stop(t)
	return got.Session
}

func sessions(t *testing.T, base string) map[string]sessionInfo {
	t.Helper()
	out := map[string]sessionInfo{}
	r, err := http.Get(base + "/api/sessions")
	if err != nil {
		return out
	}
	defer r.Body.Close()
	var list []sessionInfo
	if err := json.NewDecoder(r.Body).Decode(&list); err != nil {
		return out
	}
	for _, s := range list {
		out[s.Session] = s
	}
	return out
}
