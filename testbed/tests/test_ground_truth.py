"""Every entry point runs the spawn tree to the end and writes consistent ground truth; failures exit non-zero.

Runs the serve entry point on every era and all three entry points on one era, with 4 workers and
PMSIM_STEP_WORK_MS=0 (the fast workload).
"""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import simrun  # noqa: E402

SPAWN_ARGV = ["-c", "--multiprocessing-fork"]
TP = 4


class GroundTruthTest(unittest.TestCase):
    def check_run(self, r, tp=TP):
        self.assertEqual(r.rc, 0, r.output)
        self.assertIsNotNone(r.truth, "no ground truth written:\n" + r.output)
        engines, workers = r.processes("engine_core"), r.processes("worker")
        self.assertEqual(len(engines), 1)
        self.assertEqual(sorted(w["rank"] for w in workers), list(range(tp)))
        eng, tot = engines[0], r.truth["totals"]
        api = r.processes("api_server")[0]
        self.assertGreater(api["requests"], 0)
        self.assertEqual(api["completed"], api["requests"])
        self.assertEqual(eng["finished"], api["requests"])

        # Every rank ran every step the scheduler produced.
        self.assertGreater(eng["scheduler_steps"], 0)
        self.assertEqual(tot["scheduler_steps"], eng["scheduler_steps"])
        self.assertEqual(set(tot["runner_steps_by_rank"].values()), {eng["scheduler_steps"]})
        self.assertEqual(len(eng["step_ms"]), eng["scheduler_steps"])

        # The default workload exercises the KV pool's hard paths.
        self.assertGreater(tot["preemptions"], 0)
        self.assertGreater(tot["evictions"], 0)
        self.assertGreater(tot["alloc_failures"], 0)
        for p in eng["preemptions"]:
            self.assertGreaterEqual(p["tokens_lost"], 0)
            self.assertLess(p["step"], eng["scheduler_steps"] + 1)

        first = workers[0]
        for w in workers:
            with self.subTest(rank=w["rank"]):
                steps = w["runner_steps"]
                self.assertEqual(sum(w["steps_by_mode"].values()), steps)
                self.assertEqual(len(w["tokens_by_step"]), steps)
                self.assertEqual(len(w["runner_step_ms"]), steps)
                self.assertGreater(len(w["captures"]), 0)
                self.assertGreater(w["encoder_calls"], 0)
                self.assertGreater(w["encoder_items"], 0)
                # Real tokens: what the scheduler scheduled; routed tokens: the padded batch a graph runs on.
                real = sum(t[0] for t in w["tokens_by_step"])
                padded = sum(t[1] for t in w["tokens_by_step"])
                self.assertEqual(w["real_tokens"], real)
                self.assertEqual(w["routed_tokens"], padded)
                self.assertEqual(real, eng["scheduled_tokens"])
                self.assertGreaterEqual(padded, real)
                for n, pad, mode in w["tokens_by_step"]:
                    if mode == "NONE":
                        self.assertEqual(pad, n)
                k, layers = w["top_k"], w["moe_layers"]
                self.assertEqual(len(w["expert_counts"]), layers)
                # Each routed row picks top_k experts in every MoE layer, padding rows included.
                for j in range(layers):
                    self.assertEqual(sum(w["expert_counts"][j]), padded * k)
                    self.assertEqual(sum(w["expert_counts_real"][j]), real * k)
                self.assertEqual(sum(map(sum, w["expert_counts"])), padded * k * layers)
                self.assertEqual(sum(map(sum, w["expert_counts_real"])), real * k * layers)
                # Per step: one [[layer, expert, count], ...] per runner step (padded rows), adding up
                # to the totals; step s (1-based, as the shim numbers them) is entry s - 1.
                self.assertEqual(len(w["expert_counts_by_step"]), steps)
                summed = [[0] * len(c) for c in w["expert_counts"]]
                for step, (n, pad, mode) in zip(w["expert_counts_by_step"], w["tokens_by_step"]):
                    self.assertEqual(sum(c for _, _, c in step), pad * k * len(w.get("own_layers", range(layers))))
                    for j, ex, c in step:
                        summed[j][ex] += c
                self.assertEqual(summed, w["expert_counts"])
                # Tensor parallel ranks route the same tokens.
                self.assertEqual(w["expert_counts"], first["expert_counts"])
                self.assertEqual(w["steps_by_mode"], first["steps_by_mode"])

        # Children of the spawn tree saw spawn's argv when sitecustomize ran.
        by_pid = {rec["pid"]: rec for rec in r.argv_records}
        for p in engines + workers:
            self.assertIn(p["pid"], by_pid, "no sitecustomize record for %s %s" % (p["role"], p["rank"]))
            self.assertEqual(by_pid[p["pid"]]["argv"], SPAWN_ARGV)
        self.assertEqual(by_pid[eng["pid"]]["ppid"], api["pid"])
        for w in workers:
            self.assertEqual(by_pid[w["pid"]]["ppid"], eng["pid"])
        self.assertNotEqual(by_pid[api["pid"]]["argv"], SPAWN_ARGV)
        self.assert_no_children_left(r)

    def assert_no_children_left(self, r):
        left = [rec for rec in r.argv_records if rec["argv"][-1:] == ["--multiprocessing-fork"]
                and simrun.alive(rec["pid"])]
        self.assertEqual(left, [], "processes outlived the run")

    def test_serve_every_era(self):
        for era in simrun.ERAS:
            with self.subTest(era=era), simrun.tempdir() as tmp:
                r = simrun.run(era, "serve", tmp)
                self.check_run(r)
                v2 = {w["v2_runner"] for w in r.processes("worker")}
                self.assertEqual(v2, {era == "main_2026_08_20"})

    def test_api_server_and_offline(self):
        for entry in ("api_server", "offline"):
            with self.subTest(entry=entry), simrun.tempdir() as tmp:
                r = simrun.run("v0_16_0", entry, tmp)
                self.check_run(r)

    def test_one_worker_runs_inside_engine_core(self):
        with simrun.tempdir() as tmp:
            r = simrun.run("v0_10_2", "serve", tmp, PMSIM_TP=1)
            self.assertEqual(r.rc, 0, r.output)
            self.assertEqual([p["role"] for p in r.truth["processes"] if p["role"] == "worker"], [])
            eng = r.processes("engine_core")[0]
            self.assertEqual(eng["runner_steps"], eng["scheduler_steps"])
            self.assertEqual(sum(map(sum, eng["expert_counts"])),
                             eng["routed_tokens"] * eng["top_k"] * eng["moe_layers"])

    def test_tp_follows_the_command_line_as_vllm(self):
        # vLLM's -tp defaults to 1: `vllm serve M --data-parallel-size 2` (no -tp, no PMSIM_TP) runs two
        # EngineCores with the runner inside, no worker processes; -tp 2 gives each two workers.
        for flags, workers in ((["--data-parallel-size", "2"], 0), (["--data-parallel-size", "2", "-tp", "2"], 4)):
            with self.subTest(flags=flags), simrun.tempdir() as tmp:
                r = simrun.run("v0_16_0", "serve", tmp, flags=flags, PMSIM_TP="")
                self.assertEqual(r.rc, 0, r.output)
                self.assertEqual(len(r.processes("engine_core")), 2)
                self.assertEqual(len(r.processes("worker")), workers)

    def test_failures_end_the_tree_non_zero(self):
        # A raise or an exit is an event the tree reacts to at once: those runs keep the default RPC
        # deadline, so a slow but healthy reply on a busy machine cannot be taken for the failure.
        # Only the hang needs a deadline to be noticed; it is short, and a healthy reply that
        # misses it still ends the tree the same way (no reply to the same call).
        cases = [("raise:2:3", "worker 2 failed in execute_model", {}),
                 ("exit:1:2", "VllmWorker-1 exited with code 3", {}),
                 ("hang:3:1", "no reply to execute_model", {"PMSIM_RPC_TIMEOUT_S": 2}),
                 ("raise:-1:2", "EngineCore failed", {})]
        for spec, message, extra in cases:
            with self.subTest(fail=spec), simrun.tempdir() as tmp:
                r = simrun.run("v0_16_0", "serve", tmp, PMSIM_FAIL=spec, **extra)
                self.assertNotEqual(r.rc, 0, r.output)
                self.assertIn(message, r.output)
                self.assert_no_children_left(r)
                self.assertIsNotNone(r.truth, "ground truth is merged even when the run fails")


