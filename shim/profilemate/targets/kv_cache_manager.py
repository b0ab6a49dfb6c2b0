"""KVCacheManager (EngineCore process): allocation failures (allocate_slots -> None) and frees;
in the block-pool-less eras (v0.6.6-v0.7.x) also its own eviction and block allocation.

Counters live in STATS for the KV profiler, which turns them into kv_cache_* rows.
"""
from profilemate.targets import Hook, Path, Target

STATS = {"alloc_calls": 0, "alloc_failures": 0, "frees": 0, "evictions": 0, "blocks_allocated": 0}


def _allocate(original, rt):
    def allocate_slots(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        STATS["alloc_calls"] += 1
        if out is None:
            STATS["alloc_failures"] += 1
        return out
    return allocate_slots


def _free(original, rt):
    def free(self, *args, **kwargs):
        STATS["frees"] += 1
        return original(self, *args, **kwargs)
    return free


def _evict(original, rt):
    def _maybe_evict_cached_block(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if out:
            STATS["evictions"] += 1
        return out
    return _maybe_evict_cached_block


def _new_blocks(original, rt):
    def _get_new_blocks(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        STATS["blocks_allocated"] += len(out) if out is not None else 0
        return out
    return _get_new_blocks


TARGET = Target(
    name="kv_cache_manager", component="KVCacheManager", kinds=("kv_cache",),
    paths=[Path("vllm.v1.core.kv_cache_manager", eras="v0.6.6+", hooks=[
        Hook("KVCacheManager", "allocate_slots", _allocate, required=("request",), kinds=("kv_cache",)),
        Hook("KVCacheManager", "free", _free, required=("request",), kinds=("kv_cache",)),
        # v0.7.x only (the pool moved to BlockPool in v0.8.0).
        Hook("KVCacheManager", "_maybe_evict_cached_block", _evict, kinds=("kv_cache",), optional=True),
        Hook("KVCacheManager", "_get_new_blocks", _new_blocks, kinds=("kv_cache",), optional=True),
    ])],
)
