"""GPUModelRunner (worker process, or EngineCore under UniProcExecutor): the real model-runner
step counter, and per step: forward_pass_timing (CPU wall + GPU time from pooled CUDA events),
cuda_graph_usage (from the dispatch decision the cuda_graph target notes in STEP, or from the
runner's use_cuda_graph/cudagraph_batch_sizes where the era has no dispatcher), the runner's CPU
phases, encoder calls, and the MoE counter snapshots.

Paths: V1 `vllm.v1.worker.gpu_model_runner` (all V1 eras) and V2
`vllm.v1.worker.gpu.model_runner` (2025-11-21+); V2 encoder `...gpu.mm.encoder_runner`.
Steps run inside capture_model, profile_run or _dummy_run, and V2 calls with
dummy_run/is_profile, are not counted. Rows of a step are written once the step number is known
(after execute_model), so phases and the encoder carry the step they ran in.
"""
import os
import threading
import time

from profilemate.gpu_timing import POOL
from profilemate.moe_counter import COUNTERS
from profilemate import stepctx
from profilemate.targets._util import Hook, Path, Target

_pc = time.perf_counter_ns
_excluded = threading.local()


STEP = stepctx.STEP


def moe_interval():
    try:
        return max(1, int(os.environ.get("PROFILEMATE_MOE_INTERVAL_STEPS", "32")))
    except ValueError:
        return 32


_interval = [None]


def _exclude(original, rt):
    def excluded(self, *args, **kwargs):
        depth = getattr(_excluded, "depth", 0)
        _excluded.depth = depth + 1
        try:
            return original(self, *args, **kwargs)
        finally:
            _excluded.depth = depth
    return excluded


def _capture_model(original, rt):
    def capture_model(self, *args, **kwargs):
        depth = getattr(_excluded, "depth", 0)
        _excluded.depth = depth + 1
        STEP.capturing += 1
        try:
            return original(self, *args, **kwargs)
        finally:
            STEP.capturing -= 1
            _excluded.depth = depth
            try:
                stepctx.flush_captures(rt.record)
            except Exception:
                pass
    return capture_model


def _mode_name(mode):
    name = getattr(mode, "name", None)
    return name if isinstance(name, str) else str(mode)


def _runner_decision(runner, n):
    """Eras without a dispatcher (<= v0.9): piecewise when graphs are on and n fits a size."""
    sizes = getattr(runner, "cudagraph_batch_sizes", None) or []
    if getattr(runner, "use_cuda_graph", False) and sizes and n <= max(sizes):
        return "PIECEWISE", min(s for s in sizes if s >= n)
    return "NONE", n


def _graphs_on(runner):
    return bool(getattr(runner, "cudagraph_batch_sizes", None)) or bool(getattr(runner, "use_cuda_graph", False))


def _fp_done(rt):
    record = rt.record

    def done(ms, data):
        step, cols = data
        if ms is None:
            cols["gpu_status"] = "unobservable"
        else:
            cols["gpu_ms"], cols["gpu_status"] = ms, "measured"
        record("forward_pass", "forward_pass_timing", cols, step)
    return done


def _enc_done(rt):
    record = rt.record

    def done(ms, data):
        step, cols = data
        cols["encoder_gpu_ms"] = ms if ms is not None else ""
        record("encoder_decoder", "encoder_decoder_timing", cols, step)
    return done


def _moe_emit(rt):
    record = rt.record

    def emit(step, cols):
        record("moe_expert", "moe_expert_selection", cols, step)
    return emit


def finish(rt):
    """At exit: the last MoE interval and the GPU times still pending."""
    if COUNTERS.layers or COUNTERS.unobservable:
        if rt.RECORDER.step > COUNTERS.last_step:
            COUNTERS.poll(_moe_emit(rt))
            COUNTERS.snapshot(rt.RECORDER.step)
        deadline = time.monotonic() + 2.0
        while not COUNTERS.poll(_moe_emit(rt)) and COUNTERS.pending is not None and time.monotonic() < deadline:
            time.sleep(0.001)
    POOL.poll(wait_s=2.0)
    for on_done, (step, cols) in POOL.drain_unresolved():
        if "gpu_status" in cols:
            cols["gpu_status"] = "pending"
            rt.record("forward_pass", "forward_pass_timing", cols, step)
        else:
            on_done(None, (step, cols))


