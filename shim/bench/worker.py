"""Worker profiler costs, side by side in one run (never asserted in tests).

1. ns added per call on the per-piece graph wrapper path (CUDAGraphWrapper.__call__ outside
   capture_model), wrapped vs the same class unwrapped;
2. ns added per select_experts call (wrapper + device-side count) with torch CPU tensors when
   torch imports, else the test tree's FakeTensor;
3. worker step time on the simulator's default workload (PMSIM_TP=1, runner in EngineCore),
   with and without the shim, from the simulator's own runner_step_ms.

Run: python3 shim/bench/worker.py  (or /usr/bin/python3 for the torch column)
"""
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM = os.path.dirname(HERE)
ROOT = os.path.dirname(SHIM)
sys.path.insert(0, SHIM)


def per_call_ns(fn, n=200000, reps=5):
    best = None
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        dt = (time.perf_counter_ns() - t0) / n
        best = dt if best is None else min(best, dt)
    return best


def bench_wrapper():
    from profilemate import patching, runtime
    from profilemate.targets import cuda_graph

    class CUDAGraphWrapper:
        concrete_cudagraph_entries = {}

        def __call__(self, x):
            return x
    w = CUDAGraphWrapper()
    base = per_call_ns(lambda: w(1))
    factory = cuda_graph.TARGET.paths[0].hooks[0].factory
    h = patching.wrap(CUDAGraphWrapper, "__call__", lambda orig: factory(orig, runtime))
    wrapped = per_call_ns(lambda: w(1))
    patching.unwrap(h)
    return base, wrapped


def bench_select():
    from profilemate import patching, runtime
    from profilemate.targets import fused_moe
    try:
        import torch
        ids = torch.randint(0, 64, (16, 8))
        kind = "torch %s CPU, 16x8 ids" % torch.__version__
    except Exception:
        sys.path.insert(0, os.path.join(ROOT, "testbed"))
        from pmsim.tensor import FakeTensor
        ids = FakeTensor([1, 2] * 16, (16, 2))
        kind = "FakeTensor, 16x2 ids"
    out = (None, ids)

    class FusedMoE:
        layer_name, global_num_experts = "model.layers.0.mlp.experts", 64

        @staticmethod
        def select_experts(hidden_states, router_logits):
            return out

        def forward_impl(self):
            return None
    base = per_call_ns(lambda: FusedMoE.select_experts(1, 2), n=50000)
    h = patching.wrap(FusedMoE, "select_experts", lambda o: fused_moe._select(o, runtime),
                      ("hidden_states", "router_logits"))
    layer = FusedMoE()
    fused_moe._CUR[0] = layer
    wrapped = per_call_ns(lambda: FusedMoE.select_experts(1, 2), n=50000)
    fused_moe._CUR[0] = None
    patching.unwrap(h)
    return kind, base, wrapped


def sim_steps(shim):
    era = os.path.join(ROOT, "testbed", "eras", "v0_16_0")
    out = tempfile.mkdtemp(prefix="pm-bench-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROFILEMATE_", "PMSIM_", "VLLM_"))}
    env.update(PYTHONPATH=os.pathsep.join(([SHIM] if shim else []) + [era, os.path.join(ROOT, "testbed")]),
               PMSIM_TP="1", PMSIM_GROUND_TRUTH=os.path.join(out, "gt.json"),
               PROFILEMATE_OUTPUT_DIR=os.path.join(out, "pm"), PROFILEMATE_SOCKET="off")
    subprocess.run([sys.executable, os.path.join(ROOT, "testbed", "bin", "vllm"), "serve", "sim/moe"], env=env,
                   check=True, capture_output=True)
    with open(os.path.join(out, "gt.json")) as f:
        gt = json.load(f)
    return [ms for p in gt["processes"] for ms in p.get("runner_step_ms", [])]


def main():
    print("machine: %s, %s, Python %s" % (platform.node(), platform.processor() or platform.machine(),
                                           platform.python_version()))
    base, wrapped = bench_wrapper()
    print("graph wrapper __call__ (outside capture): unwrapped %.0f ns, wrapped %.0f ns, added %.0f ns"
          % (base, wrapped, wrapped - base))
    kind, base, wrapped = bench_select()
    print("select_experts + device count (%s): unwrapped %.0f ns, wrapped %.0f ns, added %.0f ns"
          % (kind, base, wrapped, wrapped - base))
    off, on = [], []
    for _ in range(2):
        off += sim_steps(False)
        on += sim_steps(True)
    mo, mn = statistics.median(off), statistics.median(on)
    print("simulator step (v0_16_0 default workload, median of %d/%d steps): without shim %.3f ms, with %.3f ms,"
          " overhead %.2f%%" % (len(off), len(on), mo, mn, (mn - mo) / mo * 100.0))


if __name__ == "__main__":
    main()
