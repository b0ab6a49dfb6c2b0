"""Process lifecycles (issue 13, docs/shim.md "process lifecycles"): fork-started workers, signals,
unwritable folders, reload, fork safety, loaders, identity and end states, finding the agent and
losing it. Every case runs fresh interpreters with the real shim against the fake tree of
helpers.py or the simulator's vLLM-shaped tree, and polls with a bound where it waits."""
import compileall
import glob
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest
import zipfile

from tests import helpers as h

SCHED = "vllm.v1.core.sched.scheduler"


def wait_for(cond, timeout=60.0, what="a condition"):
    """Polls cond() every 20 ms until it returns something true; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(0.02)


def all_seqs(folder):
    """Every seq in a process folder's CSVs."""
    return [int(r["seq"]) for path in glob.glob(os.path.join(folder, "*.csv")) for r in h.csv_rows(path)]


class Listener:
    """The agent's side of the Unix socket, at the wire boundary: accepts shims and keeps every
    line they send (decoded). The agent's own handling of these lines is tested in agent/."""

    def __init__(self, path, ack=False):
        self.path = path
        self.ack = ack  # acknowledge each batch ({"t":"ctl","op":"ack","seq":last})
        self.frozen = False  # drop batches unread and unacknowledged, as an agent stopping would
        self.lost = 0  # events dropped while frozen
        self.lines = []
        self.conns = []
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._read, args=(c,), daemon=True).start()

    def _read(self, c):
        buf = b""
        while True:
            try:
                chunk = c.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line)
                if msg.get("t") == "batch" and self.frozen:
                    self.lost += len(msg["events"])
                    continue
                self.lines.append(msg)
                if self.ack and msg.get("t") == "batch" and msg["events"]:
                    try:
                        c.sendall(b'{"t":"ctl","v":1,"op":"ack","seq":%d}\n' % msg["events"][-1]["seq"])
                    except OSError:
                        pass  # the shim said bye and closed; keep reading what it sent

    def close(self):
        for s in [self.srv] + self.conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def of(self, t):
        return [m for m in list(self.lines) if m.get("t") == t]

    def seqs(self):
        return [e["seq"] for b in self.of("batch") for e in b["events"]]


class Base(unittest.TestCase):
    def setUp(self):
        self.tree = h.fake_tree()
        self.out = tempfile.mkdtemp(prefix="pm-life-")
        self.addCleanup(shutil.rmtree, self.tree, True)
        self.addCleanup(shutil.rmtree, self.out, True)
        # A private temp folder: fallbacks and per-user sockets stay inside the test.
        self.tmp = os.path.join(self.out, "tmp")
        os.mkdir(self.tmp)
        os.chmod(self.tmp, 0o1777)  # like /tmp: anyone may create a folder in it

    def script(self, body, name="script.py"):
        path = os.path.join(self.out, name)
        with open(path, "w") as f:
            f.write(textwrap.dedent(body))
        return path

    def run_py(self, body, env=None, paths=None, timeout=120):
        e = {"TMPDIR": self.tmp}
        e.update(env or {})
        r = h.run([self.script(body)], paths or [self.tree], env=e, out_dir=os.path.join(self.out, "pm"),
                  timeout=timeout)
        return r

    def popen(self, body, env):
        e = {k: v for k, v in os.environ.items()
             if not k.startswith(("PROFILEMATE_", "VLLM_", "PMSIM_")) and k != "PYTHONPATH"}
        # As h.run: no agent lookup unless the test names a socket (an agent at a default path on
        # this machine must not receive the test's events).
        e.update({"PYTHONPATH": os.pathsep.join([h.SHIM, self.tree]), "PYTHONDONTWRITEBYTECODE": "1",
                  "PROFILEMATE_OUTPUT_DIR": os.path.join(self.out, "pm"), "TMPDIR": self.tmp,
                  "PROFILEMATE_SOCKET": "off"})
        e.update(env)
        p = subprocess.Popen([sys.executable, self.script(body)], env=e, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: p.poll() is None and p.kill())
        return p

    def folders(self, root=None):
        sessions = h.sessions(root or os.path.join(self.out, "pm"))
        self.assertEqual(len(sessions), 1, sessions)
        return sessions[0], h.proc_dirs(sessions[0])

    def rows(self, folder, table="batch_utilization"):
        return h.csv_rows(os.path.join(folder, table + ".csv"))


# ------------------------------------------------------------------ 1. fork-started workers

