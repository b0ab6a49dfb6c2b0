"""EngineCore profiler costs, side by side in one run (never asserted in tests).

1. ns added per call on the eviction path (BlockPool._maybe_evict_cached_block returning True
   and False), wrapped vs the same class unwrapped;
2. ns added per schedule() call (step counter, per-step kv_cache_usage / batch_utilization /
   cpu_operations_timing rows, running-queue snapshot) on a scheduler shaped like the simulator's
   with 8 running requests;
3. EngineCore step time (EngineCore.step wall time, schedule + model + update_from_output) on
   the simulator's default workload (PMSIM_TP=1, runner in EngineCore, in-process engine), with
   and without the shim, runs alternated.

4. --pinned: scheduler CPU per step (schedule() + update_from_output(), thread CPU time, the
   shim's wrappers included) on a pinned simulator workload — 64 running and 32 waiting
   requests, ≈16 blocks per request, a preemption about every 20 steps — with and without the
   shim, alternated; the added time is reported per step and as a share of the scheduler's own
   CPU time.

5. --paired: the pinned workload in one process with the shim, its EngineCore wrappers in place on
   every other step only; two runs of opposite parity; the added time per step is the median over
   step pairs of the wrapped minus the unwrapped step (drift of the machine cancels within a pair).

Run: python3 shim/bench/enginecore.py [--step-work-ms N] [--rounds N] [--pinned|--paired [--versus OLD_SHIM_DIR]]
"""
import argparse
import collections
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


def per_call_ns(fn, n=200000, reps=7):
    out = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        out.append((time.perf_counter_ns() - t0) / n)
    return statistics.median(out)


def bench_evict():
    from profilemate import runtime
    from profilemate import stepctx
    from profilemate.targets import block_pool

    class Pool:
        def _maybe_evict_cached_block(self, block):
            return block is not None

    hook = [hk for hk in block_pool.TARGET.paths[0].hooks if hk.method == "_maybe_evict_cached_block"][0]
    wrapped = hook.factory(Pool._maybe_evict_cached_block, runtime)
    p, rows = Pool(), {}
    for label, blk in (("evict_true", 1), ("evict_false", None)):
        m_raw, m_wr = Pool._maybe_evict_cached_block, wrapped
        base = per_call_ns(lambda: m_raw(p, blk))
        wr = per_call_ns(lambda: m_wr(p, blk))
        rows[label] = (base, wr)
    stepctx.kv_reset()
    return rows


def bench_schedule():
    from profilemate import recorder, runtime
    from profilemate.targets import scheduler

    class Req:
        def __init__(self, i):
            self.request_id, self.num_computed_tokens, self.num_prompt_tokens = "req-%d" % i, 100 + i, 64
            self.status = "RUNNING"

    class Out:
        def __init__(self, reqs):
            self.num_scheduled_tokens = {r.request_id: 1 for r in reqs}
            self.total_num_scheduled_tokens = len(reqs)

    class Pool:
        num_gpu_blocks = 48

        def get_num_free_blocks(self):
            return 12

    class KVM:
        block_pool = Pool()
        usage = 0.75

    class Sched:
        max_num_scheduled_tokens, max_num_running_reqs = 256, 16

        def __init__(self):
            self.running = [Req(i) for i in range(8)]
            self.waiting = collections.deque(Req(i) for i in range(8, 12))
            self.requests = {r.request_id: r for r in self.running + list(self.waiting)}
            self.kv_cache_manager = KVM()
            self._out = Out(self.running)

        def schedule(self):
            return self._out

    s = Sched()
    raw = Sched.schedule
    wrapped = scheduler._schedule(raw, runtime)
    base = per_call_ns(lambda: raw(s), n=100000)
    recorder.RECORDER.reset()
    wr = per_call_ns(lambda: (wrapped(s), recorder.RECORDER._buf.clear()), n=20000)
    clear_only = per_call_ns(lambda: (raw(s), recorder.RECORDER._buf.clear()), n=20000)
    recorder.RECORDER.reset()
    return base, wr - clear_only + base


