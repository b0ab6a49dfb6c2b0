"""MoE expert selection (worker process).

Paths by era: router era (2026-01-18+, incl. the FusedMoEFactory era where `FusedMoE` is a
function): `BaseRouter._select_experts` (newer mains, called by FusedMoERouter.select_experts)
or `BaseRouter.select_experts` (v0.16) in `...fused_moe.router.base_router`; before: `FusedMoE.select_experts` in
`...fused_moe.layer` (a staticmethod until 2025-11-24, then an instance method; the wrapper
keeps the descriptor kind). Counts calls in STATS for the MoE profiler.
"""
from profilemate.targets import Hook, Path, Target

STATS = {"calls": 0}


def _select(original, rt):
    def select_experts(*args, **kwargs):
        STATS["calls"] += 1
        return original(*args, **kwargs)
    return select_experts


TARGET = Target(
    name="fused_moe", component="FusedMoE", kinds=("moe_expert",),
    paths=[
        Path("vllm.model_executor.layers.fused_moe.router.base_router", eras="2026-01-18+ (router)",
             hooks=[Hook("BaseRouter", ("_select_experts", "select_experts"), _select, required=("hidden_states", "router_logits"),
                         kinds=("moe_expert",))]),
        Path("vllm.model_executor.layers.fused_moe.layer", eras="v0.6.6 to 2026-01-18 (FusedMoE class)",
             hooks=[Hook("FusedMoE", "select_experts", _select, required=("hidden_states", "router_logits"),
                         kinds=("moe_expert",))]),
    ],
)