class LayoutTest(unittest.TestCase):
    def test_tp2_pp2_ranks_and_stages(self):
        with simrun.tempdir() as tmp:
            r = simrun.run("v0_16_0", "serve", tmp, PMSIM_TP=2, PMSIM_PP=2)
            self.assertEqual(r.rc, 0, r.output)
            workers = sorted(r.processes("worker"), key=lambda w: w["global_rank"])
            # vLLM's [dp][pp][tp] layout: engine-local rank = pp * tp + tp rank.
            self.assertEqual([(w["global_rank"], w["pp_rank"], w["tp_rank"], w["ep_rank"]) for w in workers],
                             [(0, 0, 0, 0), (1, 0, 1, 1), (2, 1, 0, 0), (3, 1, 1, 1)])
            # The stages split the MoE layers between them; TP peers route the same tokens.
            stage = {w["pp_rank"]: w["own_layers"] for w in workers}
            self.assertEqual(sorted(stage[0] + stage[1]), list(range(workers[0]["moe_layers"])))
            self.assertTrue(stage[0] and stage[1])
            self.assertEqual(workers[0]["expert_counts"], workers[1]["expert_counts"])
            for w in workers:
                for j in range(w["moe_layers"]):
                    want = w["routed_tokens"] * w["top_k"] if j in w["own_layers"] else 0
                    self.assertEqual(sum(w["expert_counts"][j]), want)

    def test_dp2_two_engines(self):
        with simrun.tempdir() as tmp:
            r = simrun.run("v0_16_0", "serve", tmp, PMSIM_DP=2, PMSIM_TP=2)
            self.assertEqual(r.rc, 0, r.output)
            engines = r.processes("engine_core")
            self.assertEqual(sorted(e["dp_rank"] for e in engines), [0, 1])
            self.assertEqual(sum(e["finished"] for e in engines), r.processes("api_server")[0]["requests"])
            got = sorted((w["dp_rank"], w["local_rank"], w["global_rank"]) for w in r.processes("worker"))
            self.assertEqual(got, [(0, 0, 0), (0, 1, 1), (1, 0, 2), (1, 1, 3)])


