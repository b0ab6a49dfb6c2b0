"""KVCacheManager (EngineCore process): allocation failures, prefix-cache statistics, blocks freed
(free-block count around free), explicit evictions (evict_blocks, v0.16+), and in the
block-pool-less eras (v0.6.6-v0.7.x) the pool's own eviction and block allocation.

Nothing here runs once per running request: allocate_slots is called for every scheduled request
in every step, so it is not wrapped on the class. Its failures are counted where they show:
- in the running loop, a failed allocation always preempts exactly one request (the victim is
  popped from `running`, then freed through free()), so a free() inside schedule() of a request no
  longer in `running` is one failure (every V1 era; scheduler.py sets stepctx.IN_SCHEDULE);
- in the waiting loop, a request is admitted after its prefix lookup (get_computed_blocks), and
  the wrapper of that lookup puts a one-shot allocate_slots on this manager instance: the next
  call (that request's allocation) counts a failure if it returns None, then removes itself.
  A waiting request that skips the lookup (vLLM's P/D path for KV loaded from a remote prefill,
  `num_computed_tokens > 0`) is not seen; schedule() removes a one-shot left unused.

Prefix-cache statistics follow each era's own definition (vLLM's PrefixCacheStats):
- eras without `KVCacheManager.record_prefix_cache_stats` (<= the 2026-07 mains; v0.7-v0.24):
  vLLM counts in get_computed_blocks, on every lookup: a head waiting request that cannot be
  admitted is looked up, and counted, again in every step it stays blocked;
- eras with it (main-2026-08-20+, #48860): vLLM counts once, when the scheduler admits the request,
  through record_prefix_cache_stats(request, num_hits); that call is wrapped.
Queries are the request's num_tokens, hits the locally computed tokens, as vLLM counts them.

The counters of the step in progress live in profilemate.stepctx (KV_STEP); the scheduler's
schedule() wrapper turns them into one kv_cache_usage row (and a kv_cache_evictions row when
blocks were evicted) per real step and zeroes them. block_pool.py feeds the same counters, and its
pool hooks are reused here for the eras whose manager is the pool.
"""
from profilemate import stepctx
from profilemate.targets.block_pool import maybe_evict_hook, new_blocks_hook
from profilemate.targets._util import Hook, Path, Target

_S = stepctx


def _hits_of(kvm, out):
    # (blocks, hit tokens) since v0.7, (blocks, local hits, external hits) at main-2026-08-20;
    # a bare block list before.
    if isinstance(out, tuple) and len(out) >= 2 and isinstance(out[1], int):
        return out[1]
    return len(out) * getattr(kvm, "block_size", 0)


def _computed(original, rt):
    step = _S.KV_STEP
    in_schedule = _S.IN_SCHEDULE

    def get_computed_blocks(self, request, *args, **kwargs):
        out = original(self, request, *args, **kwargs)
        if in_schedule[0] is not None:
            try:
                _S.arm_allocation(self)  # the admission of this request comes next
            except Exception:
                pass
        if hasattr(type(self), "record_prefix_cache_stats"):
            return out  # the era counts at admission: see _record_stats
        try:
            step[_S.HIT] += _hits_of(self, out)
            step[_S.QUERY] += request.num_tokens
        except Exception:
            pass
        return out
    return get_computed_blocks


def _record_stats(original, rt):
    step = _S.KV_STEP

    def record_prefix_cache_stats(self, request, *args, **kwargs):
        out = original(self, request, *args, **kwargs)
        try:
            hits = args[0] if args else kwargs.get("num_hits", 0)
            step[_S.HIT] += int(hits)
            step[_S.QUERY] += request.num_tokens
        except Exception:
            pass
        return out
    return record_prefix_cache_stats


def _usage(kvm):
    try:
        u = kvm.usage
        return float(u() if callable(u) else u)
    except Exception:
        return ""


def _free(original, rt):
    step = _S.KV_STEP
    free_of = _S.free_blocks_of
    in_schedule, moment = _S.IN_SCHEDULE, _S.VICTIM_MOMENT

    def free(self, request, *args, **kwargs):
        before = free_of(self)
        out = original(self, request, *args, **kwargs)
        if before is not None:
            after = free_of(self)
            if after is not None and after > before:
                step[_S.FREED] += after - before
        sched = in_schedule[0]
        if sched is not None:
            # Inside schedule() only a preemption frees a request, and only a failed allocation in the
            # running loop preempts: vLLM pops the victim from running, frees it, then prepends it to
            # waiting (+1). The moment is kept for the eras whose victims schedule() finds afterwards.
            try:
                if request not in sched.running:
                    step[_S.FAIL] += 1
                    moment[id(request)] = (_usage(self), len(sched.waiting) + 1, len(sched.running))
            except Exception:
                pass
        return out
    return free


_K = ("kv_cache",)

TARGET = Target(
    tables=("kv_cache_usage", "kv_cache_evictions"),
    name="kv_cache_manager", component="KVCacheManager", kinds=_K,
    paths=[Path("vllm.v1.core.kv_cache_manager", eras="v0.6.6+", hooks=[
        Hook("KVCacheManager", "get_computed_blocks", _computed, required=("request",), kinds=_K, optional=True),
        Hook("KVCacheManager", "record_prefix_cache_stats", _record_stats, required=("request",), kinds=_K,
             optional=True),
        Hook("KVCacheManager", "free", _free, required=("request",), kinds=_K),
        # v0.7.x only (the pool moved to BlockPool in v0.8.0).
        Hook("KVCacheManager", "_maybe_evict_cached_block", maybe_evict_hook, required=("block",), kinds=_K,
             optional=True),
        Hook("KVCacheManager", "_get_new_blocks", new_blocks_hook, required=("num_blocks",), kinds=_K,
             optional=True),
    ])],
)
