"""CUDA graphs (worker process): the per-step dispatch decision and the captures.

Per step (one CPU call per step, never the per-piece wrapper): the decision is noted in
gpu_model_runner.STEP and written as cuda_graph_usage when the step ends.
- v0.10-v0.12 and the dispatcher on later mains: `CudagraphDispatcher.dispatch` ->
  (mode, BatchDescriptor|None);
- V1 since 2025-11-26: `GPUModelRunner._determine_batch_execution_and_padding` (it calls the
  dispatcher; being the outer call, its answer is the one kept; CUDAGraphStat when present);
- V2 runner: `CudaGraphManager.dispatch` -> BatchExecutionDescriptor (mains), or
  `get_cudagraph_size` -> size|None (v0.16, FULL or eager);
- <= v0.9: no dispatcher; gpu_model_runner derives it from use_cuda_graph/cudagraph_batch_sizes.

Captures: the graph wrapper's __call__ (`CUDAGraphWrapper` v0.10+, `CUDAPiecewiseBackend` v0.9,
`PiecewiseBackend` <= v0.8) only while GPUModelRunner.capture_model runs; outside it the wrapper
is one attribute test. A call captured when an entry's graph went from None to set (README §1.3:
first sight or cudagraph None under a matching, non-NONE mode). Pieces of one (mode, size) add up
to one cuda_graph_captures row, written when capture_model returns. V1 captures FULL graphs
through the CUDAGraphWrapper in runtime mode FULL that load_model puts around the whole model
(its entries are keyed by the BatchDescriptor; the PIECEWISE wrappers inside pass through).
The V2 runner captures FULL graphs without a wrapper, through its graph manager:
`CudaGraphManager.capture_graph(num_tokens, ...)` per size (v0.16), or
`CudaGraphManager.capture(create_forward_fn, ...)` (mains 2026+), which calls
create_forward_fn(desc) per BatchExecutionDescriptor and then the returned forward with the
mode; the FULL ones are noted there (PIECEWISE ones go through the piece wrappers above).
"""
import sys
import time

from profilemate import stepctx
from profilemate.targets._util import Hook, Path, Target

_pc = time.perf_counter_ns
STEP = stepctx.STEP


def _mode_name(mode):
    name = getattr(mode, "name", None)
    return name if isinstance(name, str) else str(mode)


def _captured(entries):
    return {k for k, e in entries.items() if getattr(e, "cudagraph", None) is not None}


def _mem():
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            return torch.cuda.memory_allocated()
    except Exception:
        pass
    return None


def _tokens(key):
    n = getattr(key, "num_tokens", None)
    if n is None and isinstance(key, tuple) and key:
        n = key[0]
    return n if isinstance(n, int) else key if isinstance(key, int) else ""  # unknown: empty cell


def _capture_call(entries_attr, piecewise_only):
    def factory(original, rt):
        def __call__(self, *args, **kwargs):
            if not STEP.capturing:
                return original(self, *args, **kwargs)
            entries = getattr(self, entries_attr, None)
            if not isinstance(entries, dict):
                return original(self, *args, **kwargs)
            before, m0 = _captured(entries), _mem()
            t0 = _pc()
            out = original(self, *args, **kwargs)
            dt = _pc() - t0
            try:
                new = _captured(entries) - before
                if new:
                    m1 = _mem()
                    key = next(iter(new))
                    mode = "PIECEWISE" if piecewise_only else _mode_name(getattr(self, "runtime_mode", ""))
                    stepctx.note_capture(mode, _tokens(key), "" if piecewise_only else str(key), dt,
                                         (m1 - m0) if m0 is not None and m1 is not None else None)
            except Exception:
                pass
            return out
        return __call__
    return factory


def _v2_capture_graph(original, rt):
    def capture_graph(self, *args, **kwargs):
        t0 = _pc()
        out = original(self, *args, **kwargs)
        try:
            n = args[0] if args else kwargs.get("num_tokens")
            stepctx.note_capture("FULL", n if isinstance(n, int) else "", "", _pc() - t0)
        except Exception:
            pass
        return out
    return capture_graph


