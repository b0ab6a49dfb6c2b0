"""Entry points: the API server process, `vllm serve`, and offline LLM; they start EngineCore by spawn."""
import argparse
import os
import queue
import random
import sys

from pmsim import config, multinode, procs, truth
from pmsim.util import mod


class SamplingParams:
    def __init__(self, max_tokens=16, temperature=0.0, **kw):
        self.max_tokens = max_tokens
        self.temperature = temperature


class ParallelConfig:
    """The parts of vllm.config.ParallelConfig that vLLM's executor and workers read for ranks."""

    def __init__(self, tp, pp, dp, dp_rank, enable_expert_parallel=False):
        self.tensor_parallel_size = tp
        self.pipeline_parallel_size = pp
        self.data_parallel_size = dp
        self.data_parallel_rank = dp_rank
        self.data_parallel_rank_local = dp_rank
        self.enable_expert_parallel = enable_expert_parallel
        self.world_size = tp * pp  # one engine's workers
        self.world_size_across_dp = tp * pp * dp


class SchedulerConfig:
    """vllm.config.SchedulerConfig's limits (--max-num-batched-tokens, --max-num-seqs)."""

    def __init__(self, max_num_batched_tokens, max_num_seqs):
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs


class VllmConfig:
    """Picklable stand-in for vllm.config.VllmConfig: the model, parallel_config and scheduler_config
    (from PMSIM_TP/PP/DP, PMSIM_TOKEN_BUDGET, PMSIM_MAX_NUM_SEQS); the rest comes from PMSIM_*."""

    def __init__(self, model, dp_rank=0):
        cfg = config.get()
        self.model = model
        self.parallel_config = ParallelConfig(max(cfg.tp, 1), max(cfg.pp, 1), max(cfg.dp, 1), dp_rank)
        self.scheduler_config = SchedulerConfig(cfg.token_budget, cfg.max_num_seqs)


