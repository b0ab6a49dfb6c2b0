"""BlockPool (EngineCore process, v0.8.0+): evictions and blocks allocated. Absent in
v0.6.6-v0.7.x, where KVCacheManager holds the pool (kv_cache_manager.py reuses the hooks below).

Evictions have two roads:
- `_maybe_evict_cached_block(block) -> True` while `get_new_blocks` reuses a cached free block
  (per-block hot path: the wrapper only bumps a counter of the step in progress);
- `evict_blocks(block_ids)` (v0.16+), vLLM's explicit eviction of cached blocks by id: the blocks
  that held a hash before the call and none after are counted, less any that the call already
  counted through `_maybe_evict_cached_block`, so neither road is missed or counted twice.
The counters live in profilemate.stepctx.KV_STEP; the scheduler writes one row per step. Freed
blocks are counted around KVCacheManager.free, so free_blocks needs no hook.
"""
from profilemate import stepctx
from profilemate.targets._util import Hook, Path, Target

_S = stepctx


def maybe_evict_hook(original, rt):
    """Wrapper factory for _maybe_evict_cached_block (BlockPool; KVCacheManager in v0.7.x)."""
    step = _S.KV_STEP

    def _maybe_evict_cached_block(self, block, *args, **kwargs):
        out = original(self, block, *args, **kwargs)
        if out:
            step[_S.EVICTED] += 1
        return out
    return _maybe_evict_cached_block


def new_blocks_hook(original, rt):
    """Wrapper factory for get_new_blocks (BlockPool; _get_new_blocks on KVCacheManager in v0.7.x)."""
    step = _S.KV_STEP

    def get_new_blocks(self, num_blocks, *args, **kwargs):
        evicted = step[_S.EVICTED]
        out = original(self, num_blocks, *args, **kwargs)
        step[_S.ALLOC] += num_blocks
        if step[_S.EVICTED] != evicted:
            step[_S.EVICT_OPS] += 1
        return out
    return get_new_blocks


def _cached(pool, block_ids):
    blocks = getattr(pool, "blocks", None)
    out = []
    for i in block_ids:
        try:
            b = blocks[i]
            if getattr(b, "block_hash", None) is not None:
                out.append(b)
        except Exception:
            pass
    return out


def evict_blocks_hook(original, rt):
    """Wrapper factory for BlockPool.evict_blocks(block_ids) (v0.16+)."""
    step = _S.KV_STEP

    def evict_blocks(self, block_ids, *args, **kwargs):
        before = []
        if isinstance(block_ids, (set, frozenset, list, tuple)):  # re-iterable: vLLM still gets it whole
            try:
                before = _cached(self, block_ids)
            except Exception:
                before = []
        counted = step[_S.EVICTED]
        out = original(self, block_ids, *args, **kwargs)
        try:
            gone = sum(1 for b in before if getattr(b, "block_hash", None) is None)
            extra = gone - (step[_S.EVICTED] - counted)
            if extra > 0:
                step[_S.EVICTED] += extra
            if gone:
                step[_S.EVICT_OPS] += 1
        except Exception:
            pass
        return out
    return evict_blocks


_K = ("kv_cache",)

TARGET = Target(
    tables=("kv_cache_usage", "kv_cache_evictions"),
    name="block_pool", component="BlockPool", kinds=_K,
    paths=[Path("vllm.v1.core.block_pool", eras="v0.8.0+", hooks=[
        Hook("BlockPool", "get_new_blocks", new_blocks_hook, required=("num_blocks",), kinds=_K),
        Hook("BlockPool", "_maybe_evict_cached_block", maybe_evict_hook, required=("block",), kinds=_K),
        Hook("BlockPool", "evict_blocks", evict_blocks_hook, required=("block_ids",), kinds=_K, optional=True),
    ])],
)
