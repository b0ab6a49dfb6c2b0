"""The spawn tree against the vLLM-shaped test tree: `vllm serve` with 1 API server,
1 EngineCore and 4 workers; the per-process statuses, combined, must equal
expected/<era>.json (derived from targets.json by derive_expected.py). Also doctor --json."""
import json
import os
import shutil
import subprocess
import tempfile
import unittest

from tests import helpers as h

ERAS = ("v0_7_3", "v0_10_2", "v0_16_0", "main_2026_08_20")


def era_path(era):
    return os.path.join(h.TESTBED, "eras", era)


@unittest.skipUnless(os.path.isdir(os.path.join(h.TESTBED, "pmsim")), "testbed not present")
class SpawnTree(unittest.TestCase):
    def run_era(self, era):
        out = tempfile.mkdtemp(prefix="pm-tree-")
        self.addCleanup(shutil.rmtree, out, True)
        env = {"PMSIM_REQUESTS": "4", "PMSIM_TP": "4", "PMSIM_STEP_WORK_MS": "1"}
        try:
            r = h.run([os.path.join(h.TESTBED, "bin", "vllm"), "serve", "sim/moe-tiny"],
                      [era_path(era), h.TESTBED], env=env, out_dir=out, timeout=120)
        except subprocess.TimeoutExpired:
            self.fail("era %s: the simulated `vllm serve` did not finish within 120 s (testbed hang?)" % era)
        self.assertEqual(r.returncode, 0, "era %s failed:\n%s" % (era, r.stderr[-3000:]))
        sessions = h.sessions(out)
        self.assertEqual(len(sessions), 1, sessions)
        return r, sessions[0]

    def check_era(self, era):
        r, session = self.run_era(era)
        summary = h.read_json(os.path.join(session, "session.json"))
        roles = sorted(p["ident"]["role"] for p in summary["processes"].values())
        self.assertEqual(roles, ["api_server", "engine_core"] + ["worker"] * 4)
        combined = set()
        for folder in h.proc_dirs(session):
            meta = h.read_json(os.path.join(folder, "metadata.json"))
            combined |= {t["target"] for t in meta["targets"] if t["status"] == "patched"}
        expected = h.read_json(os.path.join(h.HERE, "expected", era + ".json"))["patched"]
        self.assertEqual(sorted(combined), expected)
        self.assertEqual(summary["patched"], expected)
        ranks = sorted(p["ident"]["rank"] for p in summary["processes"].values() if p["ident"]["role"] == "worker")
        self.assertEqual(ranks, [0, 1, 2, 3])
        self.assertEqual(r.stderr.count("Session ID:"), 1)
        # Workers count real model-runner steps from 1, EngineCore real scheduler steps.
        for folder in h.proc_dirs(session):
            if os.path.basename(folder).startswith("worker-"):
                steps = [int(x["step"]) for x in h.csv_rows(os.path.join(folder, "forward_pass_timing.csv"))]
                self.assertTrue(steps, folder)
                self.assertEqual(steps, list(range(1, len(steps) + 1)))

    def check_doctor(self, era):
        r = h.run(["-m", "profilemate", "doctor", "--json"], [era_path(era), h.TESTBED])
        self.assertEqual(r.returncode, 0, r.stderr)
        report = json.loads(r.stdout)
        self.assertEqual(len(report), 8)
        failed = [t for t in report if t["status"] == "failed"]
        self.assertEqual(failed, [])
        expected = h.read_json(os.path.join(h.HERE, "expected", era + ".json"))["patched"]
        self.assertEqual(sorted(t["target"] for t in report if t["status"] == "patched"), expected)


def _add(era):
    setattr(SpawnTree, "test_tree_" + era, lambda self: self.check_era(era))
    setattr(SpawnTree, "test_doctor_" + era, lambda self: self.check_doctor(era))


for _era in ERAS:
    _add(_era)

if __name__ == "__main__":
    unittest.main()