@unittest.skipUnless(os.path.isdir(os.path.join(h.TESTBED, "pmsim")), "testbed not present")
class ForkStartedWorkers(Base):
    def test_fork_workers_are_workers(self):
        """VLLM_WORKER_MULTIPROC_METHOD=fork: the TP workers are forked from EngineCore after its
        targets set role engine_core; each must report itself, not its parent."""
        out = os.path.join(self.out, "pm")
        env = {"VLLM_WORKER_MULTIPROC_METHOD": "fork", "PMSIM_STEP_WORK_MS": "0", "PMSIM_TP": "2",
               "PMSIM_REQUESTS": "4", "TMPDIR": self.tmp}
        r = h.run([os.path.join(h.TESTBED, "bin", "vllm"), "serve", "m"],
                  [os.path.join(h.TESTBED, "eras", "main_2026_08_20"), h.TESTBED], env=env, out_dir=out)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        _, procs = self.folders()
        names = sorted(os.path.basename(p).rsplit("-", 1)[0] for p in procs)
        self.assertEqual(names, ["api_server-0", "engine_core-0", "worker-0", "worker-1"], r.stderr[-2000:])
        for p in procs:
            if os.path.basename(p).startswith("worker-"):
                rows = self.rows(p, "forward_pass_timing")
                self.assertTrue(rows, p)
                self.assertEqual({x["role"] for x in rows}, {"worker"}, p)
                meta = h.read_json(os.path.join(p, "metadata.json"))
                self.assertEqual(meta["ident"]["role"], "worker")
        self.assertIn("[worker 1]", r.stderr)
        summary = h.read_json(os.path.join(self.folders()[0], "session.json"))
        instances = [p["instance"] for p in summary["processes"].values()]
        self.assertEqual(len(set(instances)), 4, instances)


# ------------------------------------------------------------------ 2. signals

class Signals(Base):
    def test_graceful_sigterm_keeps_recording(self):
        """asyncio's add_signal_handler (uvicorn's graceful drain): 5 steps before SIGTERM, 5
        after, all 10 recorded, end state clean."""
        r = self.run_py("""
            import asyncio, os, signal
            from vllm.v1.core.sched.scheduler import Scheduler
            s = Scheduler()

            async def main():
                stop = asyncio.Event()
                asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
                for _ in range(5):
                    s.schedule()
                os.kill(os.getpid(), signal.SIGTERM)
                await asyncio.wait_for(stop.wait(), 60)
                for _ in range(5):  # draining in-flight requests
                    s.schedule()

            asyncio.run(main())
            print("drained")
        """)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("drained", r.stdout)
        _, procs = self.folders()
        self.assertEqual(len(procs), 1)
        self.assertEqual(len(self.rows(procs[0])), 10)
        meta = h.read_json(os.path.join(procs[0], "metadata.json"))
        self.assertEqual((meta["end_state"], meta["end_signal"]), ("clean", ""))

    def test_plain_handler_keeps_recording(self):
        r = self.run_py("""
            import os, signal
            from vllm.v1.core.sched.scheduler import Scheduler
            got = []
            signal.signal(signal.SIGTERM, lambda n, f: got.append(n))
            s = Scheduler()
            for _ in range(3):
                s.schedule()
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(3):
                s.schedule()
            print("handled", got)
        """)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("handled [%d]" % signal.SIGTERM, r.stdout)
        _, procs = self.folders()
        self.assertEqual(len(self.rows(procs[0])), 6)

    def test_default_sigterm_ends_killed(self):
        r = self.run_py("""
            import os, signal
            from vllm.v1.core.sched.scheduler import Scheduler
            s = Scheduler()
            for _ in range(3):
                s.schedule()
            os.kill(os.getpid(), signal.SIGTERM)
            print("not reached")
        """)
        self.assertEqual(r.returncode, -signal.SIGTERM, r.stderr)
        session, procs = self.folders()
        self.assertEqual(len(self.rows(procs[0])), 3)
        meta = h.read_json(os.path.join(procs[0], "metadata.json"))
        self.assertEqual((meta["end_state"], meta["end_signal"]), ("killed", "SIGTERM"))
        summary = h.read_json(os.path.join(session, "session.json"))
        only = list(summary["processes"].values())[0]
        self.assertEqual((only["end_state"], only["end_signal"]), ("killed", "SIGTERM"))


# ------------------------------------------------------------------ 3. unwritable folders

FORK_AND_WORK = """
    import os, sys, time
    from vllm.v1.core.sched.scheduler import Scheduler
    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            break
        pids.append(pid)
    s = Scheduler()
    for _ in range(100):  # about 100 flush intervals of 1 ms each
        s.schedule()
        time.sleep(0.002)
    if pids:
        for p in pids:
            os.waitpid(p, 0)
        print("done")
"""