def workload(cfg):
    from pmsim.engine import SimRequest
    rng = random.Random(cfg.seed)
    shared = [rng.randrange(1, 30000) for _ in range(48)]
    reqs = []
    for i in range(cfg.requests):
        n = rng.choice([24, 40, 72, 120, 180])
        prompt = (shared if i % 2 == 0 else []) + [rng.randrange(1, 30000) for _ in range(n)]
        mm = 1 + rng.randrange(2) if rng.random() < cfg.mm_share else 0
        reqs.append(SimRequest("req-%d" % i, prompt, rng.randrange(cfg.max_tokens // 2, cfg.max_tokens + 1), mm))
    return reqs


def run_engine(model, requests=None):
    """Starts EngineCore (spawn), feeds it the workload, waits for the results, merges ground truth.

    Raises if EngineCore fails, dies or stays silent for PMSIM_RPC_TIMEOUT_S; EngineCore and its
    workers are stopped before this returns or raises.
    """
    import multiprocessing
    cfg = config.get()
    rec = truth.start("api_server", 0, model=model, requests=0, completed=0)
    ctx = multiprocessing.get_context("spawn")
    core = mod("vllm.v1.engine.core").EngineCoreProc
    # One EngineCore per data-parallel rank (vLLM: EngineCore_DP<d>), each with its own queues.
    engines = []
    _, local_dp, remote_dp = multinode.dp_layout(cfg)
    for d in local_dp:
        inq, outq = ctx.Queue(), ctx.Queue()
        p = ctx.Process(target=core.run_engine_core, name="EngineCore_DP%d" % d,
                        kwargs=dict(vllm_config=VllmConfig(model, d), input_queue=inq, output_queue=outq))
        p.start()
        engines.append((p, inq, outq))
    truth.on_terminate(lambda: procs.stop([e[0] for e in engines], 5.0))
    results = {}
    try:
        if remote_dp:  # multi-node DP: the other nodes' EngineCores, through their headless `vllm serve`
            want = [d for d in range(max(cfg.dp, 1)) if d not in local_dp]
            outs = {d: queue.Queue() for d in want}
            nodes = multinode.accept_followers(*multinode.dp_endpoint(), want, outs.__getitem__, "EngineCore_DP%d",
                                               cfg.start_timeout_s, [e[0] for e in engines])
            for d in want:
                engines.append((nodes[d].procs[d], nodes[d].inputs[d], outs[d]))
        for p, _, outq in engines:
            _expect(outq, p, cfg, "ready", timeout=cfg.start_timeout_s + cfg.rpc_timeout_s)
        reqs = requests if requests is not None else workload(cfg)
        # Requests go to the engines in turn (the DP coordinator balances load; here: round robin).
        share = [reqs[d::len(engines)] for d in range(len(engines))]
        for (p, inq, _), mine in zip(engines, share):
            for r in mine:
                inq.put(("add", r))
            inq.put(("expect", len(mine)))
        rec["requests"] = len(reqs)
        for p, _, outq in engines:
            while True:
                kind, value = _expect(outq, p, cfg, "finished", "done")
                if kind == "finished":
                    results[value[0]] = value[1]
                elif kind == "done":
                    break
        procs.stop([e[0] for e in engines], cfg.rpc_timeout_s)
        for p, _, _ in engines:
            if p.exitcode != 0:
                raise RuntimeError("EngineCore exited with code %s" % p.exitcode)
    except BaseException:
        # EngineCore may not read what is still queued for it: do not wait on that at exit.
        for _, inq, _ in engines:
            inq.cancel_join_thread()
        procs.stop([e[0] for e in engines], 5.0)
        raise
    finally:
        rec["completed"] = len(results)
        truth.write()
        if cfg.ground_truth:
            truth.merge(cfg.ground_truth)
    return results


def run_in_process(model="sim/moe-tiny", requests=None):
    """The whole engine in this process, no spawn (set PMSIM_TP=1): returns the ground-truth record."""
    from pmsim import engine
    reqs = requests if requests is not None else workload(config.get())
    return engine.run_in_process(VllmConfig(model), reqs)


def _expect(q, proc, cfg, *kinds, timeout=None):
    """The next message from EngineCore among kinds (heartbeats while paused restart the deadline)."""
    while True:
        # Longer than EngineCore's own rpc deadline, so that it can report which worker failed.
        kind, value = procs.get(q, "message from EngineCore", [proc],
                                timeout if timeout is not None else cfg.rpc_timeout_s * 1.5 + 5.0)
        if kind == "error":
            raise RuntimeError("EngineCore failed:\n%s" % value)
        if kind in kinds:
            return kind, value
        if kind != "heartbeat":
            raise RuntimeError("unexpected message %r from EngineCore (waiting for %s)" % (kind, "/".join(kinds)))


def _env_setup():
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")


def api_server_main(argv=None):
    _env_setup()
    parser = argparse.ArgumentParser(prog="vllm.entrypoints.openai.api_server")
    parser.add_argument("--model", default="sim/moe-tiny")
    parser.add_argument("--enforce-eager", action="store_true")
    argv = sys.argv[1:] if argv is None else argv
    args, _ = parser.parse_known_args(argv)
    layout = multinode.apply_flags(argv)  # -tp/-pp/-dp and the multi-node flags
    mod("vllm.plugins").load_general_plugins()
    if args.enforce_eager:
        os.environ["PMSIM_ENFORCE_EAGER"] = "1"
    if layout.headless:
        return multinode.run_headless(args.model)
    results = run_engine(args.model)
    print("pmsim: %d requests completed" % len(results), flush=True)
    return 0


def cli_main():
    _env_setup()
    argv = sys.argv[1:]
    if not argv or argv[0] != "serve":
        print("usage: vllm serve MODEL [--enforce-eager]", file=sys.stderr)
        return 2
    rest = argv[1:]
    model = rest[0] if rest and not rest[0].startswith("-") else "sim/moe-tiny"
    flags = rest[1:] if rest and not rest[0].startswith("-") else rest
    return api_server_main(["--model", model] + flags)


class LLM:
    def __init__(self, model="sim/moe-tiny", **kwargs):
        self.model = model
        if kwargs.get("enforce_eager"):
            os.environ["PMSIM_ENFORCE_EAGER"] = "1"

    def generate(self, prompts=None, sampling_params=None):
        from pmsim.engine import SimRequest
        cfg = config.get()
        reqs = None
        if prompts:
            mt = getattr(sampling_params, "max_tokens", cfg.max_tokens)
            reqs = [SimRequest("req-%d" % i, [ord(c) for c in p] or [1], mt, 0) for i, p in enumerate(prompts)]
        results = run_engine(self.model, reqs)
        return [results[k] for k in sorted(results, key=lambda s: int(s.split("-")[1]))]