def _execute(original, rt):
    record = rt.record
    fp_done, enc_done, emit = _fp_done(rt), _enc_done(rt), _moe_emit(rt)
    if finish not in [getattr(h, "__wrapped_finish__", None) for h in rt.FINAL_HOOKS]:
        hook = lambda: finish(rt)  # noqa: E731
        hook.__wrapped_finish__ = finish
        rt.FINAL_HOOKS.append(hook)

    def execute_model(self, *args, **kwargs):
        if getattr(_excluded, "depth", 0) or kwargs.get("dummy_run") or kwargs.get("is_profile") or STEP.active:
            return original(self, *args, **kwargs)
        STEP.reset()
        STEP.active = True
        pair = POOL.start()
        t0 = _pc()
        try:
            out = original(self, *args, **kwargs)
        finally:
            t1 = _pc()
            STEP.active = False
        try:
            _after_step(self, args, kwargs, t0, t1, pair)
        except Exception:
            pass
        return out

    def _after_step(self, args, kwargs, t0, t1, pair):
        so = args[0] if args else kwargs.get("scheduler_output")
        tokens = getattr(so, "total_num_scheduled_tokens", 0) or 0
        if tokens <= 0:
            if pair is not None:
                POOL.free.append(pair)
            return
        step = rt.next_step("runner")
        mode, padded, source = STEP.mode, STEP.padded, STEP.source
        if mode is None:
            mode, padded = _runner_decision(self, tokens)
            source = "runner"
        if padded is None:
            padded = tokens
        COUNTERS.note_mode(mode)
        if rt.enabled("cuda_graph"):
            reqs = getattr(so, "num_scheduled_tokens", None)
            record("cuda_graph", "cuda_graph_usage", {
                "runtime_mode": mode, "unpadded_tokens": tokens, "padded_tokens": padded,
                "num_reqs": len(reqs) if reqs is not None else "",
                "eager_fallback": mode == "NONE" and _graphs_on(self), "source": source}, step)
        cols = {"cpu_ms": (t1 - t0) / 1e6, "gpu_ms": "", "gpu_status": "unavailable",
                "tokens": padded, "runtime_mode": mode}
        if pair is None or not POOL.stop(pair, fp_done, (step, cols)):
            record("forward_pass", "forward_pass_timing", cols, step)
        for op, ms in STEP.phases:
            record("cpu_timing", "cpu_operations_timing", {"operation": op, "cpu_ms": ms}, step)
        for cpu_ms, items, epair in STEP.encoder:
            ecols = {"encoder_cpu_ms": cpu_ms, "encoder_gpu_ms": "", "mm_items": items}
            if epair is None or not POOL.stop(epair, enc_done, (step, ecols)):
                record("encoder_decoder", "encoder_decoder_timing", ecols, step)
        POOL.poll()
        if COUNTERS.layers or COUNTERS.unobservable:
            COUNTERS.poll(emit)
            iv = _interval[0] or _interval.__setitem__(0, moe_interval()) or _interval[0]
            if step - COUNTERS.last_step >= iv or COUNTERS.rebase_pending:
                COUNTERS.snapshot(step)
                COUNTERS.poll(emit)
    return execute_model


def _phase(operation):
    def factory(original, rt):
        record = rt.record

        def timed(self, *args, **kwargs):
            t0 = _pc()
            out = original(self, *args, **kwargs)
            ms = (_pc() - t0) / 1e6
            if STEP.active:
                STEP.phases.append((operation, ms))
            elif not getattr(_excluded, "depth", 0):
                record("cpu_timing", "cpu_operations_timing", {"operation": operation, "cpu_ms": ms})
            return out
        return timed
    return factory


def _mm_items(args, kwargs):
    """Items encoded: the scheduler output's encoder inputs (V1), else the mm_kwargs list (V2)."""
    for so in list(args) + [kwargs.get("scheduler_output")]:
        enc = getattr(so, "scheduled_encoder_inputs", None)
        if isinstance(enc, dict):
            return sum(len(v) for v in enc.values())
    items = kwargs.get("mm_kwargs", args[-1] if args else None)
    try:
        return len(items)
    except TypeError:
        return ""


def _encoder(original, rt):
    def encoder(self, *args, **kwargs):
        if not STEP.active:
            return original(self, *args, **kwargs)
        pair = POOL.start()
        t0 = _pc()
        out = original(self, *args, **kwargs)
        STEP.encoder.append(((_pc() - t0) / 1e6, _mm_items(args, kwargs), pair))
        return out
    return encoder


_V1_PHASES = ("_update_states", "_prepare_inputs", "_build_attention_metadata", "_preprocess", "_model_forward",
              "_sample", "_bookkeeping_sync", "propose_draft_token_ids", "sample_tokens")
_V2_PHASES = ("add_requests", "update_requests", "finish_requests", "gather_batch_req_state", "prepare_inputs",
              "prepare_attn", "sample", "postprocess", "postprocess_sampled", "sample_tokens")


def _hooks(phases, encoders):
    hooks = [
        Hook("GPUModelRunner", "execute_model", _execute, required=("scheduler_output",)),
        Hook("GPUModelRunner", "capture_model", _capture_model, optional=True),
        Hook("GPUModelRunner", "profile_run", _exclude, optional=True),
        Hook("GPUModelRunner", "_dummy_run", _exclude, optional=True),
    ]
    hooks += [Hook("GPUModelRunner", p, _phase(p.lstrip("_")), kinds=("cpu_timing",), optional=True)
              for p in phases]
    hooks += [Hook("GPUModelRunner", e, _encoder, kinds=("encoder_decoder",), optional=True) for e in encoders]
    return hooks


TARGET = Target(
    tables=("forward_pass_timing", "cpu_operations_timing", "encoder_decoder_timing", "cuda_graph_usage"),
    name="gpu_model_runner", component="GPUModelRunner",
    kinds=("forward_pass", "cpu_timing", "encoder_decoder"),
    paths=[
        Path("vllm.v1.worker.gpu_model_runner", eras="v0.6.6+ (V1 runner)",
             hooks=_hooks(_V1_PHASES, ("_execute_mm_encoder", "_execute_encoder"))),
        Path("vllm.v1.worker.gpu.model_runner", eras="2025-11-21+ (V2 runner)", hooks=_hooks(_V2_PHASES, ())),
        Path("vllm.v1.worker.gpu.mm.encoder_runner", eras="2025-11-21+ (V2 encoder)",
             hooks=[Hook("EncoderRunner", "execute_mm_encoder", _encoder, kinds=("encoder_decoder",))]),
    ],
)
