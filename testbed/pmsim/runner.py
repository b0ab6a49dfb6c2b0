"""Worker side: Worker, GPUModelRunner (V1 and V2), CUDA graphs (tape capture/replay) and MoE routing."""
import os
import random
import time

from pmsim import config, impl, tensor, truth
from pmsim.tensor import FakeTensor, Graph
from pmsim.util import call_filtered, construct, era, make_record, mod

NONE, PIECEWISE, FULL = "NONE", "PIECEWISE", "FULL"
_ROUTE = {}


def route_table(layer):
    """Seeded, known routing: hidden value -> top-k experts (Zipf-like popularity per layer)."""
    t = _ROUTE.get(layer)
    if t is None:
        cfg = config.get()
        rng = random.Random(cfg.seed * 1000 + layer)
        weights = [1.0 / (e + 1) for e in range(cfg.experts)]
        t = []
        for _ in range(4096):
            picks = []
            while len(picks) < cfg.top_k:
                e = rng.choices(range(cfg.experts), weights)[0]
                if e not in picks:
                    picks.append(e)
            t.append(picks)
        _ROUTE[layer] = t
    return t


def hidden_value(token, pos):
    return (token * 7919 + pos * 104729 + 1) % 4095 + 1


def use_v2(runner_cls=None):
    cfg = config.get()
    if era() < (0, 16):
        return False
    if cfg.v2_runner.strip():
        return cfg.v2_runner.strip().lower() in ("1", "true", "yes")
    v = os.environ.get("VLLM_USE_V2_MODEL_RUNNER", "")
    if v.strip():
        return v.strip() == "1"
    return era() > (0, 16)


def make_worker(vllm_config, local_rank, rank, in_engine=False):
    if not in_engine:
        truth.record()
    w = construct(mod("vllm.v1.worker.gpu_worker").Worker, vllm_config=vllm_config, local_rank=local_rank,
                  rank=rank, distributed_init_method="tcp://127.0.0.1:29500", is_driver_worker=rank == 0)
    # Methods an era's Worker lacks in targets.json run as the simulator's own steps.
    (w.init_device if hasattr(w, "init_device") else lambda: _worker_init_device(w, {}))()
    (w.load_model if hasattr(w, "load_model") else lambda: _worker_load(w, {}))()
    (w.compile_or_warm_up_model if hasattr(w, "compile_or_warm_up_model") else lambda: _worker_warm(w, {}))()
    return w


def _rec():
    rec = truth.record()
    if "runner_steps" not in rec:
        cfg = config.get()
        rec.update(runner_steps=0, steps_by_mode={NONE: 0, PIECEWISE: 0, FULL: 0}, captures=[],
                   piecewise_replays=0, full_replays=0, routed_tokens=0, real_tokens=0,
                   expert_counts=[[0] * cfg.experts for _ in range(cfg.moe_layers)],
                   expert_counts_real=[[0] * cfg.experts for _ in range(cfg.moe_layers)],
                   expert_counts_by_step=[],
                   encoder_calls=0, encoder_items=0, runner_step_ms=[], top_k=cfg.top_k, moe_layers=cfg.moe_layers,
                   pieces=cfg.pieces, v2_runner=False, tokens_by_step=[], reqs_by_step=[], encoder_steps=[])
    return rec


@impl("Worker.__init__")
def _worker_init(self, a):
    self.vllm_config, self.rank, self.local_rank = a["vllm_config"], a["rank"], a["local_rank"]
    self.is_driver_worker = a.get("is_driver_worker", self.rank == 0)


@impl("Worker.init_device")
def _worker_init_device(self, a):
    call_filtered(mod("vllm.v1.worker.gpu_worker").init_worker_distributed_environment,
                  vllm_config=self.vllm_config, rank=self.rank, distributed_init_method="tcp://127.0.0.1:29500",
                  local_rank=self.local_rank)
    from pmsim import engine
    engine.init_groups(self.vllm_config, self.rank, self.local_rank)
    v2 = use_v2()
    cls = mod("vllm.v1.worker.gpu.model_runner" if v2 else "vllm.v1.worker.gpu_model_runner").GPUModelRunner
    self.model_runner = construct(cls, vllm_config=self.vllm_config, device="cuda:%d" % self.local_rank)
    self.model_runner._pm_rank = self.rank
    _rec()["v2_runner"] = v2


