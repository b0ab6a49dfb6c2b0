"""EngineCore side: scheduler, KV cache manager and block pool behaviour, executors, plugins, ranks.

Calls between components go through the era classes' methods (so a patch on, say,
BlockPool._maybe_evict_cached_block sees every call); the state lives on the instances under `_pm*`.
Ground truth is counted here, in the simulator's own bookkeeping, never by wrapping era methods.
"""
import collections
import multiprocessing
import os
import time

from pmsim import config, impl, procs, truth
from pmsim.util import call_filtered, construct, era, make_record, mod


class SimBlock:
    __slots__ = ("block_id", "ref_cnt", "block_hash")

    def __init__(self, block_id):
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash = None


class SimRequest:
    def __init__(self, request_id, prompt_token_ids, max_tokens, mm_items):
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(self.prompt_token_ids)  # an attribute, as vLLM's Request has it
        self.output_token_ids = []
        self.max_tokens = max_tokens
        self.num_computed_tokens = 0
        self.mm_items = mm_items
        self.encoder_done = False
        self.status = "WAITING"

    @property
    def num_tokens(self):
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self):
        return self.prompt_token_ids + self.output_token_ids


# ---------------------------------------------------------------- block pool / KV cache manager


def _pool_init(owner, num_blocks):
    owner._pm_blocks = [SimBlock(i) for i in range(num_blocks)]
    owner.blocks = owner._pm_blocks  # vLLM: BlockPool.blocks, indexed by block id
    owner._pm_free = collections.OrderedDict((b.block_id, b) for b in owner._pm_blocks)
    owner._pm_cached = {}
    owner.num_gpu_blocks = num_blocks
    owner.enable_caching = True


@impl("BlockPool.__init__")
def _bp_init(self, a):
    _pool_init(self, a["num_gpu_blocks"])


def _pool(kvm):
    return kvm if era() < (0, 8) else kvm.block_pool


@impl("BlockPool.get_new_blocks", "KVCacheManager._get_new_blocks")
def _get_new_blocks(self, a):
    n = a["num_blocks"]
    if n > len(self._pm_free):
        raise ValueError("Cannot get %d free blocks from the pool" % n)
    out = []
    for _ in range(n):
        _, blk = self._pm_free.popitem(last=False)
        self._maybe_evict_cached_block(blk)
        blk.ref_cnt = 1
        out.append(blk)
    return out


@impl("BlockPool._maybe_evict_cached_block", "KVCacheManager._maybe_evict_cached_block")
def _maybe_evict(self, a):
    blk = a["block"]
    h = blk.block_hash
    if h is None or self._pm_cached.get(h) is not blk:
        return False
    del self._pm_cached[h]
    blk.block_hash = None
    truth.record()["evictions"] += 1
    return True


@impl("BlockPool.get_num_free_blocks")
def _num_free(self, a):
    return len(self._pm_free)


@impl("BlockPool.get_usage")
def _bp_usage(self, a):
    return 1.0 - len(self._pm_free) / float(len(self._pm_blocks))


@impl("BlockPool.evict_blocks")
def _bp_evict_blocks(self, a):
    """v0.16+: drops the listed blocks from the prefix cache (not through _maybe_evict_cached_block)."""
    for bid in a["block_ids"]:
        blk = self._pm_blocks[bid]
        h = blk.block_hash
        if h is not None and self._pm_cached.get(h) is blk:
            del self._pm_cached[h]
            blk.block_hash = None
            rec = truth.record()
            rec["evictions"] += 1
            rec["explicit_evictions"] += 1


@impl("KVCacheManager.evict_blocks")
def _kvm_evict_blocks(self, a):
    self.block_pool.evict_blocks(a["block_ids"])


@impl("BlockPool.free_blocks")
def _bp_free_blocks(self, a):
    for blk in a["ordered_blocks"]:
        blk.ref_cnt -= 1
        if blk.ref_cnt == 0:
            self._pm_free[blk.block_id] = blk


@impl("KVCacheManager.__init__")
def _kvm_init(self, a):
    cfg = config.get()
    self.block_size = cfg.block_size
    self.enable_caching = True
    self._pm_req_blocks = {}
    if era() < (0, 8):
        _pool_init(self, cfg.num_blocks)
    else:
        self.block_pool = construct(mod("vllm.v1.core.block_pool").BlockPool, num_gpu_blocks=cfg.num_blocks,
                                    enable_caching=True, hash_block_size=cfg.block_size)


