"""Worker identity: role `worker` and the global rank from Worker.__init__ (all V1 eras)."""
from profilemate.targets import Hook, Path, Target
from profilemate.targets._util import arg, dig


def _init(original, rt):
    def __init__(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        try:
            rt.IDENT.set_role("worker")
            rank = arg(args, kwargs, 2, "rank")
            dp = dig(arg(args, kwargs, 0, "vllm_config"), "parallel_config", "data_parallel_rank")
            rt.IDENT.set_ranks(rank=rank, dp=dp if isinstance(dp, int) else None)
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
