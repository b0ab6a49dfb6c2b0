"""Worker profilers against the simulator's ground truth, per era of the test tree.

The simulator (PMSIM_TP=1: the runner inside EngineCore) runs with the real shim and the
folder sink; its own bookkeeping (PMSIM_GROUND_TRUTH) must equal what the shim wrote: steps per
CUDA graph mode and tokens per step, PIECEWISE captures, expert counts per layer (device-side,
graph replays included) or `unobservable` where the era makes them so, encoder calls and items,
one forward-pass row per runner step. compare() is also fed the same rows with one event
dropped, and must then report a difference.
"""
import collections
import os
import unittest

from tests import helpers as h

ERAS = ("v0_7_3", "v0_10_2", "v0_11_0", "v0_16_0", "main_2026_08_20")
UNOBSERVABLE_MOE = ("v0_7_3",)


def run_sim(testcase, era, extra=None):
    env = {"PMSIM_TP": "1", "PMSIM_REQUESTS": "6", "PMSIM_STEP_WORK_MS": "0", "PROFILEMATE_MOE_INTERVAL_STEPS": "7"}
    env.update(extra or {})
    tables = ("cuda_graph_usage", "cuda_graph_captures", "moe_expert_selection", "encoder_decoder_timing",
              "forward_pass_timing", "moe_expert_timing")
    return h.run_engine_sim(testcase, era, env, "runner_steps", tables, model="sim/moe", prefix="pm-worker-")


def compare(era, truth, tables, per_layer=True):
    """Differences between ground truth and the shim's rows, as a list of strings (empty: equal)."""
    diffs = []
    usage = tables["cuda_graph_usage"]
    got = [[int(r["unpadded_tokens"]), int(r["padded_tokens"]), r["runtime_mode"]] for r in usage]
    if got != truth["tokens_by_step"]:
        diffs.append("tokens per step: %s != %s" % (got, truth["tokens_by_step"]))
    got = [int(r["num_reqs"]) for r in usage]
    if got != truth["reqs_by_step"]:
        diffs.append("requests per step %s != %s" % (got, truth["reqs_by_step"]))
    modes = collections.Counter(r["runtime_mode"] for r in usage)
    want = {m: n for m, n in truth["steps_by_mode"].items() if n}
    if dict(modes) != want:
        diffs.append("steps per mode: %s != %s" % (dict(modes), want))
    steps = [int(r["step"]) for r in usage]
    if steps != list(range(1, truth["runner_steps"] + 1)):
        diffs.append("usage steps %s" % steps)
    # Every capture, FULL ones included (V1: the FULL CUDAGraphWrapper around the model; V2: the
    # graph manager), one row per (mode, size).
    caps = sorted((r["mode"], int(r["num_tokens"])) for r in tables["cuda_graph_captures"])
    want_caps = sorted((c["mode"], c["size"]) for c in truth["captures"])
    if caps != want_caps:
        diffs.append("captures %s != %s" % (caps, want_caps))
    fp = sorted((int(r["step"]), int(r["tokens"]), r["runtime_mode"]) for r in tables["forward_pass_timing"])
    want_fp = [(i + 1, t[1], t[2]) for i, t in enumerate(truth["tokens_by_step"])]
    if fp != want_fp:
        diffs.append("forward pass (step, padded tokens, mode) %s != %s" % (fp, want_fp))
    enc = tables["encoder_decoder_timing"]
    if sorted(int(r["step"]) for r in enc) != truth["encoder_steps"]:
        diffs.append("encoder steps %s != %s" % (sorted(int(r["step"]) for r in enc), truth["encoder_steps"]))
    if (len(enc), sum(int(r["mm_items"]) for r in enc)) != (truth["encoder_calls"], truth["encoder_items"]):
        diffs.append("encoder %d calls / %d items" % (len(enc), sum(int(r["mm_items"]) for r in enc)))
    moe = tables["moe_expert_selection"]
    statuses = {r["status"] for r in moe}
    if era in UNOBSERVABLE_MOE:
        if statuses != {"unobservable"} or any(r["count"] for r in moe):
            diffs.append("moe rows must all be unobservable with no count: %s" % statuses)
        covered = sum(int(r["interval_steps"]) for r in moe)
        if covered != truth["runner_steps"]:
            diffs.append("unobservable intervals cover %d steps, not %d" % (covered, truth["runner_steps"]))
        return diffs
    if statuses != {"counted"}:
        diffs.append("moe statuses %s" % statuses)
    counts = collections.defaultdict(lambda: [0] * len(truth["expert_counts"][0]))
    for r in moe:
        counts[int(r["layer_index"])][int(r["expert"])] += int(r["count"])
    # A pipeline stage routes through its own layers only (truth: own_layers).
    own = truth.get("own_layers", list(range(truth["moe_layers"])))
    got = [counts[j] for j in range(truth["moe_layers"])]
    want = truth["expert_counts"]
    if not per_layer:  # totals only (see test_enforce_eager)
        got = [sum(c) for c in got]
        want = [truth["routed_tokens"] * truth["top_k"] if j in own else 0 for j in range(truth["moe_layers"])]
    counted = sorted(j for j in counts if any(counts[j]))
    if got != want or counted != sorted(own):
        diffs.append("expert counts %s != %s (layers %s, own %s)" % (got, want, counted, own))
    first = str(own[0]) if own else "0"
    covered = sum(int(r["interval_steps"]) for r in moe if r["expert"] == "0" and r["layer_index"] == first)
    if covered != truth["runner_steps"]:
        diffs.append("intervals cover %d steps, not %d" % (covered, truth["runner_steps"]))
    return diffs