def _hashes(req, block_size, upto):
    """Chained hashes of the full blocks among the first `upto` tokens."""
    out, parent = [], None
    toks = req.all_token_ids
    for i in range(upto // block_size):
        parent = hash((parent, tuple(toks[i * block_size:(i + 1) * block_size])))
        out.append(parent)
    return out


def _blocks_obj(blocks):
    if era() < (0, 8):
        return blocks
    kb = mod("vllm.v1.core.kv_cache_manager").KVCacheBlocks
    return make_record(kb, blocks=(blocks,))


def _block_list(obj):
    if obj is None:
        return []
    if isinstance(obj, list):
        return obj
    return list(obj.blocks[0])


def _count_prefix(num_tokens, hits):
    """vLLM's PrefixCacheStats (queries: the request's tokens, hits: tokens found), as ground truth."""
    rec = truth.record()
    rec["prefix_query_tokens"] += num_tokens
    rec["prefix_hit_tokens"] += hits


@impl("KVCacheManager.get_computed_blocks")
def _get_computed(self, a):
    req = a["request"]
    pool = _pool(self)
    hits = []
    for h in _hashes(req, self.block_size, req.num_tokens - 1):
        blk = pool._pm_cached.get(h)
        if blk is None:
            break
        hits.append(blk)
    if not hasattr(type(self), "record_prefix_cache_stats"):
        # Eras before record_prefix_cache_stats count every lookup, as vLLM's get_computed_blocks does
        # (a blocked head of the waiting queue is looked up, and counted, in every step).
        _count_prefix(req.num_tokens, len(hits) * self.block_size)
    return _blocks_obj(hits), len(hits) * self.block_size


@impl("KVCacheManager.record_prefix_cache_stats")
def _record_prefix(self, a):
    _count_prefix(a["request"].num_tokens, a["num_hits"])


@impl("KVCacheManager.allocate_slots")
def _allocate(self, a):
    req = a["request"]
    n_new = a.get("num_new_tokens", a.get("num_tokens"))
    hits = _block_list(a.get("new_computed_blocks"))
    pool = _pool(self)
    have = self._pm_req_blocks.setdefault(req.request_id, [])
    total = req.num_computed_tokens + len(hits) * self.block_size + n_new
    need = -(-total // self.block_size) - len(have) - len(hits)
    reusable = sum(1 for b in hits if b.ref_cnt == 0)
    if need > len(pool._pm_free) - reusable:
        truth.record()["alloc_failures"] += 1
        return None
    for b in hits:
        if b.ref_cnt == 0:
            del pool._pm_free[b.block_id]
        b.ref_cnt += 1
    have.extend(hits)
    new = []
    if need > 0:  # as vLLM: the pool is asked only when the request needs new blocks
        new = pool.get_new_blocks(need) if era() >= (0, 8) else self._get_new_blocks(need)
        self._pm_counts[0] += need
    have.extend(new)
    # cache the full blocks of this request (prefix caching).
    for blk, h in zip(have, _hashes(req, self.block_size, min(total, req.num_tokens))):
        if blk.block_hash is None and h not in pool._pm_cached:
            blk.block_hash = h
            pool._pm_cached[h] = blk
    return _blocks_obj(new)


@impl("KVCacheManager.free")
def _kvm_free(self, a):
    req = a["request"]
    blocks = self._pm_req_blocks.pop(req.request_id, [])
    pool = _pool(self)
    for blk in reversed(blocks):
        blk.ref_cnt -= 1
        if blk.ref_cnt == 0:
            pool._pm_free[blk.block_id] = blk
            self._pm_counts[1] += 1


@impl("KVCacheManager.usage")
def _kvm_usage(self, a):
    pool = _pool(self)
    return 1.0 - len(pool._pm_free) / float(len(pool._pm_blocks))


# ---------------------------------------------------------------- scheduler


@impl("Scheduler.__init__")
def _sched_init(self, a):
    cfg = config.get()
    self._pm_cfg = cfg
    # As vLLM's Scheduler.__init__: the limits come from scheduler_config and are kept as attributes.
    vc = a.get("vllm_config")
    self.scheduler_config = getattr(vc, "scheduler_config", None)
    rec = truth.record()
    if os.environ.get("PMSIM_HIDE_LIMITS", "").strip() == "1":
        # Test knob: a scheduler whose limits are nowhere to be read (the budget stays as configured).
        self.scheduler_config = None
        self._pm_limits = (cfg.token_budget, cfg.max_num_seqs)
        rec["token_budget"], rec["max_num_seqs"] = None, None
    elif self.scheduler_config is not None:
        self.max_num_running_reqs = self.scheduler_config.max_num_seqs
        self.max_num_scheduled_tokens = self.scheduler_config.max_num_batched_tokens
    else:  # v0.7.3's Scheduler takes scheduler_config itself
        sc = a.get("scheduler_config")
        self.scheduler_config = sc
        self.max_num_running_reqs = getattr(sc, "max_num_seqs", cfg.max_num_seqs)
        self.max_num_scheduled_tokens = getattr(sc, "max_num_batched_tokens", cfg.token_budget)
    if not hasattr(self, "_pm_limits"):
        self._pm_limits = (self.max_num_scheduled_tokens, self.max_num_running_reqs)
        rec["token_budget"], rec["max_num_seqs"] = self._pm_limits
    self.waiting = collections.deque()
    self.running = []
    self.requests = {}
    self.finished = []
    km = mod("vllm.v1.core.kv_cache_manager").KVCacheManager
    self.kv_cache_manager = construct(km, block_size=cfg.block_size, num_gpu_blocks=cfg.num_blocks,
                                      max_model_len=4096, enable_caching=True, hash_block_size=cfg.block_size)
    self._pm_step = 0
    self._pm_kv_counts = self.kv_cache_manager._pm_counts = [0, 0]  # [allocated, freed] since the last step


@impl("Scheduler.add_request")
def _sched_add(self, a):
    req = a["request"]
    self.requests[req.request_id] = req
    self.waiting.append(req)


def _preempt_inline(sched, victim):
    sched.kv_cache_manager.free(victim)
    victim.status = "PREEMPTED"
    victim.num_computed_tokens = 0
    victim.encoder_done = False
    sched.waiting.appendleft(victim)


@impl("Scheduler._preempt_request")
def _preempt_request(self, a):
    self.running.remove(a["request"]) if a["request"] in self.running else None
    _preempt_inline(self, a["request"])


def _output_cls():
    return mod("vllm.v1.core.scheduler_output" if era() < (0, 8) else "vllm.v1.core.sched.output").SchedulerOutput


@impl("Scheduler.schedule")
def _schedule(self, a):
    cfg = self._pm_cfg
    rec = truth.record()
    kvm = self.kv_cache_manager
    budget, max_reqs = self._pm_limits
    scheduled = {}
    if cfg.evict_every and hasattr(type(kvm), "evict_blocks") and self._pm_step % cfg.evict_every == 0 \
            and self._pm_step:
        # Explicit eviction (vLLM v0.16+: KVCacheManager.evict_blocks), of up to 2 cached free blocks.
        pool = _pool(kvm)
        ids = {b.block_id for b in pool._pm_free.values() if b.block_hash is not None}
        ids = set(sorted(ids)[:2])
        if ids:
            kvm.evict_blocks(ids)
    encoder = {}
    preempted = []
    new_ids = []
    for req in list(self.running):
        if budget <= 0 or req not in self.running:
            continue
        n = min(req.num_tokens - req.num_computed_tokens, budget)
        while True:
            blocks = kvm.allocate_slots(req, n)
            if blocks is not None:
                break
            victim = self.running[-1]
            lost = victim.num_computed_tokens
            # Step convention (proto/tables/common.json): the number of the step this schedule() makes.
            rec["preemptions"].append({"step": self._pm_step + 1, "request": victim.request_id,
                                       "tokens_lost": lost})
            if hasattr(type(self), "_preempt_request") and era() >= (0, 10):
                self._preempt_request(victim, time.time())
            else:
                self.running.remove(victim)
                _preempt_inline(self, victim)
            # Right after the preemption: KV usage, waiting (victim included), running.
            rec["preemptions"][-1].update(kv_usage=round(kvm.usage if era() >= (0, 7) else 0.0, 6),
                                          waiting=len(self.waiting), running=len(self.running))
            preempted.append(victim.request_id)
            scheduled.pop(victim.request_id, None)
            if victim is req:
                break
        if blocks is None:
            continue
        scheduled[req.request_id] = n
        budget -= n
    while self.waiting and budget > 0 and len(self.running) < max_reqs and not preempted:
        req = self.waiting[0]
        hits, hit_tokens = kvm.get_computed_blocks(req)
        n = min(req.num_tokens - hit_tokens, budget)
        blocks = kvm.allocate_slots(req, n, new_computed_blocks=hits) if era() < (0, 10) else \
            kvm.allocate_slots(req, n, num_new_computed_tokens=hit_tokens, new_computed_blocks=hits)
        if blocks is None:
            break
        self.waiting.popleft()
        req.num_computed_tokens = hit_tokens
        rec["prefix_admitted_query_tokens"] += req.num_tokens  # the other meaning, for tests
        if hasattr(type(kvm), "record_prefix_cache_stats"):
            kvm.record_prefix_cache_stats(req, hit_tokens)  # main-2026-08-20+: counted at admission
        req.status = "RUNNING"
        self.running.append(req)
        scheduled[req.request_id] = n
        new_ids.append(req.request_id)
        budget -= n
    for rid in scheduled:
        r = self.requests[rid]
        if r.mm_items and not r.encoder_done:
            encoder[rid] = list(range(r.mm_items))
            r.encoder_done = True
    total = sum(scheduled.values())
    reqs = {rid: {"tokens": self.requests[rid].all_token_ids, "start": self.requests[rid].num_computed_tokens,
                  "n": n, "prefill": self.requests[rid].num_computed_tokens < self.requests[rid].num_prompt_tokens}
            for rid, n in scheduled.items()}
    fields = dict(num_scheduled_tokens=scheduled, total_num_scheduled_tokens=total,
                  scheduled_encoder_inputs=encoder, finished_req_ids=set(), scheduled_new_reqs=[],
                  scheduled_cached_reqs=None)
    out = make_record(_output_cls(), **fields)
    if "preempted_req_ids" in getattr(type(out), "__dataclass_fields__", {}):
        object.__setattr__(out, "preempted_req_ids", set(preempted))
    object.__setattr__(out, "pm_reqs", reqs)
    object.__setattr__(out, "pm_step", self._pm_step)
    if total:
        prefill = sum(n for rid, n in scheduled.items()
                      if self.requests[rid].num_computed_tokens < self.requests[rid].num_prompt_tokens)
        # [scheduled tokens, scheduled requests, prefill tokens, decode tokens, waiting, running]
        rec["batch_by_step"].append([total, len(scheduled), prefill, total - prefill, len(self.waiting),
                                     len(self.running)])
        self._pm_step += 1
        rec["scheduler_steps"] += 1
        # Blocks handed out by get_new_blocks and returned to the free pool since the last step's row.
        rec["kv_by_step"].append(list(self._pm_kv_counts))
        self._pm_kv_counts[:] = [0, 0]
        rec["kv_usage"].append(round(kvm.usage if era() >= (0, 7) else 0.0, 6))
        rec["scheduled_tokens"] += total
    return out


@impl("Scheduler.update_from_output")
def _update(self, a):
    so = a["scheduler_output"]
    out = a["model_runner_output"] or {}
    finished = []
    for rid, n in so.num_scheduled_tokens.items():
        req = self.requests[rid]
        if req.status != "RUNNING":
            continue
        req.num_computed_tokens += n
        if req.num_computed_tokens >= req.num_tokens:
            req.output_token_ids.append(out.get(rid, 1))
        if len(req.output_token_ids) >= req.max_tokens:
            finished.append(req)
    for req in finished:
        self.running.remove(req)
        req.status = "FINISHED"
        self._free_request(req)
        self.finished.append(req.request_id)
    return finished


@impl("Scheduler._free_request")
def _free_request(self, a):
    self.kv_cache_manager.free(a["request"])
    return None


@impl("Scheduler.has_requests", "Scheduler.has_unfinished_requests")
def _has(self, a):
    return bool(self.waiting or self.running)


# ---------------------------------------------------------------- plugins and ranks

_loaded_plugins = {"done": False}


@impl("vllm.plugins:load_general_plugins")
def _load_general_plugins(owner, a):
    if _loaded_plugins["done"]:
        return None
    _loaded_plugins["done"] = True
    import importlib.metadata as md
    allowed = os.environ.get("VLLM_PLUGINS")
    allowed = None if allowed is None else [x for x in allowed.split(",") if x]
    try:
        eps = md.entry_points(group="vllm.general_plugins")
    except TypeError:
        eps = md.entry_points().get("vllm.general_plugins", [])
    for ep in eps:
        if allowed is not None and ep.name not in allowed:
            continue
        fn = ep.load()
        fn()
    return None


_groups = {}


@impl("vllm.distributed.parallel_state:init_distributed_environment")
def _init_dist(owner, a):
    return None


def layout(rank, tp, pp, dp_rank):
    """Group ranks of an engine's worker `rank` as vLLM's parallel_state builds its groups.

    vLLM (initialize_model_parallel) lays the global ranks out as [dp][pp][tp]: the global rank is
    dp_rank * (pp * tp) + rank, where rank (Worker.__init__'s argument) is engine-local and
    pp_rank * tp + tp_rank. The EP group spans DP x TP: ep_rank = dp_rank * tp + tp_rank.
    Returns {"tp", "pp", "dp", "ep", "global"}.
    """
    return {"tp": rank % tp, "pp": rank // tp, "dp": dp_rank, "ep": dp_rank * tp + rank % tp,
            "global": dp_rank * tp * pp + rank}


def set_groups(rank, local_rank, tp, pp=1, dp=1, dp_rank=0):
    ps = mod("vllm.distributed.parallel_state")
    gc = ps.GroupCoordinator
    lay = layout(rank, tp, pp, dp_rank)
    world = tp * pp * dp
    for name, r, ws in (("tp", lay["tp"], tp), ("pp", lay["pp"], pp), ("dp", dp_rank, dp), ("ep", lay["ep"], dp * tp),
                        ("world", lay["global"], world), ("dcp", lay["tp"], tp), ("pcp", 0, 1)):
        g = gc.__new__(gc)
        g.rank_in_group, g.world_size, g.rank, g.local_rank = r, ws, lay["global"], local_rank
        g.ranks = list(range(ws))
        g.unique_name = name
        _groups[name] = g
    return lay


for _n in ("tp", "pp", "dp", "ep", "world", "dcp", "pcp"):
    def _getter(owner, a, _n=_n):
        if _n not in _groups:
            raise AssertionError("%s group is not initialized" % _n)
        return _groups[_n]
    impl("vllm.distributed.parallel_state:get_%s_group" % _n)(_getter)


@impl("GroupCoordinator.is_first_rank")
def _gc_first(self, a):
    return self.rank_in_group == 0


@impl("GroupCoordinator.is_last_rank")
def _gc_last(self, a):
    return self.rank_in_group == self.world_size - 1


@impl("vllm.distributed.parallel_state:model_parallel_is_initialized")
def _mp_init(owner, a):
    return "tp" in _groups


@impl("vllm.distributed.parallel_state:get_tensor_model_parallel_rank")
def _tp_rank(owner, a):
    return _groups["tp"].rank_in_group


@impl("vllm.distributed.parallel_state:get_tensor_model_parallel_world_size")
def _tp_ws(owner, a):
    return _groups["tp"].world_size


def init_groups(vllm_config, rank, local_rank):
    """What init_worker_distributed_environment leaves behind: the worker's parallel_state groups."""
    pc = vllm_config.parallel_config
    lay = set_groups(rank, rank if local_rank in (None, -1) else local_rank, pc.tensor_parallel_size,
                     pc.pipeline_parallel_size, pc.data_parallel_size, pc.data_parallel_rank)
    truth.record().update(tp_rank=lay["tp"], pp_rank=lay["pp"], dp_rank=lay["dp"], ep_rank=lay["ep"],
                          global_rank=lay["global"])


# ---------------------------------------------------------------- executors and EngineCore


def mp_context():
    return multiprocessing.get_context(os.environ.get("VLLM_WORKER_MULTIPROC_METHOD", "spawn"))


@impl("MultiprocExecutor._init_executor")
def _mp_init_executor(self, a):
    cfg = config.get()
    ctx = mp_context()
    self._pm_results = ctx.Queue()
    self._pm_inputs = []
    self._pm_procs = []
    truth.on_terminate(lambda: shutdown_workers(self, 2.0))
    wp = mod("vllm.v1.executor.multiproc_executor").WorkerProc
    world = self.vllm_config.parallel_config.world_size
    from pmsim import multinode
    mine = multinode.local_worker_ranks(world)  # --nnodes: this node's share of the ranks
    for rank, local_rank in mine:
        q = ctx.Queue()
        # daemon, as in vLLM: if EngineCore ends without shutting them down, its exit terminates them.
        p = ctx.Process(target=wp.worker_main, name="VllmWorker-%d" % rank, daemon=True,
                        kwargs=dict(vllm_config=self.vllm_config, local_rank=local_rank, rank=rank,
                                    distributed_init_method="tcp://127.0.0.1:29500", input_queue=q,
                                    result_queue=self._pm_results))
        p.start()
        self._pm_inputs.append(q)
        self._pm_procs.append(p)
    if multinode.nnodes() > 1:  # the other nodes' workers, through their headless `vllm serve`
        want = sorted(set(range(world)) - {r for r, _ in mine})
        per = len(mine)
        spec = {"vllm_config": self.vllm_config, "env": multinode.ray_env(),
                "init": "tcp://%s:%d" % multinode.master()}
        nodes = multinode.accept_followers(*multinode.master(), want, lambda rank: self._pm_results,
                                           "VllmWorker-%d", cfg.start_timeout_s, self._pm_procs,
                                           assign=lambda k: (want[k * per:(k + 1) * per], spec))
        for rank in want:
            self._pm_inputs.append(nodes[rank].inputs[rank])
            self._pm_procs.append(nodes[rank].procs[rank])
    ready = 0
    while ready < world:
        kind, rank, value = procs.get(self._pm_results, "worker start-up", self._pm_procs, cfg.start_timeout_s,
                                      self._pm_watch)
        if kind != "ready":
            raise RuntimeError("worker %s failed to start: %s %s" % (rank, kind, value or ""))
        ready += 1


@impl("MultiprocExecutor.collective_rpc")
def _mp_rpc(self, a):
    method, args = a["method"], a.get("args") or ()
    timeout = a.get("timeout") or config.get().rpc_timeout_s
    for q in self._pm_inputs:
        q.put((method, args))
    out = {}
    while len(out) < len(self._pm_inputs):
        kind, rank, value = procs.get(self._pm_results, "reply to %s" % method, self._pm_procs, timeout,
                                      self._pm_watch)
        if kind != "ok":
            raise RuntimeError("worker %d failed in %s:\n%s" % (rank, method, value))
        out[rank] = value
    return [out[r] for r in sorted(out)]


def shutdown_workers(ex, timeout):
    """Stops the workers whatever the era's executor offers (v0.7-v0.16 have no shutdown in targets.json)."""
    # Lists stay in place until every worker is gone: a SIGTERM arriving meanwhile stops them again.
    inputs, workers = list(getattr(ex, "_pm_inputs", [])), list(getattr(ex, "_pm_procs", []))
    for q, p in zip(inputs, workers):
        if p.is_alive():
            try:
                q.put(("__stop__", ()))
            except Exception:
                pass
    procs.stop(workers, timeout)
    ex._pm_inputs, ex._pm_procs = [], []
    # Nothing more will be read from these: do not let their feeder threads hold up this process's exit.
    for q in inputs + ([ex._pm_results] if hasattr(ex, "_pm_results") else []):
        q.cancel_join_thread()


@impl("MultiprocExecutor.shutdown")
def _mp_shutdown(self, a):
    shutdown_workers(self, 30.0)


@impl("WorkerProc.worker_main")
def _worker_main(owner, a):
    kw = a["kwargs"]
    wp_cls = mod("vllm.v1.executor.multiproc_executor").WorkerProc
    results = kw["result_queue"]
    rank = kw["rank"]
    try:
        proc = construct(wp_cls, vllm_config=kw["vllm_config"], local_rank=kw["local_rank"], rank=rank,
                         distributed_init_method=kw["distributed_init_method"], is_driver_worker=rank == 0)
    except Exception:  # report, so the executor does not wait forever
        import traceback
        results.put(("error", rank, traceback.format_exc()))
        raise
    proc._pm_input, proc._pm_results = kw["input_queue"], results
    proc._pm_watch = procs.ParentWatch()
    results.put(("ready", rank, None))
    proc.worker_busy_loop()


@impl("WorkerProc.__init__")
def _wp_init(self, a):
    from pmsim import runner
    mod("vllm.plugins").load_general_plugins()
    rank = a["rank"]
    pc = a["vllm_config"].parallel_config
    # The truth file is named by the global rank: two DP engines both have a worker of rank 0.
    truth.start("worker", layout(rank, pc.tensor_parallel_size, pc.pipeline_parallel_size,
                                 pc.data_parallel_rank)["global"], tp=pc.tensor_parallel_size,
                pp=pc.pipeline_parallel_size, dp=pc.data_parallel_size, local_rank=a["local_rank"])
    self.rank = rank
    self.worker = runner.make_worker(a["vllm_config"], a["local_rank"], rank)


@impl("WorkerProc.worker_busy_loop")
def _wp_loop(self, a):
    while True:
        try:
            method, args = procs.get(self._pm_input, "work from EngineCore", watch=self._pm_watch)
        except procs.ParentGone as e:
            # EngineCore is gone: nobody reads our results any more, so leave without flushing them.
            procs.warn("worker %d: %s" % (self.rank, e))
            self._pm_results.cancel_join_thread()
            truth.write()
            os._exit(1)
        if method == "__stop__":
            break
        try:
            value = getattr(self.worker, method)(*args)
        except Exception:
            import traceback
            self._pm_results.put(("error", self.rank, traceback.format_exc()))
            raise
        self._pm_results.put(("ok", self.rank, value))
    truth.write()


class _UniProc:
    def __init__(self, vllm_config):
        from pmsim import runner
        self.worker = runner.make_worker(vllm_config, 0, 0, in_engine=True)

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        return [getattr(self.worker, method)(*args)]

    def shutdown(self):
        pass


@impl("EngineCore.__init__")
def _ec_init(self, a):
    cfg = config.get()
    self.vllm_config = a["vllm_config"]
    if self.vllm_config.parallel_config.world_size > 1:
        me = mod("vllm.v1.executor.multiproc_executor").MultiprocExecutor
        ex = me.__new__(me)
        ex.vllm_config = self.vllm_config
        ex._pm_watch = getattr(self, "_pm_watch", None)
        self.model_executor = ex  # before start-up, so a failed start still stops the workers begun
        ex._init_executor()
    else:
        ex = _UniProc(self.vllm_config)
    self.model_executor = ex
    sched_mod = "vllm.v1.core.scheduler" if era() < (0, 8) else "vllm.v1.core.sched.scheduler"
    self.scheduler = construct(mod(sched_mod).Scheduler, vllm_config=self.vllm_config, log_stats=False,
                               scheduler_config=getattr(self.vllm_config, "scheduler_config", None))
    self._pm_paused = False


@impl("EngineCore.add_request")
def _ec_add(self, a):
    self.scheduler.add_request(a["request"])


@impl("EngineCore.step")
def _ec_step(self, a):
    cfg = config.get()
    rec = truth.record()
    so = self.scheduler.schedule()
    if cfg.pause_file and not self._pm_paused and rec["preemptions"]:
        self._pm_paused = True
        _pause(self, cfg.pause_file)
    if not so.total_num_scheduled_tokens:
        return []
    config.inject(-1, rec["scheduler_steps"] - 1)
    t0 = time.perf_counter()
    outs = self.model_executor.collective_rpc("execute_model", args=(so,))
    rec["step_ms"].append(round((time.perf_counter() - t0) * 1000.0, 3))
    return self.scheduler.update_from_output(so, outs[0])


def _pause(core, path):
    """Waits until path exists, telling the API server it is alive, and leaving if it goes away."""
    outq, watch = getattr(core, "_pm_outq", None), getattr(core, "_pm_watch", None)
    # <path>.waiting tells a test that EngineCore is now paused, and at which step.
    rec = truth.record()
    with open(path + ".waiting.tmp", "w") as f:
        f.write("%d %d\n" % (os.getpid(), rec["scheduler_steps"]))
    os.replace(path + ".waiting.tmp", path + ".waiting")
    last = time.monotonic()
    while not os.path.exists(path):
        time.sleep(0.01)
        if time.monotonic() - last >= 1.0:
            last = time.monotonic()
            if outq is not None:
                outq.put(("heartbeat", None))
            if watch is not None and watch.gone():
                raise procs.ParentGone("parent process exited while paused on %s" % path)


@impl("EngineCoreProc.run_engine_core")
def _run_engine_core(owner, a):
    kw = a["kwargs"]
    inq, outq = kw["input_queue"], kw["output_queue"]
    watch = procs.ParentWatch()
    rec = _start_record(kw["vllm_config"].parallel_config.data_parallel_rank)
    ec = mod("vllm.v1.engine.core").EngineCore
    core = ec.__new__(ec)
    core._pm_watch, core._pm_outq = watch, outq
    try:
        mod("vllm.plugins").load_general_plugins()
        call_filtered(core.__init__, vllm_config=kw["vllm_config"], executor_class=None, log_stats=False)
        outq.put(("ready", None))
        _engine_loop(core, inq, outq, rec, watch)
    except BaseException as e:
        import traceback
        tb = traceback.format_exc()
        if isinstance(e, procs.ParentGone):
            outq.cancel_join_thread()
        else:
            try:
                outq.put(("error", tb))
            except Exception:
                pass
        # Healthy workers stop at once; a stuck one is not worth waiting for.
        _stop_executor(core, 2.0)
        truth.write()
        if isinstance(e, procs.ParentGone):
            os._exit(1)
        raise
    _stop_executor(core)
    truth.write()
    outq.put(("done", rec["finished"]))


def _start_record(dp_rank=0):
    return truth.start("engine_core", dp_rank, scheduler_steps=0, preemptions=[], evictions=0, alloc_failures=0,
                       prefix_hit_tokens=0, prefix_query_tokens=0, prefix_admitted_query_tokens=0,
                       explicit_evictions=0, kv_usage=[], batch_by_step=[], kv_by_step=[],
                       scheduled_tokens=0, step_ms=[], finished=0, dp_rank=dp_rank)


def run_in_process(vllm_config, requests):
    """EngineCore's loop in the calling process, for tests that hook it directly (PMSIM_TP=1 keeps the
    runner here too). Returns this process's ground-truth record."""
    rec = _start_record()
    ec = mod("vllm.v1.engine.core").EngineCore
    core = ec.__new__(ec)
    try:
        call_filtered(core.__init__, vllm_config=vllm_config, executor_class=None, log_stats=False)
        for r in requests:
            core.scheduler.add_request(r)
        cfg = config.get()
        while rec["finished"] < len(requests) and rec["scheduler_steps"] < cfg.max_steps:
            before = rec["scheduler_steps"]
            finished = core.step()
            if rec["scheduler_steps"] == before and not finished:
                raise RuntimeError("scheduler made no progress")
            rec["finished"] += len(finished)
    finally:
        _stop_executor(core, 5.0)
    return rec


def _stop_executor(core, timeout=30.0):
    ex = getattr(core, "model_executor", None)
    if ex is not None and hasattr(ex, "_pm_procs"):
        shutdown_workers(ex, timeout)


def _engine_loop(core, inq, outq, rec, watch):
    cfg = config.get()
    done = 0
    expected = None
    while True:
        while expected is None or not inq.empty():
            msg = procs.get(inq, "requests from the API server", watch=watch)
            if msg[0] == "add":
                sched = core.scheduler
                if hasattr(sched, "add_request"):
                    sched.add_request(msg[1])
                else:
                    _sched_add(sched, {"request": msg[1]})
            elif msg[0] == "expect":
                expected = msg[1]
        if done >= expected:  # a data-parallel engine may get no request at all
            break
        steps_before = rec["scheduler_steps"]
        finished = core.step()
        if rec["scheduler_steps"] == steps_before and not finished:
            # Nothing scheduled and nothing changes between steps: it would spin forever.
            raise RuntimeError("scheduler made no progress with %d of %d requests finished" % (done, expected))
        for req in finished:
            outq.put(("finished", (req.request_id, list(req.output_token_ids))))
            done += 1
        rec["finished"] = done
        if done >= expected or rec["scheduler_steps"] >= cfg.max_steps:
            break
        if watch.gone():
            raise procs.ParentGone("parent process exited")
