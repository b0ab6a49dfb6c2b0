"""EngineCore profilers against the simulator's ground truth, per era of the test tree.

The simulator (PMSIM_TP=1: one spawned EngineCore with the runner inside) runs under the real
shim with the folder sink. Its own bookkeeping (PMSIM_GROUND_TRUTH, counted inside the simulated
scheduler and block pool, never by wrapping) must equal the shim's tables: one kv_cache_usage and
one batch_utilization row per scheduler step with the step's KV usage, allocation failures,
prefix-hit tokens and scheduled tokens; evicted blocks; every preemption with its step, victim and
tokens lost. compare() is also fed the same rows with one event dropped and must then report a
difference.
"""
import collections
import os
import unittest

from tests import helpers as h

ERAS = ("v0_7_3", "v0_10_2", "v0_11_0", "v0_16_0", "main_2026_08_20")
TABLES = ("kv_cache_usage", "kv_cache_evictions", "batch_utilization", "preemption_events", "cpu_operations_timing")


def run_sim(testcase, era, extra=None):
    env = {"PMSIM_TP": "1", "PMSIM_STEP_WORK_MS": "0"}
    env.update(extra or {})
    return h.run_engine_sim(testcase, era, env, "scheduler_steps", TABLES, model="sim/m", prefix="pm-engine-")


def compare(truth, tables):
    """Differences between ground truth and the shim's rows, as a list of strings (empty: equal)."""
    diffs = []
    steps = truth["scheduler_steps"]
    usage = tables["kv_cache_usage"]
    got = [int(r["step"]) for r in usage]
    if got != list(range(1, steps + 1)):
        diffs.append("kv_cache_usage steps %s, want 1..%d" % (got, steps))
    got = [round(float(r["usage"]), 6) for r in usage]
    if got != truth["kv_usage"]:
        diffs.append("usage per step %s != %s" % (got, truth["kv_usage"]))
    # Prefix statistics in the era's own meaning (every lookup before record_prefix_cache_stats,
    # at admission after): the simulator keeps them as that era's vLLM does.
    for col, key in (("alloc_failures", "alloc_failures"), ("prefix_hit_tokens", "prefix_hit_tokens"),
                     ("prefix_query_tokens", "prefix_query_tokens")):  # totals; per step below for blocks
        got = sum(int(r[col]) for r in usage)
        if got != truth[key]:
            diffs.append("%s %d != %d" % (col, got, truth[key]))
    for r in usage:
        if int(r["free_blocks"]) + round(float(r["usage"]) * int(r["total_blocks"])) != int(r["total_blocks"]):
            diffs.append("step %s: free blocks %s disagree with usage %s" % (r["step"], r["free_blocks"], r["usage"]))
            break
    got = [[int(r["blocks_allocated"]), int(r["blocks_freed"])] for r in usage]
    if got != truth["kv_by_step"]:
        diffs.append("blocks allocated/freed per step %s != %s" % (got, truth["kv_by_step"]))
    ev = tables["kv_cache_evictions"]
    got = sum(int(r["blocks_evicted"]) for r in ev)
    if got != truth["evictions"]:
        diffs.append("blocks evicted %d != %d" % (got, truth["evictions"]))
    if any(not 0 < int(r["evictions"]) <= int(r["blocks_evicted"]) for r in ev):
        diffs.append("eviction operations out of range: %s" % [(r["evictions"], r["blocks_evicted"]) for r in ev])
    batch = tables["batch_utilization"]
    got = [int(r["step"]) for r in batch]
    if got != list(range(1, steps + 1)):
        diffs.append("batch_utilization steps %s, want 1..%d" % (got, steps))
    got = sum(int(r["scheduled_tokens"]) for r in batch)
    if got != truth["scheduled_tokens"]:
        diffs.append("scheduled tokens %d != %d" % (got, truth["scheduled_tokens"]))
    got = [[int(r[c]) for c in ("scheduled_tokens", "running_reqs", "prefill_tokens", "decode_tokens", "waiting",
                                "running")] for r in batch]
    if got != truth["batch_by_step"]:
        diffs.append("batch rows (tokens, reqs, prefill, decode, waiting, running) %s != %s" % (
            got, truth["batch_by_step"]))
    # Budgets: the scheduler's own limits, every row.
    limits = {(r["token_budget"], r["max_running_reqs"]) for r in batch}
    want = {(str(truth["token_budget"]), str(truth["max_num_seqs"]))}
    if limits != want:
        diffs.append("budgets %s != %s" % (sorted(limits), want))
    for r in batch:
        if r["token_budget"] and abs(float(r["token_util"]) - int(r["scheduled_tokens"]) / int(r["token_budget"])) > 1e-9:
            diffs.append("step %s: token_util %s" % (r["step"], r["token_util"]))
            break
        if r["max_running_reqs"] and abs(float(r["req_util"]) - int(r["running_reqs"]) / int(r["max_running_reqs"])) > 1e-9:
            diffs.append("step %s: req_util %s" % (r["step"], r["req_util"]))
            break
    pre = tables["preemption_events"]
    # One step convention for every table (proto/tables/common.json), ground truth included.
    got = [(int(r["step"]), r["request_id"], int(r["tokens_lost"]), round(float(r["kv_usage"]), 6), int(r["waiting"]),
            int(r["running"])) for r in pre]
    want = [(p["step"], p["request"], p["tokens_lost"], p["kv_usage"], p["waiting"], p["running"])
            for p in truth["preemptions"]]
    if got != want:
        diffs.append("preemptions %s != %s" % (got, want))
    seen = collections.Counter()
    for r in pre:
        seen[r["request_id"]] += 1
        if int(r["preemption_count"]) != seen[r["request_id"]]:
            diffs.append("preemption count of %s: %s, want %d" % (r["request_id"], r["preemption_count"],
                                                                  seen[r["request_id"]]))
    cpu = collections.Counter(r["operation"] for r in tables["cpu_operations_timing"])
    if cpu["update_from_output"] != steps or cpu["schedule"] < steps:
        diffs.append("cpu timing rows %s for %d steps" % (dict(cpu), steps))
    return diffs


