"""The simulator tells right from wrong: hooks placed the naive way miscount, a device-side counter does not.

Naive hooks: every CUDAGraphWrapper.__call__ counted as a step, and experts counted in Python from
what select_experts returns. While graphs replay no Python layer code runs, and piecewise graphs
call the wrapper once per piece, so both disagree with the ground truth. A counter kept as a
tensor and updated with index_add_ inside select_experts is recorded into the graph at capture and
replayed with it, so it equals the ground truth (which counts every routed row, padding included).
The engine runs in the test's child interpreter with PMSIM_TP=1, hooks installed in-process.
"""
import json
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import simrun  # noqa: E402

SCRIPT = r'''
import json, sys
import vllm
from pmsim import config, entry
from pmsim.tensor import FakeTensor

era = sys.argv[1]
cfg = config.get()
naive = {"steps": 0, "experts": [0] * cfg.experts}
device = FakeTensor([0] * cfg.experts, (cfg.experts,))

from vllm.compilation.cuda_graph import CUDAGraphWrapper
orig_call = CUDAGraphWrapper.__call__


def counting_call(self, *args, **kwargs):
    naive["steps"] += 1
    return orig_call(self, *args, **kwargs)


CUDAGraphWrapper.__call__ = counting_call


def count(out):
    ids = out[1]
    for e in ids.data:  # Python-side: sees only what runs in Python, when it runs
        naive["experts"][e] += 1
    flat = ids.flatten()
    device.index_add_(0, flat, flat.new_ones(flat.numel()))  # a kernel: captured and replayed with the graph
    return out


if era in ("v0_7_3", "v0_10_2"):
    from vllm.model_executor.layers.fused_moe.layer import FusedMoE
    orig_static = FusedMoE.__dict__["select_experts"].__func__
    FusedMoE.select_experts = staticmethod(lambda *a, **k: count(orig_static(*a, **k)))
else:
    from vllm.model_executor.layers.fused_moe.router.base_router import BaseRouter
    name = "select_experts" if "select_experts" in BaseRouter.__dict__ else "_select_experts"
    orig_method = getattr(BaseRouter, name)
    setattr(BaseRouter, name, lambda self, *a, **k: count(orig_method(self, *a, **k)))

rec = entry.run_in_process()
truth = [sum(layer[e] for layer in rec["expert_counts"]) for e in range(cfg.experts)]
print(json.dumps({"naive_steps": naive["steps"], "naive_experts": naive["experts"], "device": device.data,
                  "truth_experts": truth, "runner_steps": rec["runner_steps"],
                  "steps_by_mode": rec["steps_by_mode"], "routed_tokens": rec["routed_tokens"],
                  "top_k": rec["top_k"], "moe_layers": rec["moe_layers"], "finished": rec["finished"]}))
'''


def run_hooked(era, **env_extra):
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("PMSIM_"):
            del env[k]
    env.update(PYTHONPATH=os.pathsep.join([os.path.join(simrun.TESTBED, "eras", era), simrun.TESTBED]),
               PMSIM_TP="1", PMSIM_STEP_WORK_MS="0", PYTHONDONTWRITEBYTECODE="1")
    env.update(env_extra)
    p = subprocess.run([sys.executable, "-c", SCRIPT, era], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=simrun.GUARD_S)
    if p.returncode != 0:
        raise AssertionError("hooked run failed:\n" + p.stderr.decode("utf-8", "replace"))
    return json.loads(p.stdout.decode().strip().splitlines()[-1])


class DiscriminationTest(unittest.TestCase):
    def test_naive_hooks_miscount_device_counter_matches(self):
        for era in ("v0_10_2", "v0_16_0", "main_2026_08_20"):
            with self.subTest(era=era):
                r = run_hooked(era)
                self.assertGreater(r["finished"], 0)
                truth = r["truth_experts"]
                self.assertEqual(sum(truth), r["routed_tokens"] * r["top_k"] * r["moe_layers"])
                # Graphs replayed in this run, so Python-side hooks cannot have seen every step.
                self.assertGreater(r["steps_by_mode"]["FULL"] + r["steps_by_mode"]["PIECEWISE"], 0)
                self.assertNotEqual(r["naive_steps"], r["runner_steps"])
                self.assertNotEqual(r["naive_experts"], truth)
                self.assertEqual(r["device"], truth)

    def test_eager_run_lets_naive_expert_counts_agree(self):
        # Control: with no graphs, counting in Python is right, so the difference above comes from replay.
        r = run_hooked("v0_16_0", PMSIM_ENFORCE_EAGER="1")
        self.assertEqual(r["steps_by_mode"]["FULL"] + r["steps_by_mode"]["PIECEWISE"], 0)
        self.assertEqual(r["naive_experts"], r["truth_experts"])
        self.assertEqual(r["device"], r["truth_experts"])


if __name__ == "__main__":
    unittest.main()
