"""Scheduler (EngineCore process): the real scheduler step counter, schedule() and
update_from_output() CPU time, batch utilisation, preemptions, and the per-step KV cache rows
built from the counters the KV hooks keep (kv_cache_manager.STEP).

Paths: `vllm.v1.core.sched.scheduler` (v0.8.2+, AsyncScheduler inherits schedule) and
`vllm.v1.core.scheduler` (v0.6.6-v0.8.1, e.g. v0.7.3).

Steps (proto/tables/common.json): a schedule() that schedules tokens is a step, numbered from 1.
Every row made inside schedule() (preemptions, KV rows, batch rows) carries the number of the
step that call produces; a preemption in a call that schedules nothing carries the number of the
next step, the one that will run.

Budgets: `Scheduler.max_num_scheduled_tokens` / `max_num_running_reqs` (every V1 era, set from
`scheduler_config.max_num_batched_tokens` / `max_num_seqs`), else scheduler_config itself; a
limit found nowhere is an empty cell (unknown), never 0.

Preemptions: where `_preempt_request` exists (2025-12-01+) it is wrapped and records each victim
as it happens; elsewhere schedule() snapshots the running queue and reports the requests that
end it PREEMPTED; the KV usage and queue lengths of such a victim are those noted when vLLM's
inline code freed it inside schedule() (kv_cache_manager's free hook; with the kv_cache profiler
off, those at the end of schedule()). `SchedulerOutput.preempted_req_ids` is never read, so a
victim it also lists is not counted twice.
"""
import time

from profilemate import stepctx
from profilemate.targets._util import Hook, Path, Target

_pc = time.perf_counter_ns
_S = stepctx
_STEP = stepctx.KV_STEP
# Set while a _preempt_request wrapper is installed: victims are then recorded there.
_PREEMPT_HOOKED = [False]
# Prefill/decode split computed by _update_after_schedule before vLLM advances the computed tokens.
_SPLIT = [None]
# Preemptions seen per request id, for eras whose requests have no num_preemptions.
_COUNTS = {}


def _name(status):
    return getattr(status, "name", status)


def _upcoming(rt):
    s = rt.RECORDER.step
    return (s if s > 0 else 0) + 1


def _kv_usage(sched):
    try:
        u = sched.kv_cache_manager.usage
        return float(u() if callable(u) else u)
    except Exception:
        return ""  # unknown (v0.6.6 has no usage): an empty cell


def _record_victim(rt, sched, req, lost, source, moment=None):
    """moment: (kv usage, waiting, running) right after the preemption, when seen then; else read now."""
    rid = getattr(req, "request_id", "")
    n = getattr(req, "num_preemptions", None)
    own = _COUNTS.get(rid, 0) + 1
    _COUNTS[rid] = own
    if not isinstance(n, int) or n <= 0:
        n = own
    if moment is None:
        moment = (_kv_usage(sched), len(getattr(sched, "waiting", ()) or ()),
                  len(getattr(sched, "running", ()) or ()))
    rt.record("preemption", "preemption_events", {
        "request_id": rid, "tokens_lost": lost, "preemption_count": n, "kv_usage": moment[0],
        "waiting": moment[1], "running": moment[2], "source": source}, step=_upcoming(rt))


def _split(sched, out, advanced):
    """(prefill, decode) scheduled tokens; advanced: num_computed_tokens already includes this step.

    A request is in prefill while its computed tokens (before this step) are fewer than its prompt
    tokens; a request id missing from sched.requests is skipped. One pass over the scheduled
    requests per step (the loop is faster than map/attrgetter chains on 3.11+)."""
    reqs = getattr(sched, "requests", None) or {}
    items = (getattr(out, "num_scheduled_tokens", None) or {}).items()
    prefill = total = 0
    try:  # every id known (always in vLLM): subscripts, no call per request
        if advanced:
            for rid, n in items:
                req = reqs[rid]
                total += n
                if req.num_computed_tokens - n < req.num_prompt_tokens:
                    prefill += n
        else:
            for rid, n in items:
                req = reqs[rid]
                total += n
                if req.num_computed_tokens < req.num_prompt_tokens:
                    prefill += n
        return prefill, total - prefill
    except KeyError:
        pass
    prefill = total = 0
    for rid, n in items:
        req = reqs.get(rid)
        if req is None:
            continue
        total += n
        if req.num_computed_tokens - (n if advanced else 0) < req.num_prompt_tokens:
            prefill += n
    return prefill, total - prefill


def _positive(v):
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def _limits(sched):
    """(token budget, request limit): vLLM's attributes, else its scheduler_config; None when unknown."""
    budget = _positive(getattr(sched, "max_num_scheduled_tokens", None))
    max_reqs = _positive(getattr(sched, "max_num_running_reqs", None))
    if budget is None or max_reqs is None:
        sc = getattr(sched, "scheduler_config", None)
        if budget is None:
            budget = _positive(getattr(sc, "max_num_batched_tokens", None))
        if max_reqs is None:
            max_reqs = _positive(getattr(sc, "max_num_seqs", None))
    return budget, max_reqs


# (scheduler, (token budget, request limit)) and (KV cache manager, total blocks): read once per
# object, since vLLM sets them when it builds the scheduler and the pool.
_LIMITS = [None, None]
_TOTAL = [None, None]


def _limits_of(sched):
    if _LIMITS[0] is not sched:
        _LIMITS[1] = _limits(sched)
        _LIMITS[0] = sched
    return _LIMITS[1]


def _total_of(kvm):
    if _TOTAL[0] is not kvm:
        _TOTAL[1] = _S.total_blocks_of(kvm)
        _TOTAL[0] = kvm
    return _TOTAL[1]


