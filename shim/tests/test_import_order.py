"""Import-order matrix, each case in a fresh interpreter running the real shim."""
import os
import shutil
import tempfile
import textwrap
import unittest

from tests import helpers as h

MOD = "vllm.v1.core.sched.scheduler"


class ImportOrder(unittest.TestCase):
    def setUp(self):
        self.tree = h.fake_tree()
        self.out = tempfile.mkdtemp(prefix="pm-out-")

    def tearDown(self):
        shutil.rmtree(self.tree, ignore_errors=True)
        shutil.rmtree(self.out, ignore_errors=True)

    def py(self, code, shim=True, env=None, tree=None):
        return h.run(["-c", textwrap.dedent(code)], [h.SHIM, tree or self.tree], out_dir=self.out, shim=shim, env=env)

    def test_patch_then_import(self):
        r = self.py("""
            from profilemate import patching, runtime
            import vllm.v1.core.sched.scheduler as s
            print("wrapped", patching.is_wrapped(s.Scheduler, "schedule"))
            print("result", s.Scheduler().schedule().total_num_scheduled_tokens)
            print("status", [t["status"] for t in runtime.statuses() if t["target"] == "scheduler"])
        """)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("wrapped True", r.stdout)
        self.assertIn("result 4", r.stdout)
        self.assertIn("status ['patched']", r.stdout)
        self.assertIn("Successfully patched Scheduler", r.stderr)

    def test_import_then_patch(self):
        # No sitecustomize: vLLM is imported first, the shim arrives later (the .pth/plugin roads).
        # shim=False leaves the shim off PYTHONPATH; add it back as a plain import path. Both .pth
        # lines: pmagent install's, and the one older installs wrote.
        for line in ('import profilemate; profilemate.activate("pth")',
                     'import profilemate.bootstrap as b; b.bootstrap("pth")'):
            with self.subTest(pth=line):
                r = h.run(["-c", textwrap.dedent("""
                    import sys; sys.path.insert(0, %r)
                    import vllm.v1.core.sched.scheduler as s
                    from profilemate import patching
                    before = patching.is_wrapped(s.Scheduler, "schedule")
                    %s
                    print("before", before, "after", patching.is_wrapped(s.Scheduler, "schedule"))
                """ % (h.SHIM, line))], [self.tree], out_dir=self.out, shim=False)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertIn("before False after True", r.stdout)

    def test_patch_twice(self):
        r = self.py("""
            import vllm.v1.core.sched.scheduler as s
            import profilemate.bootstrap as b
            from profilemate import patching, runtime
            b.bootstrap("pth"); b.bootstrap("vllm_plugin")
            runtime.module_loaded(%r, s)
            inner = s.Scheduler.schedule.__profilemate_original__
            print("single", not hasattr(inner, "__profilemate_original__"))
            try:
                patching.wrap(s.Scheduler, "schedule", lambda f: f)
            except patching.PatchError as e:
                print("refused", e)
            print("lines", 1)
        """ % MOD)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("single True", r.stdout)
        self.assertIn("refused", r.stdout)
        self.assertEqual(r.stderr.count("Successfully patched Scheduler"), 1, r.stderr)

    def test_changed_signature_keeps_original(self):
        tree = h.fake_tree(update_params="other_arg")
        try:
            r = self.py("""
                import vllm.v1.core.sched.scheduler as s
                from profilemate import runtime
                print("kept", not hasattr(s.Scheduler.update_from_output, "__profilemate_original__"))
                print("call", s.Scheduler().update_from_output(1))
                st = [t for t in runtime.statuses() if t["target"] == "scheduler"][0]
                print("status", st["status"], st["reason"])
            """, tree=tree)
        finally:
            shutil.rmtree(tree, ignore_errors=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("kept True", r.stdout)
        self.assertIn("call original", r.stdout)
        self.assertIn("status failed", r.stdout)
        self.assertIn("lacks parameter(s) scheduler_output", r.stdout)
        self.assertIn("Failed to patch Scheduler", r.stderr)

    def test_patch_raises_import_succeeds(self):
        r = self.py("""
            from profilemate.targets import scheduler
            def boom(original, rt):
                raise RuntimeError("boom")
            scheduler.TARGET.paths[0].hooks[0].factory = boom
            import vllm.v1.core.sched.scheduler as s
            from profilemate import runtime
            print("imported", s.Scheduler().schedule().total_num_scheduled_tokens)
            print("status", [t["status"] for t in runtime.statuses() if t["target"] == "scheduler"])
        """)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("imported 4", r.stdout)
        self.assertIn("status ['failed']", r.stdout)

    def test_hook_callback_raises_import_succeeds(self):
        r = self.py("""
            import sys
            from profilemate import bootstrap
            f = bootstrap.VllmFinder(lambda: None, lambda n, m: 1 / 0, lambda: {%r})
            sys.meta_path.insert(0, f)
            f._see_vllm()
            import vllm.v1.core.sched.scheduler as s
            print("ok", s.Scheduler().schedule().total_num_scheduled_tokens)
        """ % MOD, env={"VLLM_ENABLE_PROFILING": "0"})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("ok 4", r.stdout)
        self.assertIn("raised ZeroDivisionError", r.stderr)

    def test_python_dash_m_target(self):
        r = h.run(["-m", MOD], [self.tree], out_dir=self.out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("main ran: 4", r.stdout)

    def test_other_sitecustomize_chained(self):
        other = tempfile.mkdtemp(prefix="pm-other-")
        try:
            with open(os.path.join(other, "sitecustomize.py"), "w") as f:
                f.write("import sys\nsys.stderr.write('chained site ran as %s\\n' % __name__)\n")
            r = h.run(["-c", "import sys; print('main', 'sitecustomize' in sys.modules)"], [other], out_dir=self.out)
        finally:
            shutil.rmtree(other, ignore_errors=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("chained site ran as sitecustomize", r.stderr)
        self.assertIn("main True", r.stdout)

    def test_unwrap_restores_exactly(self):
        r = self.py("""
            from profilemate import patching
            class A:
                @staticmethod
                def s(x): return x
                @classmethod
                def c(cls, x): return x
                @property
                def p(self): return 7
                def m(self, x): return x
            raw = dict(vars(A))
            hs = [patching.wrap(A, n, lambda f: (lambda *a, **k: f(*a, **k))) for n in ("s", "c", "p", "m")]
            print("kinds", type(vars(A)["s"]).__name__, type(vars(A)["c"]).__name__, type(vars(A)["p"]).__name__)
            print("calls", A.s(1), A.c(2), A().p, A().m(3))
            for hd in hs: patching.unwrap(hd)
            print("same", all(vars(A)[n] is raw[n] for n in ("s", "c", "p", "m")))
        """)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("kinds staticmethod classmethod property", r.stdout)
        self.assertIn("calls 1 2 7 3", r.stdout)
        self.assertIn("same True", r.stdout)


if __name__ == "__main__":
    unittest.main()
