"""BlockPool (EngineCore process, v0.8.0+): evictions (_maybe_evict_cached_block -> True),
blocks allocated and freed. Absent in v0.6.6-v0.7.x, where KVCacheManager holds the pool.

Per-block hot path: the wrappers only bump counters in STATS.
"""
from profilemate.targets import Hook, Path, Target

STATS = {"evictions": 0, "blocks_allocated": 0, "blocks_freed": 0}


def _evict(original, rt):
    def _maybe_evict_cached_block(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if out:
            STATS["evictions"] += 1
        return out
    return _maybe_evict_cached_block


def _new(original, rt):
    def get_new_blocks(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        STATS["blocks_allocated"] += len(out) if out is not None else 0
        return out
    return get_new_blocks


def _freed(original, rt):
    def free_blocks(self, *args, **kwargs):
        STATS["blocks_freed"] += 1
        return original(self, *args, **kwargs)
    return free_blocks


TARGET = Target(
    name="block_pool", component="BlockPool", kinds=("kv_cache",),
    paths=[Path("vllm.v1.core.block_pool", eras="v0.8.0+", hooks=[
        Hook("BlockPool", "get_new_blocks", _new, required=("num_blocks",), kinds=("kv_cache",)),
        Hook("BlockPool", "free_blocks", _freed, required=("ordered_blocks",), kinds=("kv_cache",)),
        Hook("BlockPool", "_maybe_evict_cached_block", _evict, required=("block",), kinds=("kv_cache",)),
    ])],
)
