"""Scheduler (EngineCore process): the real scheduler step counter, schedule() CPU time and
batch utilisation.

Paths: `vllm.v1.core.sched.scheduler` (v0.8.2+, AsyncScheduler inherits schedule) and
`vllm.v1.core.scheduler` (v0.6.6-v0.8.1, e.g. v0.7.3).
"""
import time

from profilemate.targets import Hook, Path, Target

_pc = time.perf_counter_ns


def _schedule(original, rt):
    record = rt.record

    def schedule(self, *args, **kwargs):
        t0 = _pc()
        out = original(self, *args, **kwargs)
        t1 = _pc()
        try:
            tokens = getattr(out, "total_num_scheduled_tokens", 0) or 0
            if tokens > 0:  # a step that runs the model; empty schedules are not steps
                rt.next_step("scheduler")
            record("cpu_timing", "cpu_operations_timing", {"operation": "schedule", "cpu_ms": (t1 - t0) / 1e6})
            if tokens > 0 and rt.enabled("batch_util"):
                budget = getattr(self, "max_num_scheduled_tokens", 0) or 0
                reqs = len(getattr(out, "num_scheduled_tokens", ()) or ())
                max_reqs = getattr(self, "max_num_running_reqs", 0) or 0
                record("batch_util", "batch_utilization", {
                    "scheduled_tokens": tokens, "token_budget": budget,
                    "token_util": tokens / budget if budget else 0.0,
                    "running_reqs": reqs, "max_running_reqs": max_reqs,
                    "req_util": reqs / max_reqs if max_reqs else 0.0,
                    "waiting": len(getattr(self, "waiting", ()) or ()),
                    "running": len(getattr(self, "running", ()) or ()),
                })
        except Exception:
            pass
        return out
    return schedule


def _timed(operation):
    def factory(original, rt):
        record = rt.record

        def timed(self, *args, **kwargs):
            t0 = _pc()
            out = original(self, *args, **kwargs)
            record("cpu_timing", "cpu_operations_timing", {"operation": operation, "cpu_ms": (_pc() - t0) / 1e6})
            return out
        return timed
    return factory


def _hooks():
    return [
        Hook("Scheduler", "schedule", _schedule),
        Hook("Scheduler", "update_from_output", _timed("update_from_output"),
             required=("scheduler_output", "model_runner_output"), kinds=("cpu_timing",)),
    ]


TARGET = Target(
    name="scheduler", component="Scheduler", kinds=("batch_util", "preemption", "cpu_timing"),
    paths=[
        Path("vllm.v1.core.sched.scheduler", eras="v0.8.2+", hooks=_hooks()),
        Path("vllm.v1.core.scheduler", eras="v0.6.6-v0.8.1", hooks=_hooks()),
    ],
)
