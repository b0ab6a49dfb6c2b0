"""Every parallel layout against the simulator's ground truth, process by process.

The matrix: every era at TP=1 (test_enginecore_profilers, test_worker_profilers) plus every
layout at one era here — main_2026_08_20 (V2 runner, evict_blocks, prefix statistics at
admission) at TP=3, TP=2 x PP=2, DP=2 (two EngineCores, the runner inside each) and DP=2 x TP=2
(two EngineCores with two workers each), and v0_11_0
(V1 runner, FULL CUDAGraphWrapper, prefix statistics per lookup) at TP=2 x PP=2. Each EngineCore's
rows must equal its own ground truth (the same comparison as the TP=1 suite) and so must every
worker's; each process's group ranks (metadata.json ident and every row's dp/pp/tp/ep) must be
the ones vLLM gives it: global rank = dp * tp * pp + rank, tp = rank % tp, pp = rank // tp,
ep = dp * tp + tp rank.
"""
import os
import unittest

from tests import helpers as h
from tests import test_enginecore_profilers as eng
from tests import test_worker_profilers as wrk

TABLES = eng.TABLES + ("cuda_graph_usage", "cuda_graph_captures", "moe_expert_selection", "encoder_decoder_timing",
                       "forward_pass_timing", "moe_expert_timing")


def rank_diffs(p):
    """Differences between the ranks the shim wrote for process p and its ground truth."""
    t, diffs = p.truth, []
    if "global_rank" in t:  # a worker, or an EngineCore with the runner inside
        want = {"dp": t["dp_rank"], "pp": t["pp_rank"], "tp": t["tp_rank"], "ep": t["ep_rank"]}
        if t["role"] == "worker":
            want["rank"] = t["global_rank"]
    else:  # an EngineCore of a multi-worker engine: only its data-parallel rank
        want = {"dp": t["dp_rank"], "pp": -1, "tp": -1, "ep": -1}
    got = {k: p.meta["ident"][k] for k in want}
    if got != want:
        diffs.append("%s: ident %s != %s" % (p.folder, got, want))
    exp = {tuple(str(want[k]) for k in ("dp", "pp", "tp", "ep"))}
    for name, rows in p.tables.items():
        cols = {(r["dp"], r["pp"], r["tp"], r["ep"]) for r in rows}
        if rows and cols != exp:
            diffs.append("%s %s: rank columns %s != %s" % (p.folder, name, sorted(cols), exp))
    return diffs


@unittest.skipUnless(os.path.isdir(os.path.join(h.TESTBED, "pmsim")), "testbed not present")
class Layouts(unittest.TestCase):
    def check(self, era, layout, engines, workers):
        env = {"PMSIM_STEP_WORK_MS": "0", "PMSIM_TP": "1", "PMSIM_PP": "1", "PMSIM_DP": "1",
               "PROFILEMATE_MOE_INTERVAL_STEPS": "7"}
        env.update(layout)
        procs = h.run_tree(self, era, env, TABLES)
        e = [p for p in procs if p.truth["role"] == "engine_core"]
        w = [p for p in procs if p.truth["role"] == "worker"]
        self.assertEqual((len(e), len(w)), (engines, workers), [p.folder for p in procs])
        for p in procs:
            with self.subTest(proc=os.path.basename(p.folder)):
                self.assertEqual(rank_diffs(p), [])
                # Per table: rows recorded, or why not (a worker holds no scheduler, an engine no runner).
                status = {t["table"]: t["status"] for t in p.meta["tables"]}
                for name, rows in p.tables.items():
                    self.assertEqual(status[name] == "recorded", bool(rows), (name, status[name]))
                if p.truth["role"] == "worker":
                    self.assertEqual(status["batch_utilization"], "not in this process")
                if "scheduler_steps" in p.truth:
                    self.assertEqual(eng.compare(p.truth, p.tables), [])
                if "runner_steps" in p.truth:
                    self.assertEqual(wrk.compare(era, p.truth, p.tables), [])
        return procs

    def test_tp3(self):
        procs = self.check("main_2026_08_20", {"PMSIM_TP": "3"}, 1, 3)
        self.assertEqual(sorted(p.meta["ident"]["tp"] for p in procs if p.truth["role"] == "worker"), [0, 1, 2])

    def test_tp2_pp2(self):
        for era in ("main_2026_08_20", "v0_11_0"):
            with self.subTest(era=era):
                procs = self.check(era, {"PMSIM_TP": "2", "PMSIM_PP": "2"}, 1, 4)
                got = sorted((p.meta["ident"]["pp"], p.meta["ident"]["tp"]) for p in procs
                             if p.truth["role"] == "worker")
                self.assertEqual(got, [(0, 0), (0, 1), (1, 0), (1, 1)])

    def test_dp2(self):
        # Two engines, the runner inside each (TP=1): each engine's ranks are its DP rank's.
        procs = self.check("main_2026_08_20", {"PMSIM_DP": "2"}, 2, 0)
        self.assertEqual(sorted(p.meta["ident"]["dp"] for p in procs), [0, 1])
        self.assertEqual(sorted(p.meta["ident"]["ep"] for p in procs), [0, 1])

    def test_dp2_tp2(self):
        # Two engines with two workers each: Worker.__init__'s rank is engine-local (0, 1 in both), the
        # global rank adds dp * tp * pp, and EP spans DP x TP.
        procs = self.check("main_2026_08_20", {"PMSIM_DP": "2", "PMSIM_TP": "2", "PMSIM_REQUESTS": "12"}, 2, 4)
        got = sorted((p.meta["ident"]["dp"], p.meta["ident"]["tp"], p.meta["ident"]["rank"], p.meta["ident"]["ep"])
                     for p in procs if p.truth["role"] == "worker")
        self.assertEqual(got, [(0, 0, 0, 0), (0, 1, 1, 1), (1, 0, 2, 2), (1, 1, 3, 3)])


if __name__ == "__main__":
    unittest.main()
