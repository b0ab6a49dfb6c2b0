"""CUDA graphs (worker process): the graph wrapper's __call__, one per captured piece.

Paths: `vllm.compilation.cuda_graph.CUDAGraphWrapper` (v0.10+), `CUDAPiecewiseBackend` in
`vllm.compilation.cuda_piecewise_backend` (v0.9.x), `PiecewiseBackend` in
`vllm.compilation.backends` (v0.6.6-v0.8.x). __call__ is looked up on the type, so the class
attribute is patched. Hot path: the wrapper only counts calls (STATS) for the profiler.
"""
from profilemate.targets import Hook, Path, Target

STATS = {"calls": 0}


def _call(original, rt):
    def __call__(self, *args, **kwargs):
        STATS["calls"] += 1
        return original(self, *args, **kwargs)
    return __call__


TARGET = Target(
    name="cuda_graph", component="CUDAGraphWrapper", kinds=("cuda_graph",),
    paths=[
        Path("vllm.compilation.cuda_graph", eras="v0.10.0+",
             hooks=[Hook("CUDAGraphWrapper", "__call__", _call, kinds=("cuda_graph",))]),
        Path("vllm.compilation.cuda_piecewise_backend", eras="v0.9.x",
             hooks=[Hook("CUDAPiecewiseBackend", "__call__", _call, kinds=("cuda_graph",))]),
        Path("vllm.compilation.backends", eras="v0.6.6-v0.8.x",
             hooks=[Hook("PiecewiseBackend", "__call__", _call, kinds=("cuda_graph",))]),
    ],
)