def drop_one(tables, name, pick=lambda r: True):
    out = dict(tables)
    rows = list(tables[name])
    idx = [i for i, r in enumerate(rows) if pick(r)]
    del rows[idx[len(idx) // 2]]
    out[name] = rows
    return out


@unittest.skipUnless(os.path.isdir(os.path.join(h.TESTBED, "pmsim")), "testbed not present")
class EngineCoreProfilers(unittest.TestCase):
    def check(self, era, extra=None):
        truth, tables, meta = run_sim(self, era, extra)
        # The workload must exercise every path, or equality would prove little.
        for key in ("alloc_failures", "evictions", "prefix_hit_tokens", "preemptions"):
            self.assertTrue(truth[key], "%s: the workload has no %s" % (era, key))
        # Eras with BlockPool.evict_blocks (v0.16+) evict through it too.
        self.assertEqual(bool(truth["explicit_evictions"]), era in ("v0_16_0", "main_2026_08_20"), era)
        # The engine's ranks: dp from its parallel_config (TP=1: the runner is inside, rank 0 of 1).
        self.assertEqual({k: meta["ident"][k] for k in ("dp", "tp", "pp")}, {"dp": 0, "tp": 0, "pp": 0})
        self.assertEqual(compare(truth, tables), [], era)
        status = {t["target"]: t["status"] for t in meta["targets"]}
        self.assertEqual(status["scheduler"], "patched")
        self.assertEqual(status["kv_cache_manager"], "patched")
        self.assertEqual(status["block_pool"], "not_loaded" if era == "v0_7_3" else "patched")
        # One event fewer, of each kind that has ground truth, must be noticed.
        for name, pick in (("preemption_events", lambda r: True),
                           ("kv_cache_evictions", lambda r: True),
                           ("kv_cache_usage", lambda r: int(r["alloc_failures"]) > 0),
                           ("kv_cache_usage", lambda r: int(r["prefix_hit_tokens"]) > 0),
                           ("kv_cache_usage", lambda r: int(r["prefix_query_tokens"]) > 0),
                           ("batch_utilization", lambda r: True)):
            self.assertNotEqual(compare(truth, drop_one(tables, name, pick)), [], "%s: dropped %s row" % (era, name))
        return truth, tables

    def test_v0_7_3(self):
        _, tables = self.check("v0_7_3")
        self.assertEqual({r["source"] for r in tables["preemption_events"]}, {"scheduler: running-queue diff"})

    def test_v0_10_2(self):
        self.check("v0_10_2")

    def test_v0_11_0(self):
        truth, _ = self.check("v0_11_0")
        # vLLM v0.11 counts every lookup: the blocked head of the waiting queue is counted again, so
        # its meaning differs from counting at admission in this workload (and the test tells them apart).
        self.assertGreater(truth["prefix_query_tokens"], truth["prefix_admitted_query_tokens"])

    def test_unknown_budget_is_empty(self):
        # A scheduler without limits anywhere: the budget cells are empty, never 0.
        truth, tables, _ = run_sim(self, "v0_16_0", {"PMSIM_HIDE_LIMITS": "1"})
        batch = tables["batch_utilization"]
        self.assertEqual(len(batch), truth["scheduler_steps"])
        self.assertEqual({(r["token_budget"], r["token_util"], r["max_running_reqs"], r["req_util"]) for r in batch},
                         {("", "", "", "")})

    def test_v0_16_0(self):
        _, tables = self.check("v0_16_0")
        # This era lists victims in preempted_req_ids too: they are counted once, where they happen.
        self.assertEqual({r["source"] for r in tables["preemption_events"]}, {"scheduler: _preempt_request"})

    def test_main_2026_08_20(self):
        self.check("main_2026_08_20")

    def test_repeated_preemptions(self):
        # A small cache preempts some requests more than once: counts per victim must follow.
        for era in ("v0_7_3", "main_2026_08_20"):
            truth, tables = self.check(era, {"PMSIM_NUM_BLOCKS": "24", "PMSIM_REQUESTS": "16"})
            counts = collections.Counter(p["request"] for p in truth["preemptions"])
            self.assertGreater(max(counts.values()), 1, "%s: no request preempted twice" % era)
            self.assertEqual(max(int(r["preemption_count"]) for r in tables["preemption_events"]),
                             max(counts.values()))

    def test_profilers_off(self):
        off = "all,-kv_cache,-preemption,-cpu_timing"
        truth, tables, meta = run_sim(self, "v0_16_0", {"PROFILEMATE_PROFILERS": off})
        status = {t["target"]: t["status"] for t in meta["targets"]}
        self.assertEqual(status["kv_cache_manager"], "disabled")
        self.assertEqual(status["block_pool"], "disabled")
        for name in ("kv_cache_usage", "kv_cache_evictions", "preemption_events", "cpu_operations_timing"):
            self.assertEqual(tables[name], [], name)
        self.assertEqual(len(tables["batch_utilization"]), truth["scheduler_steps"])


if __name__ == "__main__":
    unittest.main()
