"""Activation table and lifecycle, each case in a fresh interpreter."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

from tests import helpers as h


class Activation(unittest.TestCase):
    def setUp(self):
        self.tree = h.fake_tree()
        self.out = tempfile.mkdtemp(prefix="pm-out-")
        self.script = os.path.join(self.out, "my_script.py")
        with open(self.script, "w") as f:
            f.write("import sys\nprint('hello', 'profilemate.runtime' in sys.modules)\n")

    def tearDown(self):
        shutil.rmtree(self.tree, ignore_errors=True)
        shutil.rmtree(self.out, ignore_errors=True)

    def test_plain_script_not_active(self):
        r = h.run([self.script], [self.tree], out_dir=self.out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), "hello False")
        self.assertEqual(r.stderr, "")
        self.assertEqual(h.sessions(self.out), [])

    def test_plain_process_loads_the_smallest_module_set(self):
        # Start-up cost (docs/BENCHMARKS.md): a process that never imports vLLM loads two small
        # modules of the shim and no module a plain interpreter would not load.
        code = "import sys; print(' '.join(sorted(sys.modules)))"
        with_shim = h.run(["-c", code], [self.tree], out_dir=self.out)
        plain = h.run(["-c", code], [self.tree], out_dir=self.out, shim=False)
        self.assertEqual((with_shim.returncode, plain.returncode), (0, 0), with_shim.stderr + plain.stderr)
        added = set(with_shim.stdout.split()) - set(plain.stdout.split())
        self.assertEqual(added, {"sitecustomize", "profilemate"})
        self.assertEqual(with_shim.stderr, "")

    def test_explicit_enable_starts_at_once(self):
        r = h.run([self.script], [self.tree], out_dir=self.out, env={"VLLM_ENABLE_PROFILING": "1"})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("hello True", r.stdout)
        self.assertIn("[sitecustomize] vLLM Comprehensive Instrumentation Loaded", r.stderr)
        self.assertIn("Session ID: ", r.stderr)
        self.assertIn("Output directory: %s" % self.out, r.stderr)
        self.assertEqual(len(h.sessions(self.out)), 1)
        procs = h.proc_dirs(h.sessions(self.out)[0])
        self.assertEqual(len(procs), 1)
        meta = h.read_json(os.path.join(procs[0], "metadata.json"))
        self.assertEqual(sorted(os.listdir(procs[0])).count("metadata.json"), 1)
        self.assertEqual(len([f for f in os.listdir(procs[0]) if f.endswith(".csv")]), 11)
        self.assertTrue(meta["end_ns"] >= meta["start_ns"] > 0)
        self.assertTrue(os.path.exists(os.path.join(h.sessions(self.out)[0], "session.json")))

    def test_api_server_module_active(self):
        r = h.run(["-m", "vllm.entrypoints.openai.api_server", "--model", "X"], [self.tree], out_dir=self.out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("served ['--model', 'X']", r.stdout)
        self.assertIn("Successfully patched Scheduler", r.stderr)
        self.assertEqual(len(h.sessions(self.out)), 1)

    def test_switch_off_everywhere(self):
        code = textwrap.dedent("""
            import subprocess, sys
            import vllm.v1.core.sched.scheduler
            r = subprocess.run([sys.executable, "-c", "import vllm.v1.core.sched.scheduler as s; import sys;"
                                " print('child', 'profilemate.runtime' in sys.modules)"])
            print('parent', 'profilemate.runtime' in sys.modules)
        """)
        r = h.run(["-c", code], [self.tree], out_dir=self.out, env={"VLLM_ENABLE_PROFILING": "0"})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("child False", r.stdout)
        self.assertIn("parent False", r.stdout)
        self.assertEqual(r.stderr, "")
        self.assertEqual(h.sessions(self.out), [])

    def test_armed_child_one_session_and_silent_helper(self):
        code = textwrap.dedent("""
            import os, subprocess, sys
            import vllm.v1.core.sched.scheduler
            helper = subprocess.run([sys.executable, "-c", "import vllm, sys; print('helper', 'profilemate.runtime' in sys.modules)"],
                                    capture_output=True, text=True)
            print(helper.stdout.strip(), "helper-stderr=%r" % helper.stderr)
            child = subprocess.run([sys.executable, "-c", "import os, vllm.v1.core.sched.scheduler; print('child', os.environ['PROFILEMATE_SESSION'])"],
                                   capture_output=True, text=True)
            print(child.stdout.strip())
            print("parent", os.environ["PROFILEMATE_SESSION"], os.environ["PROFILEMATE_ARMED"])
        """)
        r = h.run(["-c", code], [self.tree], out_dir=self.out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("helper False helper-stderr=''", r.stdout)
        lines = dict(l.split(" ", 1) for l in r.stdout.splitlines() if l.startswith(("child", "parent")))
        self.assertEqual(lines["child"], lines["parent"].split()[0])
        sessions = h.sessions(self.out)
        self.assertEqual(len(sessions), 1)
        self.assertEqual(len(h.proc_dirs(sessions[0])), 2)  # parent and child; the helper left nothing
        self.assertEqual(r.stderr.count("Session ID:"), 1)

    def test_explicit_enable_skips_helpers_that_are_not_vllm(self):
        # VLLM_ENABLE_PROFILING=1 reaches every Python process of the tree, among them Python's
        # resource tracker (started by a spawn-context queue, as vLLM's are) and Ray's own
        # processes: they are not vLLM's and leave nothing, while a spawned child still profiles.
        code = textwrap.dedent("""
            import multiprocessing, os, sys
            def child(q):
                q.put(os.getpid())
            if __name__ == "__main__":
                ctx = multiprocessing.get_context("spawn")
                q = ctx.Queue()
                p = ctx.Process(target=child, args=(q,))
                p.start()
                print("child", q.get(timeout=60))
                p.join()
        """)
        script = os.path.join(self.out, "spawner.py")
        with open(script, "w") as f:
            f.write(code)
        ray = os.path.join(self.out, "bin", "ray")
        os.makedirs(os.path.dirname(ray))
        with open(ray, "w") as f:
            f.write("import sys\nprint('ray', 'profilemate.runtime' in sys.modules)\n")
        env = {"VLLM_ENABLE_PROFILING": "1"}
        r = h.run([script], [self.tree], out_dir=self.out, env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        sessions = h.sessions(self.out)
        self.assertEqual(len(sessions), 1)
        names = [os.path.basename(p) for p in h.proc_dirs(sessions[0])]
        self.assertEqual(len(names), 2, names)  # the script and its spawned child, no resource tracker
        r = h.run([ray, "start", "--block"], [self.tree], out_dir=self.out, env=env)
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "ray False"), r.stderr)
        self.assertEqual(len(h.sessions(self.out)), 1)

    def test_helper_names(self):
        import profilemate
        cases = [(["python3", "-c", "from multiprocessing.resource_tracker import main;main(5)"], "Python's multiprocessing helper"),
                 (["python3", "-c", "from multiprocessing.forkserver import main; main(1, 2)"], "Python's multiprocessing helper"),
                 (["python3", "-c", "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5)", "--multiprocessing-fork"], ""),
                 (["python3", "/venv/bin/ray", "start", "--address", "h:6379", "--block"], "a Ray process"),
                 (["python3", "-u", "/venv/lib/python3.11/site-packages/ray/_private/log_monitor.py"], "a Ray process"),
                 (["python3", "/venv/bin/vllm", "serve", "m", "--headless"], ""),
                 (["python3", "-m", "vllm.entrypoints.openai.api_server"], "")]
        for argv, want in cases:
            self.assertEqual(profilemate.helper(argv), want, argv)

    def test_sigterm_flush_with_handler_installed_later(self):
        code = textwrap.dedent("""
            import os, signal, sys, time
            from profilemate import runtime
            for i in range(5):
                runtime.record("cpu_timing", "cpu_operations_timing", {"operation": "op%d" % i, "cpu_ms": 1.0})
            def handler(signum, frame):
                open(os.path.join(os.environ["PROFILEMATE_OUTPUT_DIR"], "handler-ran"), "w").close()
                sys.exit(0)
            signal.signal(signal.SIGTERM, handler)
            print("ready", flush=True)
            time.sleep(120)
        """)
        env = dict(os.environ)
        env = {k: v for k, v in env.items() if not k.startswith(("PROFILEMATE_", "VLLM_"))}
        env.update({"PYTHONPATH": os.pathsep.join([h.SHIM, self.tree]), "PROFILEMATE_OUTPUT_DIR": self.out,
                    "PROFILEMATE_SOCKET": "off",
                    "VLLM_ENABLE_PROFILING": "1", "PROFILEMATE_FLUSH_MS": "600000"})
        p = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.assertEqual(p.stdout.readline().strip(), "ready")
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=60)
        self.assertTrue(os.path.exists(os.path.join(self.out, "handler-ran")))
        proc = h.proc_dirs(h.sessions(self.out)[0])[0]
        rows = h.csv_rows(os.path.join(proc, "cpu_operations_timing.csv"))
        self.assertEqual([r["operation"] for r in rows], ["op%d" % i for i in range(5)])
        self.assertEqual([r["seq"] for r in rows], [str(i) for i in range(1, 6)])

    def test_fork_child_resets(self):
        code = textwrap.dedent("""
            import multiprocessing, os
            from profilemate import runtime
            runtime.record("cpu_timing", "cpu_operations_timing", {"operation": "parent", "cpu_ms": 1.0})
            def child():
                runtime.record("cpu_timing", "cpu_operations_timing", {"operation": "child", "cpu_ms": 2.0})
            p = multiprocessing.get_context("fork").Process(target=child)
            p.start(); p.join()
            print("child pid", p.pid)
        """)
        r = h.run(["-c", code], [self.tree], out_dir=self.out, env={"VLLM_ENABLE_PROFILING": "1"})
        self.assertEqual(r.returncode, 0, r.stderr)
        procs = h.proc_dirs(h.sessions(self.out)[0])
        self.assertEqual(len(procs), 2, procs)
        by_op = {}
        for d in procs:
            for row in h.csv_rows(os.path.join(d, "cpu_operations_timing.csv")):
                by_op[row["operation"]] = (row["seq"], row["pid"], os.path.basename(d))
        self.assertEqual(by_op["parent"][0], "1")
        self.assertEqual(by_op["child"][0], "1")  # new buffer and sequence in the child
        self.assertNotEqual(by_op["parent"][1], by_op["child"][1])
        self.assertNotEqual(by_op["parent"][2], by_op["child"][2])


if __name__ == "__main__":
    unittest.main()