DRIVER = r'''
import json, sys, time
from pmsim import entry
from pmsim.util import mod
ec = mod("vllm.v1.engine.core").EngineCore
orig, times = ec.step, []
def step(self, *a, **k):
    t0 = time.perf_counter_ns()
    out = orig(self, *a, **k)
    times.append(time.perf_counter_ns() - t0)
    return out
ec.step = step
rec = entry.run_in_process("sim/moe")
print(json.dumps({"steps": rec["scheduler_steps"], "times": times,
                  "shim": "profilemate" in sys.modules}))
'''


PINNED_DRIVER = r'''
import json, sys, time
from pmsim import entry
from pmsim.util import mod
S = mod("vllm.v1.core.sched.scheduler").Scheduler
per_step = []  # schedule() + the update_from_output() that follows it, ns of thread CPU
o_s, o_u = S.schedule, S.update_from_output
def schedule(self):
    t0 = time.thread_time_ns()
    out = o_s(self)
    per_step.append(time.thread_time_ns() - t0)
    return out
def update(self, so, mro):
    t0 = time.thread_time_ns()
    out = o_u(self, so, mro)
    per_step[-1] += time.thread_time_ns() - t0
    return out
S.schedule, S.update_from_output = schedule, update
rec = entry.run_in_process("sim/moe")
print(json.dumps({"steps": rec["scheduler_steps"], "preemptions": len(rec["preemptions"]),
                  "evictions": rec["evictions"], "per_step": per_step, "shim": "profilemate" in sys.modules}))
'''

# Paired variant: one process with the shim, whose EngineCore wrappers (the scheduler's, the KV
# cache manager's and the block pool's) are in place on every other step only (argv[1]: the parity
# of the wrapped steps); the originals sit in the class in between. Adjacent steps share the
# process's state (caches, load), so their difference is the shim's; two runs of opposite parity
# cancel the work that differs between the two steps of a pair.
PAIRED_DRIVER = r'''
import json, sys, time
from pmsim import entry
from pmsim.util import mod
MARK = "__profilemate_original__"
parity = int(sys.argv[1])
S = mod("vllm.v1.core.sched.scheduler").Scheduler
K = mod("vllm.v1.core.kv_cache_manager").KVCacheManager
B = mod("vllm.v1.core.block_pool").BlockPool
swaps = []  # (class, name, wrapped, original) of every shim wrapper on these classes
for cls in (S, K, B):
    for name, raw in list(vars(cls).items()):
        if callable(raw) and hasattr(raw, MARK) and not (cls is S and name in ("schedule", "update_from_output")):
            swaps.append((cls, name, raw, getattr(raw, MARK)))
names = sorted(["Scheduler.schedule", "Scheduler.update_from_output"] + ["%s.%s" % (c.__name__, n) for c, n, _, _ in swaps])
w_s, w_u = vars(S)["schedule"], vars(S)["update_from_output"]
per_step, wrapped, state = [], [], {"k": 0, "on": False}
def put(on):
    for cls, name, w, o in swaps:
        setattr(cls, name, w if on else o)
def schedule(self):
    on = state["k"] % 2 == parity
    state["k"] += 1
    put(on)
    state["on"] = on
    fn = w_s if on else getattr(w_s, MARK)
    t0 = time.thread_time_ns()
    out = fn(self)
    per_step.append(time.thread_time_ns() - t0)
    wrapped.append(on)
    return out
def update(self, so, mro):
    fn = w_u if state["on"] else getattr(w_u, MARK)
    t0 = time.thread_time_ns()
    out = fn(self, so, mro)
    per_step[-1] += time.thread_time_ns() - t0
    return out
put(False)
S.schedule, S.update_from_output = schedule, update
rec = entry.run_in_process("sim/moe")
print(json.dumps({"steps": rec["scheduler_steps"], "preemptions": len(rec["preemptions"]),
                  "evictions": rec["evictions"], "per_step": per_step, "wrapped": wrapped, "hooks": names}))
'''


