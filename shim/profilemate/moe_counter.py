"""Device-side expert counting: one preallocated counter per MoE layer.

count() runs inside select_experts as tensor ops only (`counts.index_add_(0, ids, ones)`), so a
CUDA graph that captures the layer also captures the count and every replay counts; no Python
needs to run at replay. The counters are cumulative and never zeroed on vLLM's stream: every
`interval` steps the worker starts a snapshot (torch CUDA: non_blocking copy into pinned host
memory and an event; CPU tensors and the test tree's FakeTensor: tolist()), and a later poll
turns the finished snapshot into per-(layer, expert) deltas. Nothing here calls .cpu(),
.item() or a synchronize.
"""
import re

_LAYER_NUM = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def layer_index(name):
    m = _LAYER_NUM.search(name or "")
    return int(m.group(1)) if m else -1


class LayerCounter:
    __slots__ = ("name", "index", "experts", "counts", "ones", "last", "host", "status", "reason")

    def __init__(self, name, experts):
        self.name, self.index, self.experts = name, layer_index(name), experts
        self.counts = None
        self.ones = {}
        self.last = [0] * experts
        self.host = None
        self.status, self.reason = "counted", ""


class Counters:
    def __init__(self):
        self.layers = {}  # name -> LayerCounter, in first-seen order
        self.pending = None  # (step, steps, modes, [(layer, host or list)], event or None)
        self.last_step = 0
        self.modes = set()
        self.unobservable = ""  # reason, when counts cannot be taken without bias
        # Set when moe_expert is switched on again (runtime.set_profiler): the device counters went
        # on counting while it was off (a captured CUDA graph replays its index_add_), so the next
        # snapshot only moves the baseline and rows after "on" cover only steps after it.
        self.rebase_pending = False

    # ------------------------------------------------------------ hot path
    def count(self, name, experts, topk_ids):
        """Adds topk_ids (any shape) to layer `name`'s counter with tensor ops only."""
        c = self.layers.get(name)
        if c is None:
            c = self._new(name, experts)
        counts = c.counts
        if counts is None:
            if c.status != "counted":
                return
            counts = self._alloc(c, topk_ids)
            if counts is None:
                return
        idx = topk_ids.flatten().long()
        n = idx.numel()
        ones = c.ones.get(n)
        if ones is None:
            ones = c.ones[n] = idx.new_ones(n)
        counts.index_add_(0, idx, ones)

    def _new(self, name, experts):
        c = LayerCounter(name, int(experts or 0))
        if c.experts <= 0:
            c.status, c.reason = "unobservable", "number of experts unknown"
        self.layers[name] = c
        return c

    def _alloc(self, c, topk_ids):
        if getattr(topk_ids, "is_cuda", False):
            torch = _torch()
            try:
                if torch is not None and torch.cuda.is_current_stream_capturing():
                    # Allocating inside a capture would put the zeroing into the graph.
                    c.status, c.reason = "unobservable", "first seen during CUDA graph capture"
                    return None
            except Exception:
                pass
        c.counts = topk_ids.flatten().long().new_zeros(c.experts)
        return c.counts

    # ------------------------------------------------------------ per step (worker thread)
    def note_mode(self, mode):
        if mode:
            self.modes.add(mode)

    def snapshot(self, step):
        """Starts an asynchronous copy of every counter; at most one in flight."""
        if self.pending is not None:
            return False
        copies, event = [], None
        for c in self.layers.values():
            counts = c.counts
            if counts is None:
                copies.append((c, None))
                continue
            if getattr(counts, "is_cuda", False):
                torch = _torch()
                if c.host is None:
                    c.host = torch.empty(c.experts, dtype=counts.dtype, pin_memory=True)
                c.host.copy_(counts, non_blocking=True)
                copies.append((c, c.host))
                if event is None:
                    event = torch.cuda.Event()
            else:
                copies.append((c, counts.tolist()))
        if event is not None:
            event.record()
        rebase, self.rebase_pending = self.rebase_pending, False
        self.pending = (step, step - self.last_step, "|".join(sorted(self.modes)), copies, event, rebase)
        self.last_step = step
        self.modes = set()
        return True

    def poll(self, emit):
        """Emits rows for a finished snapshot through emit(step, cols); True when one was emitted."""
        p = self.pending
        if p is None:
            return False
        step, steps, modes, copies, event, rebase = p
        if event is not None:
            try:
                if not event.query():
                    return False
            except Exception:
                return False
        self.pending = None
        if rebase:
            for c, host in copies:
                if host is not None and c.status == "counted":
                    c.last = list(host.tolist() if hasattr(host, "tolist") else host)
            return True
        if self.unobservable and not copies:
            emit(step, {"layer": "", "layer_index": -1, "expert": -1, "count": "", "interval_steps": steps,
                        "status": "unobservable", "runtime_modes": modes})
        for c, host in copies:
            if self.unobservable or c.status != "counted" or host is None:
                emit(step, {"layer": c.name, "layer_index": c.index, "expert": -1, "count": "",
                            "interval_steps": steps, "status": "unobservable", "runtime_modes": modes})
                continue
            values = host.tolist() if hasattr(host, "tolist") else list(host)
            last = c.last
            for e, v in enumerate(values):
                emit(step, {"layer": c.name, "layer_index": c.index, "expert": e, "count": v - last[e],
                            "interval_steps": steps, "status": "counted", "runtime_modes": modes})
            c.last = list(values)
        return True


def _torch():
    import sys
    return sys.modules.get("torch")


COUNTERS = Counters()