@impl("Worker.load_model")
def _worker_load(self, a):
    self.model_runner.load_model()


@impl("Worker.compile_or_warm_up_model")
def _worker_warm(self, a):
    if not config.get().enforce_eager:
        self.model_runner.capture_model()


@impl("Worker.execute_model")
def _worker_exec(self, a):
    return self.model_runner.execute_model(a["scheduler_output"])


# ---------------------------------------------------------------- model: pieces and MoE layers


class SimModel:
    """33 pieces (split at attention); MoE layers sit inside evenly spread pieces (piece_layer)."""

    def __init__(self, runner):
        cfg = config.get()
        self.runner = runner
        self.cfg = cfg
        # Pipeline parallel: stage p holds a contiguous share of the pieces, and builds only the MoE
        # layers inside them (vLLM puts PPMissingLayer in place of the others).
        pp, stage = _pp()
        own = [i for i in range(cfg.pieces) if i * pp // cfg.pieces == stage]
        self.own_layers = [piece_layer(i) for i in own if piece_layer(i) >= 0]
        self.moe = {j: make_moe_layer(j) for j in self.own_layers}
        self.pieces = [self._piece_fn(i) for i in own]
        self.wrapped = list(self.pieces)

    def _piece_fn(self, i):
        layer = piece_layer(i)

        def piece(x):
            # The routing table follows the layer that runs, wrapped in a graph piece or not (eager).
            _current_layer["layer"] = layer
            if layer in self.moe:
                logits = router_logits(x)
                moe_forward_layer(self.moe[layer], x, logits)
            return x
        piece.index = i  # the piece's place in the whole model (pipeline stages hold a share)
        return piece

    def __call__(self, x):
        for fn in self.wrapped:
            x = fn(x)
        return x


def piece_layer(i):
    """The MoE layer inside piece i, or -1: MoE layers sit at evenly spread pieces (1, 1 + n/L, ...),
    so every pipeline stage holds some."""
    cfg = config.get()
    step = max(1, (cfg.pieces - 1) // max(cfg.moe_layers, 1))
    if i >= 1 and (i - 1) % step == 0 and (i - 1) // step < cfg.moe_layers:
        return (i - 1) // step
    return -1


def _pp():
    """(pipeline stages, this worker's stage) from its parallel_state groups."""
    from pmsim import engine
    g = engine._groups.get("pp")
    return (g.world_size, g.rank_in_group) if g is not None else (1, 0)


def router_logits(x):
    out = FakeTensor([0] * len(x.data), x.shape)
    tensor.apply(lambda: out.data.__setitem__(slice(None), x.data))
    return out


def topk_op(logits, layer_idx, top_k):
    n = len(logits.data)
    ids = FakeTensor([0] * (n * top_k), (n, top_k))
    weights = FakeTensor([1] * (n * top_k), (n, top_k))
    table = route_table(layer_idx)

    def run():
        d = ids.data
        for i, h in enumerate(logits.data):
            d[i * top_k:(i + 1) * top_k] = table[h]
    tensor.apply(run)
    return weights, ids


_layers_by_name = {}


def make_moe_layer(j):
    cfg = config.get()
    name = "model.layers.%d.mlp.experts" % j
    layer_mod = mod("vllm.model_executor.layers.fused_moe.layer")
    if era() > (0, 16):
        layer = layer_mod.FusedMoEFactory(num_experts=cfg.experts, top_k=cfg.top_k, prefix=name)
    else:
        layer = construct(layer_mod.FusedMoE, num_experts=cfg.experts, top_k=cfg.top_k, hidden_size=64,
                          intermediate_size=128, prefix=name)
    layer.layer_name = name
    layer.top_k = cfg.top_k
    layer.global_num_experts = cfg.experts
    layer._pm_index = j
    if era() >= (0, 16):
        router_cls = mod("vllm.model_executor.layers.fused_moe.router.base_router").BaseRouter
        layer.router = construct(router_cls, top_k=cfg.top_k, global_num_experts=cfg.experts)
        layer.router._pm_index = j
    _layers_by_name[name] = layer
    return layer


class _FactoryMoE:
    """What main's FusedMoEFactory returns here: a layer whose forward goes through MoERunner."""

    def __init__(self, prefix):
        self.prefix = prefix


@impl("vllm.model_executor.layers.fused_moe.layer:FusedMoEFactory")
def _factory(owner, a):
    kw = a.get("kwargs") or {}
    layer = _FactoryMoE(kw.get("prefix", ""))
    runner_cls = mod("vllm.model_executor.layers.fused_moe.runner.moe_runner").MoERunner
    layer.runner = construct(runner_cls, layer_name=kw.get("prefix", ""))
    layer.runner._pm_layer = layer
    return layer


def moe_forward_layer(layer, x, logits):
    e = era()
    if e > (0, 16):
        return layer.runner.forward(x, logits)
    if e >= (0, 16) or not hasattr(type(layer), "forward"):
        # CustomOp era (2025-08-13+): CustomOp.forward dispatches to forward_cuda.
        return layer.forward_cuda(x, logits)
    return layer.forward(x, logits)


@impl("FusedMoE.forward", "FusedMoE.forward_cuda", "FusedMoE.forward_native")
def _fmoe_forward(self, a):
    x, logits = a["hidden_states"], a["router_logits"]
    if era() < (0, 8):
        return _select_static(self, x, logits)
    return mod("vllm.model_executor.layers.fused_moe.layer").moe_forward(x, logits, self.layer_name)


def _select_static(layer, x, logits):
    fm = mod("vllm.model_executor.layers.fused_moe.layer").FusedMoE
    fm.select_experts(hidden_states=x, router_logits=logits, top_k=layer.top_k, use_grouped_topk=False,
                      renormalize=True)
    return x


@impl("vllm.model_executor.layers.fused_moe.layer:moe_forward")
def _moe_forward(owner, a):
    layer = _layers_by_name[a["layer_name"]]
    return layer.forward_impl(a["hidden_states"], a["router_logits"])


@impl("FusedMoE.forward_impl")
def _forward_impl(self, a):
    if era() >= (0, 16):
        self.router.select_experts(a["hidden_states"], a["router_logits"])
        return a["hidden_states"]
    return _select_static(self, a["hidden_states"], a["router_logits"])


@impl("FusedMoE.select_experts")
def _select_experts_static(owner, a):
    # static in these eras: the layer is found from the tensor's origin; routing is per layer index.
    layer = _current_layer["layer"]
    return topk_op(a["router_logits"], layer, a["top_k"])


_current_layer = {"layer": 0}


@impl("MoERunner.__init__")
def _moe_runner_init(self, a):
    cfg = config.get()
    self.layer_name = a["layer_name"]
    router_cls = mod("vllm.model_executor.layers.fused_moe.router.base_router").BaseRouter
    self.router = construct(router_cls, top_k=cfg.top_k, global_num_experts=cfg.experts)


@impl("MoERunner.forward")
def _moe_runner_forward(self, a):
    return self._forward_impl(a["hidden_states"], a["router_logits"], None)


@impl("MoERunner._forward_impl")
def _moe_runner_impl(self, a):
    r = self.router
    fn = getattr(r, "select_experts", None) or r._select_experts
    fn(a["hidden_states"], a["router_logits"])
    return a["hidden_states"]


@impl("BaseRouter.__init__")
def _router_init(self, a):
    self.top_k, self.global_num_experts = a["top_k"], a["global_num_experts"]
    self.capture_fn = None


@impl("BaseRouter.set_capture_fn")
def _router_set_capture(self, a):
    self.capture_fn = a["capture_fn"]


@impl("BaseRouter.select_experts", "BaseRouter._select_experts")
def _router_select(self, a):
    w, ids = topk_op(a["router_logits"], _current_layer["layer"], self.top_k)
    if getattr(self, "capture_fn", None) is not None:
        self.capture_fn(ids)
    return w, ids


# ---------------------------------------------------------------- CUDA graph wrappers


class FwdCtx:
    mode = NONE
    desc = None


_ctx = FwdCtx()


def _wrap_pieces(runner):
    model = runner._pm_model
    e = era()
    if runner._pm_eager:
        return
    if e < (0, 8):
        pb = mod("vllm.compilation.backends").PiecewiseBackend
        wrapped = []
        for i, fn in enumerate(model.pieces):
            b = pb.__new__(pb)
            b.piecewise_compile_index, b.total_piecewise_compiles = fn.index, config.get().pieces
            b.compiled_graph_for_general_shape = fn
            b.concrete_size_entries = {s: make_record(dict_entry(), runtime_shape=s, cudagraph=None)
                                       for s in config.get().capture_sizes}
            wrapped.append(b)
        model.wrapped = wrapped
        return
    cgw = mod("vllm.compilation.cuda_graph").CUDAGraphWrapper
    wrapped = []
    for i, fn in enumerate(model.pieces):
        w = cgw.__new__(cgw)
        w.__dict__.update(runnable=_LayerTracker(fn, fn.index), runtime_mode=PIECEWISE, concrete_cudagraph_entries={},
                          _pm_piece=i)
        wrapped.append(w)
    model.wrapped = wrapped


def dict_entry():
    class _E:
        pass
    return _E


class _LayerTracker:
    """Sets which MoE layer is running (static select_experts has no layer argument)."""

    def __init__(self, fn, i):
        self.fn, self.i = fn, i

    def __call__(self, x):
        _current_layer["layer"] = piece_layer(self.i)
        return self.fn(x)


@impl("PiecewiseBackend.__call__")
def _pb_call(self, a):
    x = a["args"][0]
    _current_layer["layer"] = piece_layer(self.piecewise_compile_index)
    entry = self.concrete_size_entries.get(x.shape[0])
    if entry is None or _ctx.mode == NONE:
        return self.compiled_graph_for_general_shape(x)
    return _capture_or_replay(entry, "cudagraph", lambda: self.compiled_graph_for_general_shape(x), PIECEWISE, x)


def _capture_or_replay(entry, attr, fn, mode, out=None):
    g = getattr(entry, attr, None)
    if g is None:
        g = Graph()
        with g:
            fn()
        setattr(entry, attr, g)
        return out
    g.replay()
    rec = _rec()
    rec["piecewise_replays" if mode == PIECEWISE else "full_replays"] += 1
    return out


@impl("CUDAGraphWrapper.__call__")
def _cgw_call(self, a):
    args = a.get("args") or ()
    if _ctx.mode == NONE or _ctx.mode != self.runtime_mode:
        return self.runnable(*args)
    entries = self.concrete_cudagraph_entries
    key = _ctx.desc
    entry = entries.get(key)
    if entry is None:
        entry = entries[key] = make_record(mod("vllm.compilation.cuda_graph").CUDAGraphEntry, batch_descriptor=key,
                                           cudagraph=None)
    return _capture_or_replay(entry, "cudagraph", lambda: self.runnable(*args), self.runtime_mode,
                             args[0] if args else None)


@impl("CUDAGraphWrapper.__getattr__")
def _cgw_getattr(self, a):
    key = a["key"]
    runnable = self.__dict__.get("runnable")
    if runnable is not None and hasattr(runnable, key):
        return getattr(runnable, key)
    raise AttributeError(key)


@impl("CUDAGraphWrapper.unwrap")
def _cgw_unwrap(self, a):
    return self.runnable


# ---------------------------------------------------------------- runner


@impl("GPUModelRunner.__init__")
def _runner_init(self, a):
    cfg = config.get()
    self.vllm_config = a.get("vllm_config")
    self._pm_eager = cfg.enforce_eager
    self.cudagraph_batch_sizes = [] if cfg.enforce_eager else list(cfg.capture_sizes)
    self.use_cuda_graph = not cfg.enforce_eager
    self._pm_v2 = type(self).__module__.endswith("gpu.model_runner")
    self._pm_full = {}
    self._pm_bufs = {}


@impl("GPUModelRunner.load_model")
def _runner_load(self, a):
    self._pm_model = SimModel(self)
    _rec()["own_layers"] = list(self._pm_model.own_layers)  # this pipeline stage's MoE layers
    _wrap_pieces(self)
    e = era()
    self._pm_full_keys = set()
    self._pm_pw_keys = set()
    if not self._pm_eager and e >= (0, 10):
        cfg = config.get()
        self._pm_pw_keys = set(cfg.capture_sizes)
        self._pm_full_keys = {s for s in cfg.capture_sizes if s <= cfg.max_num_seqs}
        if e < (0, 16) or not self._pm_v2:
            d = mod("vllm.v1.cudagraph_dispatcher").CudagraphDispatcher
            self.cudagraph_dispatcher = d.__new__(d)
            self.cudagraph_dispatcher._pm_runner = self
            # As V1's GPUModelRunner.load_model: a CUDAGraphWrapper in FULL runtime mode around the
            # whole model; it captures and replays FULL graphs, and passes other modes through.
            cgw = mod("vllm.compilation.cuda_graph").CUDAGraphWrapper
            w = cgw.__new__(cgw)
            w.__dict__.update(runnable=self._pm_model, runtime_mode=FULL, concrete_cudagraph_entries={})
            self._pm_forward = w
        else:
            cu = mod("vllm.v1.worker.gpu.cudagraph_utils")
            m = cu.CudaGraphManager
            self.cudagraph_manager = m.__new__(m)
            self.cudagraph_manager._pm_runner = self
            mm = getattr(cu, "ModelCudaGraphManager", None)  # main: the model's manager captures
            if mm is not None:
                self._pm_model_cg = mm.__new__(mm)
                self._pm_model_cg._pm_runner = self


def _forward(runner):
    """What the runner calls for a forward: the FULL wrapper around the model where the era has one."""
    return getattr(runner, "_pm_forward", None) or runner._pm_model


def _buffer(runner, n):
    b = runner._pm_bufs.get(n)
    if b is None:
        b = runner._pm_bufs[n] = FakeTensor([0] * n, (n,))
    return b


@impl("GPUModelRunner.capture_model")
def _capture_model(self, a):
    if self._pm_eager:
        return 0
    if self._pm_v2:
        # V2: the graph manager captures (v0.16: capture_graph per size, FULL only; main: capture()
        # over its descriptors, FULL through create_forward_fn, PIECEWISE through the piece wrappers).
        mgr = self.cudagraph_manager
        if era() > (0, 16):
            call_filtered(self._pm_model_cg.capture, model=self._pm_model)
        else:
            call_filtered(mgr.capture, model=self._pm_model)
        return 0
    for size in sorted(config.get().capture_sizes, reverse=True):
        _capture_one(self, PIECEWISE, size)
        if size in self._pm_full_keys:
            _capture_one(self, FULL, size)
    return 0


def _capture_one(runner, mode, size):
    """Captures one graph (FULL) or one size's pieces (PIECEWISE) and notes it in the ground truth."""
    _run_forward(runner, size, mode, size, capture=True)
    _rec()["captures"].append({"mode": mode, "size": size,
                               "pieces": len(runner._pm_model.pieces) if mode == PIECEWISE else 1})


def _v2_descs(runner):
    """The V2 manager's capture list, largest first: PIECEWISE per size (main only), FULL for decode sizes."""
    out = []
    for size in sorted(config.get().capture_sizes, reverse=True):
        if era() > (0, 16):
            out.append((PIECEWISE, size))
        if size in runner._pm_full_keys:
            out.append((FULL, size))
    return out


@impl("CudaGraphManager.capture")
def _v2_capture(self, a):
    r = self._pm_runner
    if era() > (0, 16):
        make = a["create_forward_fn"]
        bed = mod("vllm.v1.worker.gpu.cudagraph_utils").BatchExecutionDescriptor
        for mode, size in _v2_descs(r):
            desc = make_record(bed, cg_mode=mode, num_tokens=size, num_reqs=size if mode == FULL else None,
                               uniform_token_count=1 if mode == FULL else None)
            fwd, _ = make(desc)
            fwd(mode)
        return None
    for mode, size in _v2_descs(r):
        call_filtered(self.capture_graph, num_tokens=size, model=a.get("model"))
    return None


@impl("ModelCudaGraphManager.capture")
def _v2_model_capture(self, a):
    r = self._pm_runner

    def create_forward_fn(desc):
        def forward(cg_mode):
            _capture_one(r, cg_mode, desc.num_tokens)
        return forward, None
    # ModelCudaGraphManager.capture hands its forward maker to CudaGraphManager.capture.
    return r.cudagraph_manager.capture(create_forward_fn)


@impl("CudaGraphManager.capture_graph")
def _v2_capture_graph(self, a):
    _capture_one(self._pm_runner, FULL, a["num_tokens"])


def _desc(n, uniform):
    if era() > (0, 16) and _has_mod("vllm.v1.worker.gpu.cudagraph_utils"):
        pass
    bd = getattr(mod("vllm.forward_context"), "BatchDescriptor", None)
    if bd is None:
        return (n, uniform)
    fields = getattr(bd, "_fields", None) or list(getattr(bd, "__dataclass_fields__", {}))
    kw = {"num_tokens": n}
    for name in ("uniform_decode", "uniform"):
        if name in fields:
            kw[name] = uniform
    try:
        return bd(**kw)
    except TypeError:
        return (n, uniform)


def _has_mod(name):
    try:
        mod(name)
        return True
    except ImportError:
        return False


def _pad(n):
    for s in config.get().capture_sizes:
        if s >= n:
            return s
    return n


@impl("CudagraphDispatcher.dispatch")
def _dispatch(self, a):
    r = self._pm_runner
    if "batch_descriptor" in a:
        n, uniform = a["batch_descriptor"].num_tokens, getattr(a["batch_descriptor"], "uniform_decode", False)
    else:
        n, uniform = a["num_tokens"], a.get("uniform_decode", False)
    if uniform and n in r._pm_full_keys:
        return FULL, _desc(n, True)
    if n in r._pm_pw_keys:
        return PIECEWISE, _desc(n, False)
    return NONE, None


@impl("GPUModelRunner._determine_batch_execution_and_padding")
def _determine(self, a):
    n = a["num_tokens"]
    uniform = a["max_num_scheduled_tokens"] == 1
    d = self.cudagraph_dispatcher
    padded = _pad(n) if not self._pm_eager else n
    mode, desc = call_filtered(d.dispatch, num_tokens=padded, uniform_decode=uniform,
                               batch_descriptor=_desc(padded, uniform))
    if mode == NONE:
        padded = n
    return mode, desc if desc is not None else _desc(padded, False), False, None, (n, padded)


@impl("CudaGraphManager.dispatch")
def _v2_dispatch(self, a):
    r = self._pm_runner
    n = a["num_tokens"]
    padded = _pad(n)
    uniform = a.get("uniform_token_count") == 1
    mode = NONE
    if uniform and padded in r._pm_full_keys:
        mode = FULL
    elif padded in r._pm_pw_keys and era() > (0, 16):
        mode = PIECEWISE
    return make_record(mod("vllm.v1.worker.gpu.cudagraph_utils").BatchExecutionDescriptor, cg_mode=mode,
                       num_tokens=padded if mode != NONE else n, num_reqs=a["num_reqs"],
                       uniform_token_count=a.get("uniform_token_count"))


@impl("CudaGraphManager.get_cudagraph_size")
def _v2_size(self, a):
    r = self._pm_runner
    per = list(a["num_tokens_per_request"])
    padded = _pad(a["num_tokens_after_padding"])
    if per and max(per) == 1 and padded in r._pm_full_keys:
        return padded
    return None


@impl("CudaGraphManager.run_fullgraph", "CudaGraphManager.run", "ModelCudaGraphManager.run_fullgraph")
def _v2_run(self, a):
    r = self._pm_runner
    n = a["desc"].num_tokens if "desc" in a else a["num_tokens"]
    r._pm_full[n].replay()
    _rec()["full_replays"] += 1


def _run_forward(runner, n, mode, padded, capture=False):
    """One forward over `padded` rows of the static input buffer, in the given graph mode.

    V1 (v0.10+): always through the FULL CUDAGraphWrapper around the model, which captures or
    replays in FULL mode and passes PIECEWISE/NONE through to the piece wrappers, as vLLM's.
    V2: FULL graphs belong to the graph manager (captured directly, replayed by run/run_fullgraph).
    """
    _ctx.mode, _ctx.desc = mode, _desc(padded, mode == FULL)
    x = _buffer(runner, padded)
    model = runner._pm_model
    try:
        if mode == FULL and runner._pm_v2:
            if capture:
                g = Graph()
                with g:
                    model(x)
                runner._pm_full[padded] = g
                return
            mgr = runner.cudagraph_manager
            if era() > (0, 16):
                desc = make_record(mod("vllm.v1.worker.gpu.cudagraph_utils").BatchExecutionDescriptor,
                                   cg_mode=FULL, num_tokens=padded, num_reqs=n, uniform_token_count=1)
                mgr.run_fullgraph(desc)
            else:
                mgr.run(padded)
            return
        _forward(runner)(x)
    finally:
        _ctx.mode, _ctx.desc = NONE, None


@impl("GPUModelRunner.execute_model")
def _execute_model(self, a):
    so = a["scheduler_output"]
    cfg = config.get()
    rec = _rec()
    t0 = time.perf_counter()
    n = so.total_num_scheduled_tokens
    reqs = so.pm_reqs
    if not n:
        return {}
    config.inject(self._pm_rank, rec["runner_steps"])
    # encoder inputs
    enc = so.scheduled_encoder_inputs or {}
    if enc:
        if self._pm_v2:
            er = getattr(self, "encoder_runner", None)
            if er is None:
                er_cls = mod("vllm.v1.worker.gpu.mm.encoder_runner").EncoderRunner
                er = self.encoder_runner = er_cls.__new__(er_cls)
            items = [(rid, i) for rid in sorted(enc) for i in enc[rid]]
            call_filtered(er.execute_mm_encoder, scheduler_output=so, model=self._pm_model,
                          mm_hashes=["%s:%d" % it for it in items],
                          mm_kwargs=[{"request_id": rid, "item": i} for rid, i in items])
        elif era() < (0, 8):
            self._execute_encoder(so)
        else:
            self._execute_mm_encoder(so)
        rec["encoder_calls"] += 1
        rec["encoder_steps"].append(rec["runner_steps"] + 1)
        rec["encoder_items"] += sum(len(v) for v in enc.values())
    vals = []
    for rid in sorted(reqs):
        r = reqs[rid]
        for pos in range(r["start"], r["start"] + r["n"]):
            vals.append(hidden_value(r["tokens"][pos], pos))
    max_q = max(r["n"] for r in reqs.values())
    e = era()
    if self._pm_eager:
        mode, padded = NONE, n
    elif e < (0, 10):
        mode, padded = (PIECEWISE, _pad(n)) if self.use_cuda_graph and n <= self.cudagraph_batch_sizes[-1] \
            else (NONE, n)
    elif self._pm_v2:
        desc = self.cudagraph_manager.dispatch(num_reqs=len(reqs), num_tokens=n,
                                               uniform_token_count=max_q if max_q == min(
                                                   r["n"] for r in reqs.values()) else None,
                                               num_active_loras=0) if e > (0, 16) else None
        if desc is None:
            size = self.cudagraph_manager.get_cudagraph_size(n, [r["n"] for r in reqs.values()])
            mode, padded = (FULL, size) if size else (NONE, n)
        else:
            mode, padded = desc.cg_mode, desc.num_tokens
    elif e < (0, 16):
        mode, bd = self.cudagraph_dispatcher.dispatch(_desc(_pad(n), max_q == 1))
        padded = bd.num_tokens if bd is not None else n
    else:
        mode, bd, _, _, _ = self._determine_batch_execution_and_padding(n, len(reqs), None, max_q, False)
        padded = bd.num_tokens if mode != NONE else n
    buf = _buffer(self, padded)
    buf.data[:] = vals + [0] * (padded - n)
    _run_forward(self, n, mode, padded)
    # ground truth from the simulator's own routing table, independent of any hook.
    step_counts = {}
    for j in self._pm_model.own_layers:
        t = route_table(j)
        counts, real = rec["expert_counts"][j], rec["expert_counts_real"][j]
        for i, h in enumerate(buf.data):
            for ex in t[h]:
                counts[ex] += 1
                step_counts[j, ex] = step_counts.get((j, ex), 0) + 1
                if i < n:
                    real[ex] += 1
    rec["expert_counts_by_step"].append([[j, ex, c] for (j, ex), c in sorted(step_counts.items())])
    rec["routed_tokens"] += padded
    rec["real_tokens"] += n
    rec["runner_steps"] += 1
    rec["steps_by_mode"][mode] += 1
    rec["tokens_by_step"].append([n, padded, mode])
    rec["reqs_by_step"].append(len(reqs))
    work = cfg.step_work_ms + (cfg.slow_ms if self._pm_rank == cfg.slow_rank else 0.0)
    end = t0 + work / 1000.0
    while time.perf_counter() < end:
        pass
    rec["runner_step_ms"].append(round((time.perf_counter() - t0) * 1000.0, 3))
    return {rid: (hidden_value(r["tokens"][-1], len(r["tokens"])) % 50000) for rid, r in reqs.items()}


@impl("GPUModelRunner._execute_mm_encoder", "GPUModelRunner._execute_encoder", "EncoderRunner.execute_mm_encoder")
def _encoder(self, a):
    return []