def paired_run(parity, era="v0_16_0", shim_dir=SHIM):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROFILEMATE_", "VLLM_", "PMSIM_"))}
    env.update(PINNED_ENV)
    env.update(PYTHONPATH=os.pathsep.join([shim_dir, os.path.join(ROOT, "testbed", "eras", era),
                                           os.path.join(ROOT, "testbed")]),
               PMSIM_TP="1", PYTHONDONTWRITEBYTECODE="1", PROFILEMATE_SOCKET="off")
    with tempfile.TemporaryDirectory() as out:
        env["PROFILEMATE_OUTPUT_DIR"] = out
        env["PMSIM_GROUND_TRUTH"] = os.path.join(out, "truth.json")
        r = subprocess.run([sys.executable, "-c", PAIRED_DRIVER, str(parity)], env=env, capture_output=True,
                           text=True, timeout=300)
        if r.returncode:
            raise SystemExit(r.stderr[-3000:])
        return json.loads(r.stdout.strip().splitlines()[-1])


def paired(rounds, before=None):
    """Per round: both parities of each shim; added = median over step pairs of the mean of the two
    parities' (wrapped - unwrapped) differences; share = added / median unwrapped step."""
    sides = [("after", SHIM)] + ([("before", before)] if before else [])
    print("\nPaired steps on the pinned workload (%s): in one process the shim's EngineCore wrappers are in "
          "place on every other step; %d rounds; scheduler CPU per step (schedule + update_from_output, thread "
          "CPU time), steps after the first 20" % (" ".join("%s=%s" % kv for kv in sorted(PINNED_ENV.items())),
                                                   rounds))
    print("\n| round | shim | steps | wrappers toggled | unwrapped step (us, median) | added (us/step) | share of "
          "scheduler CPU |")
    print("|---|---|---|---|---|---|---|")
    res = {name: [] for name, _ in sides}
    for i in range(rounds):
        for name, shim in sides:
            a, b = paired_run(0, shim_dir=shim), paired_run(1, shim_dir=shim)
            if (a["steps"], a["preemptions"], a["evictions"]) != (b["steps"], b["preemptions"], b["evictions"]):
                raise SystemExit("the toggling changed the workload: %r vs %r" % (a, b))
            n = min(len(a["per_step"]), len(b["per_step"])) // 2 * 2
            diffs, base = [], []
            for j in range(20, n, 2):
                # run a wraps even steps, run b odd ones: each (wrapped - unwrapped) of the pair j, j+1
                da = a["per_step"][j] - a["per_step"][j + 1]
                db = b["per_step"][j + 1] - b["per_step"][j]
                diffs.append((da + db) / 2)
                base += [a["per_step"][j + 1], b["per_step"][j]]
            added, unwrapped = statistics.median(diffs) / 1e3, statistics.median(base) / 1e3
            res[name].append((added, added / unwrapped))
            print("| %d | %s | %d | %d | %.1f | %+.1f | %+.1f %% |" % (i + 1, name, a["steps"], len(a["hooks"]), unwrapped,
                                                                   added, added / unwrapped * 100), flush=True)
    for name, _ in sides:
        print("\n%s: median added %.1f us per step, %.2f %% of the scheduler's own CPU time" % (
            name, statistics.median(x for x, _ in res[name]), statistics.median(y for _, y in res[name]) * 100))


# The pinned workload: 96 requests with room for 64 running (32 waiting at the start), 200 output
# tokens each (prompt + output ≈ 16 blocks of 16 tokens per request), 700 KV blocks, so the
# scheduler preempts about once every 20 steps; no simulated model work.
PINNED_ENV = {"PMSIM_MAX_NUM_SEQS": "64", "PMSIM_REQUESTS": "96", "PMSIM_NUM_BLOCKS": "700",
              "PMSIM_BLOCK_SIZE": "16", "PMSIM_MAX_TOKENS": "200", "PMSIM_TOKEN_BUDGET": "8192",
              "PMSIM_STEP_WORK_MS": "0"}