_FREE = [None, None]  # (KV cache manager, its pool's get_num_free_blocks or None)


def _free_of(kvm):
    if _FREE[0] is not kvm:
        _FREE[1] = getattr(getattr(kvm, "block_pool", None), "get_num_free_blocks", None)
        _FREE[0] = kvm
    fn = _FREE[1]
    if fn is not None:
        try:
            return fn()
        except Exception:
            pass
    return _S.free_blocks_of(kvm)


def _kv_rows(rt, sched, kvm):
    total = _total_of(kvm) if kvm is not None else None
    free = _free_of(kvm) if kvm is not None else None
    s = _STEP
    rt.record("kv_cache", "kv_cache_usage", {
        "usage": _kv_usage(sched), "free_blocks": "" if free is None else free,
        "total_blocks": "" if total is None else total,
        "blocks_allocated": s[_S.ALLOC], "blocks_freed": s[_S.FREED],
        "alloc_failures": s[_S.FAIL], "prefix_hit_tokens": s[_S.HIT],
        "prefix_query_tokens": s[_S.QUERY]})
    if s[_S.EVICTED]:
        rt.record("kv_cache", "kv_cache_evictions", {
            "evictions": s[_S.EVICT_OPS], "blocks_evicted": s[_S.EVICTED]})
    _S.kv_reset()


def _schedule(original, rt):
    record = rt.record
    enabled = rt.enabled

    in_schedule, moment = _S.IN_SCHEDULE, _S.VICTIM_MOMENT

    def schedule(self, *args, **kwargs):
        snap = None
        if not _PREEMPT_HOOKED[0] and enabled("preemption"):
            try:
                snap = [(r, r.num_computed_tokens) for r in self.running]
            except Exception:
                snap = None
        _SPLIT[0] = None
        if moment:
            moment.clear()
        # Marks the call for the KV hooks (preemption frees, the waiting loop's allocation).
        in_schedule[0] = self
        t0 = _pc()
        try:
            out = original(self, *args, **kwargs)
        finally:
            t1 = _pc()
            in_schedule[0] = None
        try:
            kvm = getattr(self, "kv_cache_manager", None)
            if kvm is not None:
                _S.disarm_allocation(kvm)
            if snap:
                for r, lost in snap:
                    if _name(getattr(r, "status", None)) == "PREEMPTED":
                        _record_victim(rt, self, r, lost, "scheduler: running-queue diff", moment.pop(id(r), None))
            tokens = getattr(out, "total_num_scheduled_tokens", 0) or 0
            if tokens > 0:  # a step that runs the model; empty schedules are not steps
                rt.next_step("scheduler")
                if enabled("kv_cache"):
                    _kv_rows(rt, self, kvm)
            if enabled("cpu_timing"):
                record("cpu_timing", "cpu_operations_timing", {"operation": "schedule", "cpu_ms": (t1 - t0) / 1e6})
            if tokens > 0 and enabled("batch_util"):
                budget, max_reqs = _limits_of(self)
                reqs = len(getattr(out, "num_scheduled_tokens", ()) or ())
                split = _SPLIT[0] or _split(self, out, False)
                record("batch_util", "batch_utilization", {
                    "scheduled_tokens": tokens, "token_budget": "" if budget is None else budget,
                    "token_util": "" if budget is None else tokens / budget,
                    "running_reqs": reqs, "max_running_reqs": "" if max_reqs is None else max_reqs,
                    "req_util": "" if max_reqs is None else reqs / max_reqs,
                    "waiting": len(getattr(self, "waiting", ()) or ()),
                    "running": len(getattr(self, "running", ()) or ()),
                    "prefill_tokens": split[0], "decode_tokens": split[1],
                })
        except Exception:
            pass
        return out
    return schedule


def _after_schedule(original, rt):
    """Runs inside schedule() before vLLM advances num_computed_tokens: the split is taken here."""
    def _update_after_schedule(self, scheduler_output, *args, **kwargs):
        try:
            _SPLIT[0] = _split(self, scheduler_output, False)
        except Exception:
            _SPLIT[0] = None
        return original(self, scheduler_output, *args, **kwargs)
    return _update_after_schedule


def _preempt(original, rt):
    _PREEMPT_HOOKED[0] = True

    def _preempt_request(self, request, *args, **kwargs):
        try:
            lost = request.num_computed_tokens  # zeroed by the call
        except Exception:
            lost = ""  # unknown: an empty cell
        out = original(self, request, *args, **kwargs)
        try:
            _record_victim(rt, self, request, lost, "scheduler: _preempt_request")
        except Exception:
            pass
        return out
    return _preempt_request


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
        # Always on: it counts the steps, and emits the per-step rows of every EngineCore kind.
        Hook("Scheduler", "schedule", _schedule),
        Hook("Scheduler", "_preempt_request", _preempt, required=("request",), kinds=("preemption",),
             optional=True),
        Hook("Scheduler", "_update_after_schedule", _after_schedule, required=("scheduler_output",),
             kinds=("batch_util",), optional=True),
        Hook("Scheduler", "update_from_output", _timed("update_from_output"),
             required=("scheduler_output", "model_runner_output"), kinds=("cpu_timing",)),
    ]


TARGET = Target(
    tables=("batch_utilization", "preemption_events", "cpu_operations_timing", "kv_cache_usage", "kv_cache_evictions"),
    name="scheduler", component="Scheduler", kinds=("batch_util", "preemption", "cpu_timing", "kv_cache"),
    paths=[
        Path("vllm.v1.core.sched.scheduler", eras="v0.8.2+", hooks=_hooks()),
        Path("vllm.v1.core.scheduler", eras="v0.6.6-v0.8.1", hooks=_hooks()),
    ],
)
