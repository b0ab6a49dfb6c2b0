"""EngineCore identity: role `engine_core` and the data-parallel rank (all V1 eras)."""
from profilemate.targets._util import Hook, Path, Target
from profilemate.targets._util import arg, dig


def _init(original, rt):
    def __init__(self, *args, **kwargs):
        try:
            rt.IDENT.set_role("engine_core")
            dp = dig(arg(args, kwargs, 0, "vllm_config"), "parallel_config", "data_parallel_rank")
            if isinstance(dp, int):
                rt.IDENT.set_ranks(dp=dp)
        except Exception:
            pass
        return original(self, *args, **kwargs)
    return __init__


TARGET = Target(
    name="engine_core", component="EngineCore", kinds=(),
    paths=[Path("vllm.v1.engine.core", eras="v0.6.6+", hooks=[
        Hook("EngineCore", "__init__", _init, required=("vllm_config",)),
    ])],
)