class UnwritableFolder(Base):
    def blocked_root(self):
        f = os.path.join(self.out, "a-file")
        open(f, "w").close()
        return os.path.join(f, "pm")  # ENOTDIR, for root as well

    def test_falls_back_once_per_process(self):
        bad = self.blocked_root()
        r = self.run_py(FORK_AND_WORK, env={"VLLM_ENABLE_PROFILING": "1", "PROFILEMATE_OUTPUT_DIR": bad,
                                            "PROFILEMATE_FLUSH_MS": "1"})
        self.assertEqual(r.returncode, 0, r.stderr)
        fallback = os.path.join(self.tmp, "profilemate-%d" % os.getuid(), "output")
        lines = [l for l in r.stderr.splitlines() if "cannot write" in l]
        self.assertEqual(len(lines), 1, r.stderr)  # the children forked after the fallback
        self.assertIn(bad, lines[0])
        self.assertIn("Not a directory", lines[0])
        self.assertIn(fallback, lines[0])
        self.assertNotIn("flush failed", r.stderr)
        _, procs = self.folders(fallback)
        self.assertEqual(len(procs), 3)
        self.assertEqual(sorted(len(self.rows(p)) for p in procs), [100, 100, 100])
        self.assertIn("Output directory: %s" % fallback, r.stderr)

    def test_spawned_children_fall_back_once_each(self):
        bad = self.blocked_root()
        r = self.run_py("""
            import subprocess, sys, time
            from vllm.v1.core.sched.scheduler import Scheduler
            kids = [subprocess.Popen([sys.executable, "-c", "import time; from vllm.v1.core.sched.scheduler import "
                                      "Scheduler as S; s = S(); [(s.schedule(), time.sleep(0.002)) for _ in range(50)]"])
                    for _ in range(2)]
            s = Scheduler()
            for _ in range(50):
                s.schedule()
                time.sleep(0.002)
            print([k.wait() for k in kids])
        """, env={"PROFILEMATE_OUTPUT_DIR": bad, "PROFILEMATE_FLUSH_MS": "1"})
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = [l for l in r.stderr.splitlines() if "cannot write" in l]
        self.assertEqual(len(lines), 3, r.stderr)
        self.assertNotIn("flush failed", r.stderr)
        _, procs = self.folders(os.path.join(self.tmp, "profilemate-%d" % os.getuid(), "output"))
        self.assertEqual(sorted(len(self.rows(p)) for p in procs), [50, 50, 50])

    def test_no_folder_at_all_stops_quietly(self):
        bad = self.blocked_root()
        tmp_file = os.path.join(self.out, "tmp-file")
        open(tmp_file, "w").close()
        r = self.run_py(FORK_AND_WORK, env={"VLLM_ENABLE_PROFILING": "1", "PROFILEMATE_OUTPUT_DIR": bad,
                                            "PROFILEMATE_FLUSH_MS": "1", "TMPDIR": tmp_file})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("done", r.stdout)
        lines = [l for l in r.stderr.splitlines() if "cannot write" in l]
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertIn("standalone folder is off", lines[0])
        self.assertNotIn("flush failed", r.stderr)


# ------------------------------------------------------------------ 4. reload

class Reload(Base):
    def test_reload_reapplies(self):
        r = self.run_py("""
            import importlib
            import vllm.v1.core.sched.scheduler as m
            m.Scheduler().schedule()
            importlib.reload(m)
            for _ in range(3):
                m.Scheduler().schedule()
            from profilemate import runtime
            print([s["status"] for s in runtime.statuses() if s["target"] == "scheduler"])
        """)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("['patched']", r.stdout)
        _, procs = self.folders()
        self.assertEqual(len(self.rows(procs[0])), 4)

    def test_status_reads_the_attribute(self):
        r = self.run_py("""
            import vllm.v1.core.sched.scheduler as m
            m.Scheduler().schedule()
            m.Scheduler.schedule = lambda self: m.Out(4)  # someone replaces the wrapper
            m.Scheduler().schedule()
        """)
        self.assertEqual(r.returncode, 0, r.stderr)
        _, procs = self.folders()
        meta = h.read_json(os.path.join(procs[0], "metadata.json"))
        sched = [t for t in meta["targets"] if t["target"] == "scheduler"][0]
        self.assertEqual(sched["status"], "failed", sched)
        self.assertIn("Scheduler.schedule", sched["reason"])


# ------------------------------------------------------------------ 5. fork safety