def drop_one(tables, name, pick):
    out = dict(tables)
    rows = list(tables[name])
    idx = [i for i, r in enumerate(rows) if pick(r)]
    del rows[idx[len(idx) // 2]]
    out[name] = rows
    return out


@unittest.skipUnless(os.path.isdir(os.path.join(h.TESTBED, "pmsim")), "testbed not present")
class WorkerProfilers(unittest.TestCase):
    def check(self, era):
        truth, tables, meta = run_sim(self, era)
        self.assertGreater(truth["steps_by_mode"]["PIECEWISE"] + truth["steps_by_mode"]["FULL"], 0)
        self.assertEqual(compare(era, truth, tables), [])
        if era != "v0_7_3":  # v0.10+ capture FULL graphs for uniform decode batches
            self.assertIn("FULL", {r["mode"] for r in tables["cuda_graph_captures"]})
        # One dropped event of each kind makes the comparison fail.
        for name, pick in (("cuda_graph_usage", lambda r: r["runtime_mode"] != "NONE"),
                           ("cuda_graph_captures", lambda r: True),
                           ("encoder_decoder_timing", lambda r: True),
                           ("forward_pass_timing", lambda r: True),
                           ("moe_expert_selection", lambda r: r["status"] != "counted" or int(r["count"]) > 0)):
            self.assertNotEqual(compare(era, truth, drop_one(tables, name, pick)), [], name)
        notes = meta.get("notes", {})
        if era in UNOBSERVABLE_MOE:
            self.assertIn("unobservable", notes.get("moe_expert_selection", ""))
        else:
            self.assertNotIn("moe_expert_selection", notes)
        # No CUDA here: GPU columns say so instead of holding a number, and metadata.json says why
        # moe_expert_timing is empty.
        self.assertEqual({r["gpu_status"] for r in tables["forward_pass_timing"]}, {"unavailable"})
        self.assertEqual(tables["moe_expert_timing"], [])
        status = {t["table"]: t["status"] for t in meta["tables"]}
        self.assertEqual(status["moe_expert_timing"], "unavailable: needs CUDA events")
        for name in ("cuda_graph_usage", "cuda_graph_captures", "forward_pass_timing", "moe_expert_selection",
                     "encoder_decoder_timing", "kv_cache_usage", "batch_utilization", "preemption_events"):
            self.assertEqual(status[name], "recorded", name)

    def test_v0_7_3(self):
        self.check("v0_7_3")

    def test_v0_10_2(self):
        self.check("v0_10_2")

    def test_v0_11_0(self):
        self.check("v0_11_0")

    def test_v0_16_0(self):
        self.check("v0_16_0")

    def test_main_2026_08_20(self):
        self.check("main_2026_08_20")

    def test_main_v1_runner(self):
        # main with the V1 runner: the decision comes from _determine_batch_execution_and_padding.
        truth, tables, _ = run_sim(self, "main_2026_08_20", {"PMSIM_V2_RUNNER": "0"})
        self.assertEqual(compare("main_2026_08_20", truth, tables), [])
        self.assertEqual({r["source"] for r in tables["cuda_graph_usage"]}, {"runner"})

    def test_v0_16_v2_runner(self):
        # v0.16's V2 runner: FULL graphs only, captured by CudaGraphManager.capture_graph per size.
        truth, tables, _ = run_sim(self, "v0_16_0", {"PMSIM_V2_RUNNER": "1"})
        self.assertEqual(compare("v0_16_0", truth, tables), [])
        self.assertEqual({r["mode"] for r in tables["cuda_graph_captures"]}, {"FULL"})

    def test_enforce_eager(self):
        # In eager mode the simulator routes every MoE layer with layer 0's table while its ground
        # truth uses each layer's own table (no piece wrapper sets its current layer), so only the
        # per-layer totals are compared here.
        truth, tables, _ = run_sim(self, "v0_16_0", {"PMSIM_ENFORCE_EAGER": "1"})
        self.assertEqual(compare("v0_16_0", truth, tables, per_layer=False), [])
        usage = tables["cuda_graph_usage"]
        self.assertTrue(usage)
        self.assertEqual({(r["runtime_mode"], r["eager_fallback"]) for r in usage}, {("NONE", "false")})

    def test_profilers_off(self):
        off = "all,-moe_expert,-cuda_graph,-encoder_decoder"
        truth, tables, meta = run_sim(self, "v0_16_0", {"PROFILEMATE_PROFILERS": off})
        status = {t["target"]: t["status"] for t in meta["targets"]}
        self.assertEqual(status["fused_moe"], "disabled")
        self.assertEqual(status["cuda_graph"], "disabled")
        for name in ("moe_expert_selection", "cuda_graph_usage", "cuda_graph_captures", "encoder_decoder_timing"):
            self.assertEqual(tables[name], [], name)
        status = {t["table"]: t["status"] for t in meta["tables"]}
        self.assertEqual(status["cuda_graph_usage"], "disabled")
        self.assertEqual(status["forward_pass_timing"], "recorded")
        self.assertEqual(len(tables["forward_pass_timing"]), truth["runner_steps"])


if __name__ == "__main__":
    unittest.main()
