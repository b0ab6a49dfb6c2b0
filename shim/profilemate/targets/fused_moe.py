"""MoE expert selection (worker process): device-side counts per layer (profilemate.moe_counter).

The count runs inside select_experts as tensor ops, so CUDA graphs that capture the layer
count their replays. Layer identity, by era:
- custom-op era (2025-03-05 to 2026-01-18): `FusedMoE.forward_impl` runs as Python on every call
  (custom-op body) and notes its layer; the static `FusedMoE.select_experts` (until 2025-11-24)
  reads it; the instance method (2025-11-24 to 2026-01-18) is its own layer;
- router era (v0.16+): `BaseRouter.select_experts`, or `_select_experts` (FusedMoERouter.
  select_experts calls it on newer mains), with the layer from `FusedMoE.forward_impl` (v0.16) or
  `MoERunner._forward_impl` (2026-02-10+, also the FusedMoEFactory era);
- <= v0.8.1 the static select_experts is called directly inside the torch.compile region: a
  wrapper there runs at trace time only, so the counts are `unobservable` (rows and
  metadata.json say so) and nothing is counted.
Kernels that route internally (`apply_monolithic`) never call select_experts: those layers have
no rows. moe_expert_timing: GPU time around the layer call on eager (NONE) steps only, when CUDA
events exist.
"""
from profilemate.gpu_timing import POOL
from profilemate.moe_counter import COUNTERS
from profilemate import stepctx
from profilemate.targets._util import Hook, Path, Target

STEP = stepctx.STEP

_CUR = [None]  # the MoE layer (or MoERunner) whose forward is running
_K = ("moe_expert",)
UNOBSERVABLE = "static select_experts called inside the torch.compile region (<= v0.8.1)"


def _experts(obj):
    for name in ("global_num_experts", "num_experts", "logical_num_experts"):
        n = getattr(obj, name, None)
        if isinstance(n, int) and n > 0:
            return n
    return 0


def _layer_scope(original, rt):
    record = rt.record

    def done(ms, data):
        if ms is not None:
            name, tokens, mode = data
            record("moe_expert", "moe_expert_timing", {"layer": name, "gpu_ms": ms, "tokens": tokens,
                                                       "runtime_mode": mode})

    def forward_impl(self, *args, **kwargs):
        prev = _CUR[0]
        _CUR[0] = self
        pair = POOL.start() if STEP.active and STEP.mode == "NONE" else None
        try:
            return original(self, *args, **kwargs)
        finally:
            _CUR[0] = prev
            if pair is not None:
                hs = args[0] if args else kwargs.get("hidden_states")
                shape = getattr(hs, "shape", None)
                POOL.stop(pair, done, (getattr(self, "layer_name", ""), shape[0] if shape else "", "NONE"))
    return forward_impl


def _count(layer, topk_ids):
    name = getattr(layer, "layer_name", None) or getattr(layer, "prefix", None) or ""
    COUNTERS.count(name, _experts(layer), topk_ids)


def _ids(out):
    return out[1] if isinstance(out, tuple) and len(out) > 1 else None


def _select_static(original, rt):
    def select_experts(*args, **kwargs):
        out = original(*args, **kwargs)
        try:
            layer = _CUR[0]
            if layer is None:
                if not COUNTERS.unobservable:
                    COUNTERS.unobservable = UNOBSERVABLE
                    rt.NOTES["moe_expert_selection"] = "unobservable: " + UNOBSERVABLE
            elif rt.enabled("moe_expert"):
                ids = _ids(out)
                if ids is not None:
                    _count(layer, ids)
        except Exception:
            pass
        return out
    return select_experts


def _select_instance(original, rt):
    def select_experts(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        try:
            if rt.enabled("moe_expert"):
                ids = _ids(out)
                if ids is not None:
                    layer = _CUR[0] if _CUR[0] is not None else self
                    name = getattr(layer, "layer_name", None)
                    COUNTERS.count(name or "router@%x" % id(self), _experts(layer) or _experts(self), ids)
        except Exception:
            pass
        return out
    return select_experts


def _select(original, rt):
    """The static method before 2025-11-24, an instance method after: decided per call."""
    static, inst = _select_static(original, rt), _select_instance(original, rt)

    def select_experts(*args, **kwargs):
        if args and hasattr(args[0], "forward_impl") and not hasattr(args[0], "shape"):
            return inst(*args, **kwargs)
        return static(*args, **kwargs)
    return select_experts


TARGET = Target(
    tables=("moe_expert_selection", "moe_expert_timing"),
    name="fused_moe", component="FusedMoE", kinds=_K,
    paths=[
        Path("vllm.model_executor.layers.fused_moe.router.base_router", eras="2026-01-18+ (router)",
             hooks=[Hook("BaseRouter", ("_select_experts", "select_experts"), _select_instance,
                         required=("hidden_states", "router_logits"), kinds=_K)]),
        Path("vllm.model_executor.layers.fused_moe.runner.moe_runner", eras="2026-02-10+ (MoERunner)",
             hooks=[Hook("MoERunner", "_forward_impl", _layer_scope, kinds=_K)]),
        Path("vllm.model_executor.layers.fused_moe.layer", eras="v0.6.6 to 2026-01-18 (FusedMoE class)",
             hooks=[Hook("FusedMoE", "select_experts", _select, required=("hidden_states", "router_logits"),
                         kinds=_K, optional=True),
                    Hook("FusedMoE", "forward_impl", _layer_scope, kinds=_K, optional=True)]),
    ],
)
