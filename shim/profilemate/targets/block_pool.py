"""BlockPool (EngineCore process, v0.8.0+): evictions (_maybe_evict_cached_block -> True) and
blocks allocated (get_new_blocks). Absent in v0.6.6-v0.7.x, where KVCacheManager holds the pool.

Per-block hot path: the eviction wrapper only bumps a counter of the step in progress
(kv_cache_manager.STEP); the scheduler aggregates it into one row per step. Freed blocks are
counted around KVCacheManager.free, so free_blocks needs no hook.
"""
from profilemate.targets import Hook, Path, Target
from profilemate.targets.kv_cache_manager import _evict, _new_blocks

TARGET = Target(
    name="block_pool", component="BlockPool", kinds=("kv_cache",),
    paths=[Path("vllm.v1.core.block_pool", eras="v0.8.0+", hooks=[
        Hook("BlockPool", "get_new_blocks", _new_blocks, required=("num_blocks",), kinds=("kv_cache",)),
        Hook("BlockPool", "_maybe_evict_cached_block", _evict, required=("block",), kinds=("kv_cache",)),
    ])],
)
