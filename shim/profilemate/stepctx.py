"""The step in progress, shared by the target modules that observe parts of one step.

One vLLM step is seen by several hooks in different target modules: in EngineCore the KV
cache manager and block pool count blocks while the scheduler's schedule() wrapper writes the
step's rows; in a worker the CUDA-graph dispatch hooks note the step's mode while the model
runner's execute_model wrapper writes the rows, and the graph wrappers note captures that
capture_model's wrapper writes out. The state they share lives here, so target modules import
this module and never each other (no import cycle, function-local imports included).

Standard library only; nothing here imports vLLM, profilemate.runtime or a target module.
All functions are O(1) on the hot path and never raise.
"""

# ------------------------------------------------------------------ EngineCore: KV counters

# KV_STEP indexes: blocks allocated, blocks freed, allocation failures, prefix-hit tokens,
# prefix query tokens, blocks evicted, allocations that evicted.
ALLOC, FREED, FAIL, HIT, QUERY, EVICTED, EVICT_OPS = range(7)
KV_STEP = [0] * 7
# The last prefix lookup: [request, hit tokens, query tokens]. In eras that count at admission
# (see PREFIX_AT_LOOKUP) its hits count once that request's allocation succeeds.
LOOKUP = [None, 0, 0]
# True where vLLM's own PrefixCacheStats counts every lookup (<= v0.11: get_computed_blocks
# records queries and hits on each call, the blocked head of the waiting queue included);
# False where it counts at admission (newer eras). Set by the kv_cache_manager target per era.
PREFIX_AT_LOOKUP = [False]


# While the scheduler's schedule() runs: the scheduler object (a free() of a request that left the
# running queue is then a preemption, i.e. a failed allocation, and a prefix lookup arms the one-shot
# allocation check), and {id(request): (kv usage, waiting, running)} noted at such a free -- the
# victim's moment, used in the eras without _preempt_request, whose victims schedule() finds after.
IN_SCHEDULE = [None]
VICTIM_MOMENT = {}


def arm_allocation(kvm):
    """Counts an allocation failure (KV_STEP[FAIL]) if this manager's next allocate_slots call
    returns None: a one-shot wrapper on the instance that removes itself at its first call.
    kv_cache_manager arms it after a waiting request's prefix lookup inside schedule(); the
    scheduler's wrapper removes one left unused (disarm_allocation). O(1), never raises."""
    d = getattr(kvm, "__dict__", None)
    if d is None or "allocate_slots" in d:
        return
    cls = type(kvm)

    def allocate_slots(*args, **kwargs):
        d.pop("allocate_slots", None)
        out = cls.allocate_slots(kvm, *args, **kwargs)
        if out is None:
            KV_STEP[FAIL] += 1
        return out
    allocate_slots.profilemate_one_shot = True
    d["allocate_slots"] = allocate_slots


def disarm_allocation(kvm):
    """Removes a one-shot allocate_slots that arm_allocation left on the instance, if any."""
    d = getattr(kvm, "__dict__", None)
    if d and "allocate_slots" in d and getattr(d["allocate_slots"], "profilemate_one_shot", False):
        d.pop("allocate_slots", None)


def kv_reset():
    """Zeroes the KV counters of the step in progress (after the scheduler wrote its rows)."""
    KV_STEP[:] = [0] * 7
    LOOKUP[0], LOOKUP[1], LOOKUP[2] = None, 0, 0


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
    """Usable blocks of the pool (vLLM's null block excluded, as get_usage() does); None if unknown."""
    try:
        pool = getattr(kvm, "block_pool", None)
        owner = pool if hasattr(pool, "num_gpu_blocks") else kvm
        n = getattr(owner, "num_gpu_blocks", None)
        if not isinstance(n, int):
            return None
        return n - 1 if getattr(owner, "null_block", None) is not None else n
    except Exception:
        return None


# ------------------------------------------------------------------ worker: the runner step


class RunnerStep:
    """The model-runner step being executed: filled by the hooks that run inside execute_model."""
    __slots__ = ("active", "mode", "padded", "source", "phases", "encoder", "capturing")

    def __init__(self):
        self.active = False
        self.capturing = 0
        self.reset()

    def reset(self):
        self.mode, self.padded, self.source = None, None, ""
        self.phases, self.encoder = [], []


STEP = RunnerStep()
# Captures seen while capture_model runs: (mode, tokens) -> [descriptor, cpu_ns, bytes or -1],
# in capture order; written as cuda_graph_captures rows when capture_model returns.
PENDING_CAPTURES = {}
CAPTURES = {"total_ms": 0.0}


def note_capture(mode, tokens, descriptor, ns, nbytes=None):
    """Adds one captured graph (or piece of one) to the (mode, tokens) row being built."""
    slot = PENDING_CAPTURES.setdefault((mode, tokens), [descriptor, 0, -1])
    slot[1] += ns
    if nbytes is not None:
        slot[2] = max(slot[2], 0) + nbytes


def flush_captures(record):
    """Writes one cuda_graph_captures row per (mode, size) noted, in capture order.

    record: profilemate.runtime.record (kind, table, cols, step); rows carry step -1.
    """
    for (mode, tokens), (desc, ns, nbytes) in list(PENDING_CAPTURES.items()):
        ms = ns / 1e6
        CAPTURES["total_ms"] += ms
        record("cuda_graph", "cuda_graph_captures", {
            "mode": mode, "num_tokens": tokens, "descriptor": desc, "cpu_ms": ms, "graph_bytes": nbytes,
            "total_capture_cpu_ms": CAPTURES["total_ms"]}, -1)
    PENDING_CAPTURES.clear()