class KnobsTest(unittest.TestCase):
    def test_slow_rank(self):
        with simrun.tempdir() as tmp:
            r = simrun.run("v0_10_2", "serve", tmp, PMSIM_SLOW_RANK=2, PMSIM_SLOW_MS=5)
            self.assertEqual(r.rc, 0, r.output)
            slow = [w for w in r.processes("worker") if w["rank"] == 2][0]
            # The slow rank spins at least PMSIM_SLOW_MS per step, and EngineCore waits for it every step.
            self.assertGreaterEqual(min(slow["runner_step_ms"]), 5.0)
            self.assertGreaterEqual(min(r.processes("engine_core")[0]["step_ms"]), 5.0)

    def test_v2_runner_on_v0_16(self):
        with simrun.tempdir() as tmp:
            r = simrun.run("v0_16_0", "serve", tmp, PMSIM_V2_RUNNER=1)
            self.assertEqual(r.rc, 0, r.output)
            for w in r.processes("worker"):
                self.assertTrue(w["v2_runner"])
                # v0.16's V2 runner captures full graphs only.
                self.assertEqual(w["steps_by_mode"]["PIECEWISE"], 0)
                self.assertGreater(w["steps_by_mode"]["FULL"], 0)
                self.assertEqual({c["mode"] for c in w["captures"]}, {"FULL"})
                self.assertGreater(w["encoder_calls"], 0)
                self.assertEqual(sum(map(sum, w["expert_counts"])),
                                 w["routed_tokens"] * w["top_k"] * w["moe_layers"])

    def test_pause_file_holds_engine_after_first_preemption(self):
        import threading
        with simrun.tempdir() as tmp:
            pause = os.path.join(tmp, "go")
            result = {}
            t = threading.Thread(target=lambda: result.update(run=simrun.run(
                "v0_16_0", "serve", tmp, PMSIM_PAUSE_FILE=pause)))
            t.start()
            try:
                # Poll for the marker EngineCore writes once it is paused.
                marker = pause + ".waiting"
                while not os.path.exists(marker) and t.is_alive():
                    t.join(0.05)
                self.assertTrue(os.path.exists(marker), "EngineCore never paused")
                self.assertTrue(t.is_alive(), "the run ended while EngineCore should wait")
                self.assertFalse(os.path.exists(os.path.join(tmp, "truth.json")))
                with open(marker) as f:
                    _, paused_at = map(int, f.read().split())
            finally:
                open(pause, "w").close()
                t.join()
            r = result["run"]
            self.assertEqual(r.rc, 0, r.output)
            eng = r.processes("engine_core")[0]
            first = eng["preemptions"][0]
            # EngineCore paused in the step that made the first preemption (counted once it scheduled);
            # preemptions carry the number of the step their schedule() makes (proto/tables/common.json).
            self.assertEqual(paused_at, first["step"])
            self.assertEqual(eng["finished"], r.processes("api_server")[0]["requests"])


if __name__ == "__main__":
    unittest.main()