FORK_SAFETY = """
    import json, os, sys, threading, time
    import vllm.v1.core.sched.scheduler as m
    from profilemate import runtime

    gate = threading.Event()
    import builtins
    builtins.PM_GATE = gate
    results = {}

    def fork_child(label):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            imports = []
            sys.addaudithook(lambda ev, args: imports.append(args[0]) if ev == "import" else None)
            m.Scheduler().schedule()
            runtime.final_flush()
            os.write(w, json.dumps(imports).encode())
            os._exit(0)
        os.close(w)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.01)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            results[label] = "hung"
            return
        with os.fdopen(r) as f:
            got = f.read()
        results[label] = "ok" if status == 0 and got == "[]" else "imports %s status %d" % (got, status)

    # The flush thread records and flushes all along (PROFILEMATE_FLUSH_MS=1).
    busy = threading.Thread(target=lambda: [m.Scheduler().schedule() for _ in range(2000)], daemon=True)
    busy.start()
    for i, lock in enumerate(runtime.flush_locks()):
        lock.acquire()
        try:
            fork_child("lock%d" % i)
        finally:
            lock.release()
    # An import in progress in another thread at fork time (it holds that module's import lock).
    importer = threading.Thread(target=lambda: __import__("pm_blocker"), daemon=True)
    importer.start()
    deadline = time.monotonic() + 60
    while "pm_blocker" not in sys.modules:
        if time.monotonic() > deadline:
            raise SystemExit("the importer thread never started its import")
        time.sleep(0.001)
    fork_child("import")
    gate.set()
    importer.join()
    print(json.dumps(results))
"""

STORM = """
    import os, sys, threading, time
    import vllm.v1.core.sched.scheduler as m
    stop = []
    def work():
        while not stop:
            m.Scheduler().schedule()
            time.sleep(0.0002)
    threads = [threading.Thread(target=work, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    pids = []
    for _ in range(int(os.environ.get("PM_FORKS", "200"))):
        pid = os.fork()
        if pid == 0:
            m.Scheduler().schedule()
            sys.exit(0)  # atexit: the child's final flush
        pids.append(pid)
    stop.append(1)
    deadline = time.monotonic() + 90
    hung = set(pids)
    while hung and time.monotonic() < deadline:
        for pid in list(hung):
            if os.waitpid(pid, os.WNOHANG)[0]:
                hung.discard(pid)
        time.sleep(0.01)
    for pid in hung:
        os.kill(pid, 9)
    print("hung", len(hung))
"""


