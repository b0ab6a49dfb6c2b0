"""KVCacheManager (EngineCore process): allocation failures (allocate_slots -> None), prefix-cache
hits (get_computed_blocks, committed when the same request's allocation succeeds), blocks freed
(free-block count around free), and in the block-pool-less eras (v0.6.6-v0.7.x) the pool's own
eviction and block allocation.

The counters of the step in progress live in STEP (indexes below); the scheduler's schedule()
wrapper turns them into one kv_cache_usage row (and a kv_cache_evictions row when blocks were
evicted) per real step and zeroes them. block_pool.py feeds the same counters.
"""
from profilemate.targets import Hook, Path, Target

# STEP indexes: blocks allocated, blocks freed, allocation failures, prefix-hit tokens, prefix
# query tokens, blocks evicted, allocations that evicted.
ALLOC, FREED, FAIL, HIT, QUERY, EVICTED, EVICT_OPS = range(7)
STEP = [0] * 7
# The last prefix lookup: [request, hit tokens]. Its hits count once that request's allocation succeeds
# (a lookup whose allocation fails is retried, and looked up again, in a later step).
_LOOKUP = [None, 0]


def reset():
    STEP[:] = [0] * 7
    _LOOKUP[0], _LOOKUP[1] = None, 0


def free_blocks_of(kvm):
    """Free blocks of a KVCacheManager's pool, whatever the era (None when unknown)."""
    try:
        pool = getattr(kvm, "block_pool", None)
        fn = getattr(pool, "get_num_free_blocks", None)
        if fn is not None:
            return fn()
        q = getattr(kvm, "free_block_queue", None)  # v0.6.6-v0.7.x: the pool is the manager
        if q is not None and hasattr(q, "num_free_blocks"):
            return q.num_free_blocks
        total = total_blocks_of(kvm)
        usage = kvm.usage
        if total and isinstance(usage, float):
            return int(round((1.0 - usage) * total))
    except Exception:
        pass
    return None


def total_blocks_of(kvm):
    """Usable blocks of the pool (vLLM's null block excluded, as get_usage() does)."""
    pool = getattr(kvm, "block_pool", None)
    owner = pool if hasattr(pool, "num_gpu_blocks") else kvm
    n = getattr(owner, "num_gpu_blocks", None)
    if not isinstance(n, int):
        return None
    return n - 1 if getattr(owner, "null_block", None) is not None else n


def _allocate(original, rt):
    step = STEP
    lookup = _LOOKUP

    def allocate_slots(self, request, *args, **kwargs):
        out = original(self, request, *args, **kwargs)
        if out is None:
            step[FAIL] += 1
        elif lookup[0] is request:
            step[HIT] += lookup[1]
            try:
                step[QUERY] += request.num_tokens
            except Exception:
                pass
            lookup[0] = None
        return out
    return allocate_slots


def _computed(original, rt):
    lookup = _LOOKUP

    def get_computed_blocks(self, request, *args, **kwargs):
        out = original(self, request, *args, **kwargs)
        try:
            # (blocks, hit tokens) since v0.7, (blocks, local hits, external hits) at main-2026-08-20;
            # a bare block list before.
            if isinstance(out, tuple) and len(out) >= 2 and isinstance(out[1], int):
                hits = out[1]
            else:
                hits = len(out) * getattr(self, "block_size", 0)
            lookup[0], lookup[1] = request, hits
        except Exception:
            lookup[0] = None
        return out
    return get_computed_blocks


def _free(original, rt):
    step = STEP

    def free(self, request, *args, **kwargs):
        before = free_blocks_of(self)
        out = original(self, request, *args, **kwargs)
        if before is not None:
            after = free_blocks_of(self)
            if after is not None and after > before:
                step[FREED] += after - before
        return out
    return free


def _evict(original, rt):
    step = STEP

    def _maybe_evict_cached_block(self, block):
        out = original(self, block)
        if out:
            step[EVICTED] += 1
        return out
    return _maybe_evict_cached_block


def _new_blocks(original, rt):
    step = STEP

    def get_new_blocks(self, num_blocks, *args, **kwargs):
        evicted = step[EVICTED]
        out = original(self, num_blocks, *args, **kwargs)
        step[ALLOC] += num_blocks
        if step[EVICTED] != evicted:
            step[EVICT_OPS] += 1
        return out
    return get_new_blocks


TARGET = Target(
    name="kv_cache_manager", component="KVCacheManager", kinds=("kv_cache",),
    paths=[Path("vllm.v1.core.kv_cache_manager", eras="v0.6.6+", hooks=[
        Hook("KVCacheManager", "allocate_slots", _allocate, required=("request",), kinds=("kv_cache",)),
        Hook("KVCacheManager", "get_computed_blocks", _computed, required=("request",), kinds=("kv_cache",),
             optional=True),
        Hook("KVCacheManager", "free", _free, required=("request",), kinds=("kv_cache",)),
        # v0.7.x only (the pool moved to BlockPool in v0.8.0).
        Hook("KVCacheManager", "_maybe_evict_cached_block", _evict, required=("block",), kinds=("kv_cache",),
             optional=True),
        Hook("KVCacheManager", "_get_new_blocks", _new_blocks, required=("num_blocks",), kinds=("kv_cache",),
             optional=True),
    ])],
)