def pinned_run(shim, era="v0_16_0", shim_dir=SHIM):
    """Scheduler CPU (schedule() + update_from_output(), the calling thread's CPU time, wrappers
    included) per step on the pinned workload, with or without the shim (CSV sink); shim_dir: the
    shim folder to load (another tree's, for a before/after comparison on this test tree)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROFILEMATE_", "VLLM_", "PMSIM_"))}
    env.update(PINNED_ENV)
    env.update(PYTHONPATH=os.pathsep.join(([shim_dir] if shim else []) + [os.path.join(ROOT, "testbed", "eras", era),
                                                                         os.path.join(ROOT, "testbed")]),
               PMSIM_TP="1", PYTHONDONTWRITEBYTECODE="1", PROFILEMATE_SOCKET="off")
    with tempfile.TemporaryDirectory() as out:
        env["PROFILEMATE_OUTPUT_DIR"] = out
        env["PMSIM_GROUND_TRUTH"] = os.path.join(out, "truth.json")
        r = subprocess.run([sys.executable, "-c", PINNED_DRIVER], env=env, capture_output=True, text=True, timeout=300)
        if r.returncode:
            raise SystemExit(r.stderr[-3000:])
        res = json.loads(r.stdout.strip().splitlines()[-1])
        if res["shim"] != shim:
            raise SystemExit("shim active=%s, wanted %s" % (res["shim"], shim))
    return res


def pinned_versus(rounds, before):
    """No shim, the shim of `before` and this checkout's shim, alternated per round on this test tree."""
    print("\nPinned workload (%s), %d rounds, the three variants alternated in each; scheduler CPU per step "
          "(schedule + update_from_output, thread CPU time, steps after the first 20); before: %s" % (
              " ".join("%s=%s" % kv for kv in sorted(PINNED_ENV.items())), rounds, before))
    print("\n| round | steps | preemptions | evictions | without shim (us/step) | shim before (us/step) | "
          "shim after (us/step) | added before | added after | after, share of scheduler CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    adds = []
    for i in range(rounds):
        off = pinned_run(False)
        old = pinned_run(True, shim_dir=before)
        new = pinned_run(True)
        for r in (old, new):
            if (off["steps"], off["preemptions"], off["evictions"]) != (r["steps"], r["preemptions"], r["evictions"]):
                raise SystemExit("the shim changed the workload: %r vs %r" % (off, r))
        a, b, c = (statistics.median(x["per_step"][20:]) / 1e3 for x in (off, old, new))
        # The workload is deterministic, so step i does the same scheduling work in every run: the
        # median of the per-step differences cancels the work that differs between steps.
        db = statistics.median(y - x for x, y in zip(off["per_step"][20:], old["per_step"][20:])) / 1e3
        dc = statistics.median(y - x for x, y in zip(off["per_step"][20:], new["per_step"][20:])) / 1e3
        adds.append((db, dc, dc / a))
        print("| %d | %d | %d | %d | %.1f | %.1f | %.1f | %+.1f | %+.1f | %+.1f %% |" % (
            i + 1, off["steps"], off["preemptions"], off["evictions"], a, b, c, db, dc, dc / a * 100),
            flush=True)
    print("\n(us/step: median over the steps; added: median of the per-step differences to the run without shim)")
    print("\nmedian over rounds: added before %.1f us per step, after %.1f us per step (%.1f %% of the scheduler's "
          "own CPU time)" % (statistics.median(x for x, _, _ in adds), statistics.median(y for _, y, _ in adds),
                             statistics.median(z for _, _, z in adds) * 100))


def pinned(rounds):
    print("\nPinned workload (%s), %d rounds per side, alternated; scheduler CPU per step "
          "(schedule + update_from_output, thread CPU time, mean of the steps after the first 20):" % (
              " ".join("%s=%s" % kv for kv in sorted(PINNED_ENV.items())), rounds))
    print("\n| round | steps | preemptions | evictions | without shim (us/step) | with shim (us/step) | added (us/step) | share of scheduler CPU |")
    print("|---|---|---|---|---|---|---|---|")
    adds = []
    for i in range(rounds):
        off = pinned_run(False)
        on = pinned_run(True)
        if (off["steps"], off["preemptions"]) != (on["steps"], on["preemptions"]):
            raise SystemExit("the shim changed the workload: %r vs %r" % (off, on))
        # Mean over the steps after the first 20: the first calls pay one-time costs (lazy
        # imports compiled from source under PYTHONDONTWRITEBYTECODE=1, first rows of each table).
        a = statistics.mean(off["per_step"][20:]) / 1e3
        b = statistics.mean(on["per_step"][20:]) / 1e3
        adds.append((b - a, (b - a) / a))
        print("| %d | %d | %d | %d | %.1f | %.1f | %+.1f | %+.1f %% |" % (
            i + 1, off["steps"], off["preemptions"], off["evictions"], a, b, b - a, (b - a) / a * 100))
    med = statistics.median(x for x, _ in adds)
    share = statistics.median(y for _, y in adds)
    print("\nmedian added: %.1f us per step, %.1f %% of the scheduler's own CPU time" % (med, share * 100))


def engine_run(shim, work_ms, era="v0_16_0"):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROFILEMATE_", "VLLM_", "PMSIM_"))}
    env.update(PYTHONPATH=os.pathsep.join(([SHIM] if shim else []) + [os.path.join(ROOT, "testbed", "eras", era),
                                                                     os.path.join(ROOT, "testbed")]),
               PMSIM_TP="1", PMSIM_STEP_WORK_MS=str(work_ms), PYTHONDONTWRITEBYTECODE="1")
    with tempfile.TemporaryDirectory() as out:
        env["PROFILEMATE_OUTPUT_DIR"] = out
        env["PROFILEMATE_SOCKET"] = "off"  # no agent lookup: the folder sink, as measured before
        env["PMSIM_GROUND_TRUTH"] = os.path.join(out, "truth.json")
        r = subprocess.run([sys.executable, "-c", DRIVER], env=env, capture_output=True, text=True, timeout=300)
        if r.returncode:
            raise SystemExit(r.stderr[-3000:])
        res = json.loads(r.stdout.strip().splitlines()[-1])
        if res["shim"] != shim:
            raise SystemExit("shim active=%s, wanted %s" % (res["shim"], shim))
        if shim and not any(d.startswith("session_") for d in os.listdir(out)):
            raise SystemExit("the shim wrote nothing: not active in the engine")
    return res


def machine():
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--step-work-ms", type=float, default=10.0, help="PMSIM_STEP_WORK_MS (simulator default 10)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pinned", action="store_true", help="only the pinned scheduler workload (per-step cost and share)")
    ap.add_argument("--versus", help="with --pinned or --paired: another shim folder (before), run alongside this checkout's")
    ap.add_argument("--paired", action="store_true",
                    help="the pinned workload with the shim's EngineCore wrappers in place on every other step")
    args = ap.parse_args()
    print("machine: %s, %d CPUs; Python %s; load average %.1f" % (machine(), os.cpu_count(), platform.python_version(),
                                                                 os.getloadavg()[0]))
    if args.paired:
        paired(args.rounds, os.path.abspath(args.versus) if args.versus else None)
        return
    if args.pinned and args.versus:
        pinned_versus(args.rounds, os.path.abspath(args.versus))
        return
    if args.pinned:
        pinned(args.rounds)
        return
    print("\n| path | unwrapped ns | wrapped ns | added ns | ratio |\n|---|---|---|---|---|")
    for label, (b, w) in bench_evict().items():
        print("| %s | %.0f | %.0f | %.0f | %.2fx |" % (label, b, w, w - b, w / b))
    b, w = bench_schedule()
    print("| schedule() | %.0f | %.0f | %.0f | %.2fx |" % (b, w, w - b, w / b))
    for work in sorted({args.step_work_ms, 0.0}, reverse=True):
        off, on = [], []
        for _ in range(args.rounds):  # alternated, so drift hits both sides
            off += engine_run(False, work)["times"]
            res = engine_run(True, work)
            on += res["times"]
        mo, mn = statistics.median(off) / 1e6, statistics.median(on) / 1e6
        print("\nEngineCore.step, PMSIM_STEP_WORK_MS=%g, %d steps x %d rounds per side: median %.3f ms without, "
              "%.3f ms with the shim (%+.2f%%, %+.1f us)" % (work, res["steps"], args.rounds, mo, mn,
                                                            (mn / mo - 1) * 100, (mn - mo) * 1e3))


if __name__ == "__main__":
    main()