class ForkSafety(Base):
    def test_fork_while_flush_locks_and_imports_are_held(self):
        with open(os.path.join(self.tree, "pm_blocker.py"), "w") as f:
            f.write("import builtins\nbuiltins.PM_GATE.wait(60)\n")
        r = self.run_py(FORK_SAFETY, env={"VLLM_ENABLE_PROFILING": "1", "PROFILEMATE_FLUSH_MS": "1"})
        self.assertEqual(r.returncode, 0, r.stderr)
        results = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertTrue(results)
        self.assertEqual(set(results.values()), {"ok"}, results)

    def test_fork_storm(self):
        """Stress check: 200 forks (on the newest Python, or with PROFILEMATE_STRESS=1; 50 on the
        others, which the deterministic test above covers) while two threads record and the flush
        thread runs every 1 ms; no child may hang."""
        forks = 200 if sys.version_info >= (3, 13) or os.environ.get("PROFILEMATE_STRESS") == "1" else 50
        r = self.run_py(STORM, env={"VLLM_ENABLE_PROFILING": "1", "PROFILEMATE_FLUSH_MS": "1",
                                    "PM_FORKS": str(forks)}, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertIn("hung 0", r.stdout)
        _, procs = self.folders()
        self.assertEqual(len(procs), forks + 1)


# ------------------------------------------------------------------ 6. loaders

LEGACY_FINDER = """
import importlib.machinery, sys

class LegacyLoader:
    '''A third-party loader with load_module only (no exec_module).'''
    def __init__(self, path):
        self.path = path

    def load_module(self, fullname):
        import types
        mod = sys.modules.setdefault(fullname, types.ModuleType(fullname))
        mod.__file__, mod.__loader__ = self.path, self
        with open(self.path) as f:
            exec(compile(f.read(), self.path, "exec"), mod.__dict__)
        return mod

class LegacyFinder:
    def __init__(self, root):
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "vllm.v1.core.sched.scheduler":
            return None
        p = self.root + "/vllm/v1/core/sched/scheduler.py"
        return importlib.machinery.ModuleSpec(fullname, LegacyLoader(p), origin=p)
"""


class Loaders(Base):
    CODE = """
        import vllm.v1.core.sched.scheduler as m
        for _ in range(3):
            m.Scheduler().schedule()
        from profilemate import runtime
        print([s["status"] for s in runtime.statuses() if s["target"] == "scheduler"])
    """

    def check_patched(self, r, rows=3):
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("['patched']", r.stdout, r.stderr)
        self.assertIn("Successfully patched Scheduler", r.stderr)
        _, procs = self.folders()
        self.assertEqual(len(self.rows(procs[0])), rows)

    def test_sourceless_pyc(self):
        self.assertTrue(compileall.compile_dir(self.tree, legacy=True, quiet=1))
        for py in glob.glob(os.path.join(self.tree, "vllm", "**", "*.py"), recursive=True):
            os.remove(py)
        self.check_patched(self.run_py(self.CODE))

    def test_zip_file(self):
        z = os.path.join(self.out, "vllm.zip")
        with zipfile.ZipFile(z, "w") as zf:
            for path in glob.glob(os.path.join(self.tree, "vllm", "**", "*.py"), recursive=True):
                zf.write(path, os.path.relpath(path, self.tree))
        self.check_patched(self.run_py(self.CODE, paths=[z]))

    def test_namespace_packages(self):
        for init in glob.glob(os.path.join(self.tree, "vllm", "**", "__init__.py"), recursive=True):
            os.remove(init)
        self.check_patched(self.run_py(self.CODE))

    def test_loader_without_exec_module(self):
        with open(os.path.join(self.out, "legacy_finder.py"), "w") as f:
            f.write(LEGACY_FINDER)
        code = ("import sys, legacy_finder\nsys.meta_path.append(legacy_finder.LegacyFinder(%r))\n"
                "sys.path.remove(%r)\n" % (self.tree, self.tree)) + textwrap.dedent("""
            import types
            for name in ("vllm", "vllm.v1", "vllm.v1.core", "vllm.v1.core.sched"):
                mod = types.ModuleType(name)
                mod.__path__ = []
                sys.modules[name] = mod
        """) + textwrap.dedent(self.CODE)
        self.check_patched(self.run_py(code, paths=[self.out, self.tree]))

    def test_vllm_put_into_sys_modules(self):
        """A launcher builds the `vllm` module object itself: the watch list must still load."""
        code = "import sys, types\nm = types.ModuleType('vllm')\nm.__path__ = [%r]\nsys.modules['vllm'] = m\n" % (
            os.path.join(self.tree, "vllm"),) + textwrap.dedent(self.CODE)
        self.check_patched(self.run_py(code))

    def test_doctor_absent_failed_and_wrapped_state(self):
        """doctor: a module missing from this vLLM is absent; one that exists but raises on import is
        failed with the exception; a wrap that did not take (a class ignoring assignments) is failed."""
        sched = os.path.join(self.tree, "vllm", "v1", "core", "sched", "scheduler.py")
        with open(sched) as f:
            body = f.read()
        with open(sched, "w") as f:
            f.write("class _Frozen(type):\n    def __setattr__(cls, name, value):\n        pass\n\n" +
                    body.replace("class Scheduler:", "class Scheduler(metaclass=_Frozen):"))
        os.makedirs(os.path.join(self.tree, "vllm", "v1", "engine"))
        open(os.path.join(self.tree, "vllm", "v1", "engine", "__init__.py"), "w").close()
        with open(os.path.join(self.tree, "vllm", "v1", "engine", "core.py"), "w") as f:
            f.write("import triton_kernels_not_here  # a dependency missing on this host\n")
        r = h.run(["-m", "profilemate", "doctor", "--json"], [self.tree])
        self.assertEqual(r.returncode, 0, r.stderr)
        by = {t["target"]: t for t in json.loads(r.stdout)}
        self.assertEqual(by["scheduler"]["status"], "failed", by["scheduler"])
        self.assertIn("did not take", by["scheduler"]["reason"])
        self.assertEqual(by["engine_core"]["status"], "failed", by["engine_core"])
        self.assertIn("exists but failed to import", by["engine_core"]["reason"])
        self.assertIn("triton_kernels_not_here", by["engine_core"]["reason"])
        self.assertEqual(by["worker"]["status"], "absent", by["worker"])
        self.assertIn("not in this vLLM", by["worker"]["reason"])


# ------------------------------------------------------------------ 7. identity, headers, end states

class IdentityAndEnd(Base):
    def test_repeated_pid_gets_its_own_folder(self):
        """A folder of this pid already in the session (another PID namespace, a reused session):
        the process writes its own folder and never touches the other."""
        r = self.run_py("""
            import json, os
            import vllm.v1.core.sched.scheduler as m
            from profilemate import runtime
            other = os.path.join(os.environ["PROFILEMATE_OUTPUT_DIR"], "session_" + runtime.S.session,
                                 "api_server-0-%d" % os.getpid())
            os.makedirs(other)
            with open(os.path.join(other, "metadata.json"), "w") as f:
                json.dump({"instance": "someone-else"}, f)
            m.Scheduler().schedule()
        """, env={"PROFILEMATE_FLUSH_MS": "600000", "PROFILEMATE_SESSION": "20260101_000000_abcdef"})
        self.assertEqual(r.returncode, 0, r.stderr)
        _, procs = self.folders()
        self.assertEqual(len(procs), 2, procs)
        theirs = [p for p in procs if h.read_json(os.path.join(p, "metadata.json"))["instance"] == "someone-else"]
        ours = [p for p in procs if p not in theirs]
        self.assertEqual(len(theirs), 1)
        self.assertEqual(os.listdir(theirs[0]), ["metadata.json"])
        meta = h.read_json(os.path.join(ours[0], "metadata.json"))
        self.assertTrue(ours[0].endswith("-" + meta["instance"]), ours[0])
        self.assertEqual(len(meta["instance"]), 16)
        self.assertEqual(len(self.rows(ours[0])), 1)

    def test_empty_tables_have_headers_after_kill(self):
        p = self.popen("""
            import os, time
            import vllm.v1.core.sched.scheduler as m
            m.Scheduler().schedule()
            print("ready", flush=True)
            time.sleep(120)
        """, {"VLLM_ENABLE_PROFILING": "1", "PROFILEMATE_FLUSH_MS": "5"})
        self.assertEqual(p.stdout.readline().strip(), "ready")
        root = os.path.join(self.out, "pm")
        wait_for(lambda: glob.glob(os.path.join(root, "session_*", "*", "metadata.json")), what="the first flush")
        p.kill()
        p.communicate(timeout=60)
        _, procs = self.folders()
        for csv_path in glob.glob(os.path.join(procs[0], "*.csv")):
            with open(csv_path) as f:
                self.assertTrue(f.readline().startswith("session,host,pid,"), csv_path)

    def test_clean_end_state(self):
        r = self.run_py("import vllm.v1.core.sched.scheduler as m\nm.Scheduler().schedule()\n")
        self.assertEqual(r.returncode, 0, r.stderr)
        session, procs = self.folders()
        meta = h.read_json(os.path.join(procs[0], "metadata.json"))
        self.assertEqual((meta["end_state"], meta["end_signal"]), ("clean", ""))
        summary = h.read_json(os.path.join(session, "session.json"))
        self.assertEqual([p["end_state"] for p in summary["processes"].values()], ["clean"])


# ------------------------------------------------------------------ 8. finding the agent

SYSTEM_SOCKET = "/run/profilemate/agent.sock"


class AgentDiscovery(Base):
    """The root candidate comes first by design: where a system agent listens on this host (also
    one started by another test meanwhile), these cases cannot be told apart and are skipped."""
    CODE = "import vllm.v1.core.sched.scheduler as m\nm.Scheduler().schedule()\nm.Scheduler().schedule()\n"

    def setUp(self):
        super().setUp()
        self.no_system_agent()

    def no_system_agent(self, stderr=""):
        if os.path.exists(SYSTEM_SOCKET) or ("agent socket " + SYSTEM_SOCKET) in stderr:
            self.skipTest("an agent listens at %s on this host" % SYSTEM_SOCKET)

    def run_py(self, body, env=None, paths=None, timeout=120):
        r = super().run_py(body, env=env, paths=paths, timeout=timeout)
        self.no_system_agent(r.stderr)
        return r

    def env(self, **kw):
        # Installed shims: no socket named. The machine's own runtime folders are blanked so that
        # only the folders a test names (and its private TMPDIR) can be found, never a real agent.
        e = {"PROFILEMATE_SOCKET": "", "RUNTIME_DIRECTORY": "", "XDG_RUNTIME_DIR": ""}
        e.update(kw)
        return e

    def listen(self, folder, mode=0o700):
        os.makedirs(folder, exist_ok=True)
        os.chmod(folder, mode)
        lst = Listener(os.path.join(folder, "agent.sock"))
        self.addCleanup(lst.close)
        return lst

    def test_xdg_runtime_dir(self):
        xdg = os.path.join(self.out, "xdg")
        lst = self.listen(os.path.join(xdg, "profilemate"))
        r = self.run_py(self.CODE, env=self.env(XDG_RUNTIME_DIR=xdg))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Output directory: agent socket %s (XDG_RUNTIME_DIR)" % lst.path, r.stderr)
        wait_for(lambda: lst.of("bye"), 30, "the bye line")
        self.assertEqual(len(lst.of("hello")), 1)
        self.assertEqual(lst.seqs(), list(range(1, 7)))  # 3 rows a step
        self.assertEqual(lst.of("bye")[0]["end_state"], "clean")
        self.assertFalse(os.path.exists(os.path.join(self.out, "pm")))

    def test_per_user_temp_folder(self):
        lst = self.listen(os.path.join(self.tmp, "profilemate-%d" % os.getuid()))
        r = self.run_py(self.CODE, env=self.env())
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("(per-user temp folder)", r.stderr)
        wait_for(lambda: lst.of("bye"), 30, "the bye line")
        hello = lst.of("hello")[0]
        self.assertEqual(len(hello["instance"]), 16)
        self.assertEqual(hello["reconnects"], 0)

    def test_runtime_directory_before_xdg(self):
        rd = os.path.join(self.out, "rundir")
        xdg = os.path.join(self.out, "xdg")
        first = self.listen(rd, 0o755)
        second = self.listen(os.path.join(xdg, "profilemate"))
        r = self.run_py(self.CODE, env=self.env(RUNTIME_DIRECTORY=rd, XDG_RUNTIME_DIR=xdg))
        self.assertEqual(r.returncode, 0, r.stderr)
        wait_for(lambda: first.of("bye"), 30, "the bye line")
        self.assertEqual(second.lines, [])

    def test_session_name_the_agent_refuses(self):
        """issue 17: a PROFILEMATE_SESSION outside proto's name grammar is said in one line before
        any hello, and the process writes the standalone folder (which takes the name as is)."""
        lst = self.listen(os.path.join(self.out, "run"))
        r = self.run_py(self.CODE, env=self.env(PROFILEMATE_SOCKET=lst.path, PROFILEMATE_SESSION="bad session*"))
        self.assertEqual(r.returncode, 0, r.stderr)
        said = [line for line in r.stderr.splitlines() if "PROFILEMATE_SESSION" in line]
        self.assertEqual(len(said), 1, r.stderr)
        self.assertIn("not a valid session name", said[0])
        self.assertEqual(lst.lines, [])
        _, procs = self.folders()
        self.assertEqual(len(self.rows(procs[0])), 2)

    def test_loose_folder_refused(self):
        """issue 16: a socket in a folder others may write (or another user's) gets no hello."""
        lst = self.listen(os.path.join(self.tmp, "profilemate-%d" % os.getuid()), 0o777)
        r = self.run_py(self.CODE, env=self.env(PROFILEMATE_SOCKET=lst.path))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("other users may write", r.stderr)
        self.assertEqual(lst.lines, [])
        _, procs = self.folders()
        self.assertEqual(len(self.rows(procs[0])), 2)

    @unittest.skipUnless(os.getuid() == 0, "chown needs root")
    def test_foreign_owner_refused(self):
        folder = os.path.join(self.tmp, "profilemate-%d" % os.getuid())
        lst = self.listen(folder)
        os.chown(folder, 4242, 4242)
        r = self.run_py(self.CODE, env=self.env())
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(lst.lines, [])
        _, procs = self.folders()
        self.assertEqual(len(self.rows(procs[0])), 2)
        r = h.run(["-m", "profilemate", "doctor"], [self.tree], env=self.env(TMPDIR=self.tmp))
        self.assertIn("belongs to uid 4242", r.stdout)

    @unittest.skipUnless(os.getuid() == 0, "chown needs root")
    def test_service_user_folder_made_by_root(self):
        """systemd's RuntimeDirectory for an agent running as its own user: the folder belongs to
        that user, but only root could have made it (its parent is root's, 0755): trusted."""
        admin = os.path.join(self.out, "run")
        os.mkdir(admin, 0o755)
        folder = os.path.join(admin, "profilemate")
        lst = self.listen(folder, 0o755)
        os.chown(folder, 4242, 4242)
        os.chown(lst.path, 4242, 4242)
        r = self.run_py(self.CODE, env=self.env(RUNTIME_DIRECTORY=folder))
        self.assertEqual(r.returncode, 0, r.stderr)
        wait_for(lambda: lst.of("bye"), 30, "the bye line")
        # The same folder in a shared parent (sticky, writable by all) is refused.
        shared = os.path.join(self.tmp, "shared")
        lst2 = self.listen(shared, 0o755)
        os.chown(shared, 4242, 4242)
        os.chown(lst2.path, 4242, 4242)
        r = self.run_py(self.CODE, env=self.env(PROFILEMATE_SOCKET=lst2.path))
        self.assertIn("belongs to uid 4242", r.stderr)
        self.assertEqual(lst2.lines, [])


# ------------------------------------------------------------------ 9. the agent goes away

RESTART = """
    import os, time
    import vllm.v1.core.sched.scheduler as m
    gates = os.environ["GATES"]
    def wait(name):
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(gates, name)):
            if time.monotonic() > deadline:
                raise SystemExit("gate %s never opened" % name)
            time.sleep(0.01)
    s = m.Scheduler()
    for _ in range(5):
        s.schedule()
    wait("agent-down")
    for _ in range(5):
        s.schedule()
    open(os.path.join(gates, "recorded"), "w").close()
    wait("agent-back")
    for _ in range(5):
        s.schedule()
"""


class AgentRestart(Base):
    def start(self, buffer_mb="64", ack=False, freeze=False):
        self.sock_dir = os.path.join(self.out, "run")
        os.mkdir(self.sock_dir, 0o700)
        self.path = os.path.join(self.sock_dir, "agent.sock")
        self.gates = os.path.join(self.out, "gates")
        os.mkdir(self.gates)
        first = Listener(self.path, ack=ack)
        self.addCleanup(first.close)
        p = self.popen(RESTART, {"PROFILEMATE_SOCKET": self.path, "GATES": self.gates, "VLLM_ENABLE_PROFILING": "1",
                                 "PROFILEMATE_FLUSH_MS": "5", "PROFILEMATE_BUFFER_MB": buffer_mb})
        wait_for(lambda: len(first.seqs()) == 15, 60, "the first 5 steps (3 rows each) at the agent")
        if freeze:
            first.frozen = True
            open(os.path.join(self.gates, "agent-down"), "w").close()
            wait_for(lambda: first.lost == 15, 60, "5 steps sent to an agent that never reads them")
            return p, first
        first.close()
        open(os.path.join(self.gates, "agent-down"), "w").close()
        wait_for(lambda: os.path.exists(os.path.join(self.gates, "recorded")), 60, "5 steps without agent")
        return p, first

    def test_reconnect_replays_in_order(self):
        p, first = self.start()
        second = Listener(self.path)
        self.addCleanup(second.close)
        open(os.path.join(self.gates, "agent-back"), "w").close()
        _, err = p.communicate(timeout=120)
        self.assertEqual(p.returncode, 0, err)
        wait_for(lambda: second.of("bye"), 30, "the bye line")
        h1, h2 = first.of("hello")[0], second.of("hello")[0]
        self.assertEqual((h2["session"], h2["instance"], h2["pid"]), (h1["session"], h1["instance"], h1["pid"]))
        self.assertEqual(h2["reconnects"], 1)
        got = first.seqs() + second.seqs()
        self.assertEqual(sorted(set(got)), list(range(1, 46)), got)
        self.assertEqual(second.seqs(), sorted(second.seqs()))
        self.assertIn("is back", err)
        self.assertFalse(os.path.exists(os.path.join(self.out, "pm")), [x for x in os.walk(os.path.join(self.out, "pm"))])

    def test_unacknowledged_batches_are_replayed(self):
        """An agent that acknowledges batches and stops with lines unread: what it never
        acknowledged is sent again to the next agent, what it acknowledged is not."""
        p, first = self.start(ack=True, freeze=True)
        first.close()
        second = Listener(self.path, ack=True)
        self.addCleanup(second.close)
        open(os.path.join(self.gates, "agent-back"), "w").close()
        _, err = p.communicate(timeout=120)
        self.assertEqual(p.returncode, 0, err)
        wait_for(lambda: second.of("bye"), 30, "the bye line")
        self.assertEqual(first.seqs(), list(range(1, 16)))
        self.assertEqual(second.seqs(), list(range(16, 46)))

    def test_beyond_the_bound_spills_to_the_folder(self):
        p, first = self.start(buffer_mb="0")
        second = Listener(self.path)
        self.addCleanup(second.close)
        open(os.path.join(self.gates, "agent-back"), "w").close()
        _, err = p.communicate(timeout=120)
        self.assertEqual(p.returncode, 0, err)
        wait_for(lambda: second.of("bye"), 30, "the bye line")
        _, procs = self.folders()
        spilled = all_seqs(procs[0])
        got = first.seqs() + second.seqs() + spilled
        self.assertEqual(sorted(got), list(range(1, 46)), (first.seqs(), second.seqs(), spilled))
        self.assertTrue(spilled)

    def test_agent_gone_at_exit_finishes_in_the_folder(self):
        p, first = self.start()
        open(os.path.join(self.gates, "agent-back"), "w").close()  # it never comes back
        _, err = p.communicate(timeout=120)
        self.assertEqual(p.returncode, 0, err)
        _, procs = self.folders()
        spilled = all_seqs(procs[0])
        self.assertEqual(sorted(first.seqs() + spilled), list(range(1, 46)))
        meta = h.read_json(os.path.join(procs[0], "metadata.json"))
        self.assertEqual(meta["end_state"], "clean")
        self.assertIn("gone at exit", err)


if __name__ == "__main__":
    unittest.main()