def _timed_forward(fwd, desc):
    def forward(mode, *args, **kwargs):
        t0 = _pc()
        out = fwd(mode, *args, **kwargs)
        try:
            name = _mode_name(mode)
            if name == "FULL":
                n = getattr(desc, "num_tokens", None)
                stepctx.note_capture(name, n if isinstance(n, int) else "", str(desc), _pc() - t0)
        except Exception:
            pass
        return out
    return forward


def _v2_capture(original, rt):
    def capture(self, *args, **kwargs):
        make = args[0] if args else kwargs.get("create_forward_fn")
        if not callable(make):
            return original(self, *args, **kwargs)

        def create_forward_fn(desc, *a, **kw):
            out = make(desc, *a, **kw)
            try:
                if isinstance(out, tuple) and out and callable(out[0]):
                    return (_timed_forward(out[0], desc),) + tuple(out[1:])
            except Exception:
                pass
            return out
        if args:
            return original(self, create_forward_fn, *args[1:], **kwargs)
        kwargs["create_forward_fn"] = create_forward_fn
        return original(self, **kwargs)
    return capture


def _note(mode, padded, source):
    STEP.mode, STEP.padded, STEP.source = mode, padded, source


def _dispatch(original, rt):
    def dispatch(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if STEP.active:
            try:
                mode, bd = _mode_name(out[0]), out[1]
                _note(mode, getattr(bd, "num_tokens", None) if mode != "NONE" else None, "dispatcher")
            except Exception:
                pass
        return out
    return dispatch


def _determine(original, rt):
    def determine(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if STEP.active:
            try:
                mode = _mode_name(out[0])
                stat = out[4] if len(out) > 4 else None
                padded = getattr(stat, "num_padded_tokens", None)
                if padded is None and mode != "NONE":
                    padded = getattr(out[1], "num_tokens", None)
                _note(mode, padded, "runner")
            except Exception:
                pass
        return out
    return determine


def _v2_dispatch(original, rt):
    def dispatch(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if STEP.active:
            try:
                mode = _mode_name(out.cg_mode)
                _note(mode, out.num_tokens if mode != "NONE" else None, "cudagraph_manager")
            except Exception:
                pass
        return out
    return dispatch


def _v2_size(original, rt):
    def get_cudagraph_size(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if STEP.active:
            _note("FULL" if out else "NONE", out or None, "cudagraph_manager")
        return out
    return get_cudagraph_size


_K = ("cuda_graph",)

TARGET = Target(
    tables=("cuda_graph_captures", "cuda_graph_usage"),
    name="cuda_graph", component="CUDAGraphWrapper", kinds=_K,
    paths=[
        Path("vllm.compilation.cuda_graph", eras="v0.10.0+", hooks=[
            Hook("CUDAGraphWrapper", "__call__", _capture_call("concrete_cudagraph_entries", False), kinds=_K)]),
        Path("vllm.compilation.cuda_piecewise_backend", eras="v0.9.x", hooks=[
            Hook("CUDAPiecewiseBackend", "__call__", _capture_call("concrete_size_entries", True), kinds=_K)]),
        Path("vllm.compilation.backends", eras="v0.6.6-v0.8.x", hooks=[
            Hook("PiecewiseBackend", "__call__", _capture_call("concrete_size_entries", True), kinds=_K)]),
        Path("vllm.v1.cudagraph_dispatcher", eras="v0.10.0+", hooks=[
            Hook("CudagraphDispatcher", "dispatch", _dispatch, kinds=_K)]),
        Path("vllm.v1.worker.gpu_model_runner", eras="2025-11-26+ (V1 runner)", hooks=[
            Hook("GPUModelRunner", "_determine_batch_execution_and_padding", _determine, kinds=_K,
                 optional=True)]),
        Path("vllm.v1.worker.gpu.cudagraph_utils", eras="2025-11-21+ (V2 runner)", hooks=[
            Hook("CudaGraphManager", "dispatch", _v2_dispatch, kinds=_K, optional=True),
            Hook("CudaGraphManager", "get_cudagraph_size", _v2_size, kinds=_K, optional=True),
            Hook("CudaGraphManager", "capture_graph", _v2_capture_graph, kinds=_K, optional=True),
            Hook("CudaGraphManager", "capture", _v2_capture, kinds=_K, optional=True)]),
    ],
)
