"""Worker identity: role `worker` and its ranks from Worker.__init__ (all V1 eras).

vLLM's Worker gets `rank`, its rank among one engine's tp*pp workers; vLLM lays the ranks out as
[dp][pp][tp] (parallel_state.initialize_model_parallel; init_distributed_environment adds
dp_rank * world_size under data parallelism), so from parallel_config:
  tp = rank % tensor_parallel_size, pp = rank // tensor_parallel_size,
  dp = data_parallel_rank, ep = dp * tensor_parallel_size + tp (the EP group spans DP x TP),
  global rank = dp * tensor_parallel_size * pipeline_parallel_size + rank.
EP is set only where vLLM has an EP group (parallel_state.get_ep_group, v0.9+). The parallel_state
groups, read later by profilemate.identity, hold the same numbers.
"""
import sys

from profilemate.targets._util import arg, dig
from profilemate.targets._util import Hook, Path, Target


def _size(pc, name):
    v = getattr(pc, name, None)
    return v if isinstance(v, int) and v > 0 else 1


def ranks(vllm_config, rank):
    """{rank, tp, pp, dp[, ep]} of an engine's worker `rank` (see the module doc); {} when unknown."""
    if not isinstance(rank, int) or rank < 0:
        return {}
    pc = dig(vllm_config, "parallel_config")
    tp, pp = _size(pc, "tensor_parallel_size"), _size(pc, "pipeline_parallel_size")
    dp = getattr(pc, "data_parallel_rank", None)
    dp = dp if isinstance(dp, int) and dp >= 0 else 0
    out = {"rank": dp * tp * pp + rank, "tp": rank % tp, "pp": (rank // tp) % pp, "dp": dp}
    ps = sys.modules.get("vllm.distributed.parallel_state")
    if ps is not None and hasattr(ps, "get_ep_group"):
        out["ep"] = dp * tp + rank % tp
    return out


def _init(original, rt):
    def __init__(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        try:
            rt.IDENT.set_role("worker")
            rt.IDENT.set_ranks(**ranks(arg(args, kwargs, 0, "vllm_config"), arg(args, kwargs, 2, "rank")))
        except Exception:
            pass
        return result
    return __init__


TARGET = Target(
    name="worker", component="Worker", kinds=(),
    paths=[Path("vllm.v1.worker.gpu_worker", eras="v0.6.6+", hooks=[
        Hook("Worker", "__init__", _init, required=("vllm_config", "local_rank", "rank")),
    ])],
)
