"""GPUModelRunner (worker process, or EngineCore under UniProcExecutor): the real model-runner
step counter and execute_model CPU time.

Paths: V1 `vllm.v1.worker.gpu_model_runner` (all V1 eras) and V2
`vllm.v1.worker.gpu.model_runner` (2025-11-21+). Steps run inside capture_model, profile_run
or _dummy_run, and V2 calls with dummy_run/is_profile, are not counted.
"""
import threading
import time

from profilemate.targets import Hook, Path, Target

_pc = time.perf_counter_ns
_excluded = threading.local()


def _exclude(original, rt):
    def excluded(self, *args, **kwargs):
        depth = getattr(_excluded, "depth", 0)
        _excluded.depth = depth + 1
        try:
            return original(self, *args, **kwargs)
        finally:
            _excluded.depth = depth
    return excluded


def _execute(original, rt):
    record = rt.record

    def execute_model(self, *args, **kwargs):
        t0 = _pc()
        out = original(self, *args, **kwargs)
        t1 = _pc()
        try:
            if getattr(_excluded, "depth", 0) or kwargs.get("dummy_run") or kwargs.get("is_profile"):
                return out
            so = args[0] if args else kwargs.get("scheduler_output")
            tokens = getattr(so, "total_num_scheduled_tokens", 0) or 0
            if tokens <= 0:
                return out
            step = rt.next_step("runner")
            record("forward_pass", "forward_pass_timing", {
                "cpu_ms": (t1 - t0) / 1e6, "gpu_ms": "", "gpu_status": "not_measured",
                "tokens": tokens, "runtime_mode": ""}, step)
        except Exception:
            pass
        return out
    return execute_model


def _hooks():
    return [
        Hook("GPUModelRunner", "execute_model", _execute, required=("scheduler_output",)),
        Hook("GPUModelRunner", "capture_model", _exclude, optional=True),
        Hook("GPUModelRunner", "profile_run", _exclude, optional=True),
        Hook("GPUModelRunner", "_dummy_run", _exclude, optional=True),
    ]


TARGET = Target(
    name="gpu_model_runner", component="GPUModelRunner",
    kinds=("forward_pass", "cpu_timing", "encoder_decoder"),
    paths=[
        Path("vllm.v1.worker.gpu_model_runner", eras="v0.6.6+ (V1 runner)", hooks=_hooks()),
        Path("vllm.v1.worker.gpu.model_runner", eras="2025-11-21+ (V2 runner)", hooks=_hooks()),
    ],
)
