"""Compares a vLLM-shaped tree with targets.json: modules, classes, methods, parameters, descriptors."""
import ast
import importlib
import importlib.util
import inspect
import json
import os
import re
import sys

TESTBED = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TESTBED not in sys.path:
    sys.path.append(TESTBED)  # the era modules import pmsim
ERAS = {"v0.7.3": "v0_7_3", "v0.10.2": "v0_10_2", "v0.11.0": "v0_11_0", "v0.16.0": "v0_16_0", "main-2026-08-20": "main_2026_08_20"}
# The six profiled areas' components (CUDA graphs, KV cache, MoE, model runner, scheduler) plus the
# process/rank surfaces the shim patches.
COMPONENTS = [
    "cuda_graph", "piecewise_backend_old", "piecewise_backend", "breakable_cudagraph", "cudagraph_dispatcher",
    "cudagraph_mode", "v2_cudagraph_utils", "kv_cache_manager", "block_pool", "fused_moe_layer",
    "shared_fused_moe", "moe_router_base", "moe_router_iface", "moe_runner", "moe_runner_iface",
    "moe_router_factory", "moe_routed_experts", "gpu_model_runner_v1", "gpu_model_runner_v2", "v2_encoder_runner",
    "scheduler", "scheduler_output", "gpu_worker", "engine_core", "multiproc_executor", "parallel_state",
    "plugins", "forward_context", "request",
]


def targets_path():
    env = os.environ.get("PROFILEMATE_TARGETS_JSON")
    return env if env else os.path.join(TESTBED, "targets.json")


def load_targets():
    with open(targets_path()) as f:
        return json.load(f)


KINDS = {"posonly": inspect.Parameter.POSITIONAL_ONLY, "pos": inspect.Parameter.POSITIONAL_OR_KEYWORD,
         "var": inspect.Parameter.VAR_POSITIONAL, "kwonly": inspect.Parameter.KEYWORD_ONLY,
         "varkw": inspect.Parameter.VAR_KEYWORD}


def expected(sig):
    """(descriptor kind, [(name, kind)]) from a targets.json signature string."""
    m = re.search(r"(?:^|\s)(async\s+)?def\s+\w+\s*\(", sig)
    decos, src = sig[:m.start()], sig[m.start():].strip().replace("async def", "def", 1)
    kind = "function"
    for k in ("staticmethod", "classmethod", "cached_property", "property"):
        if re.search(r"(^|[\s@.])" + k + r"\b", decos):
            kind = k
            break
    if re.search(r"@\w+\.setter", decos):
        kind = "property"
    fn = ast.parse(src + ":\n    pass\n").body[0]
    a = fn.args
    params = [(x.arg, KINDS["posonly"]) for x in a.posonlyargs] + [(x.arg, KINDS["pos"]) for x in a.args]
    if a.vararg:
        params.append((a.vararg.arg, KINDS["var"]))
    params += [(x.arg, KINDS["kwonly"]) for x in a.kwonlyargs]
    if a.kwarg:
        params.append((a.kwarg.arg, KINDS["varkw"]))
    return kind, params, ".setter" in decos


def actual(cls, name):
    obj = inspect.getattr_static(cls, name)
    import functools
    if isinstance(obj, staticmethod):
        return "staticmethod", obj.__func__
    if isinstance(obj, classmethod):
        return "classmethod", obj.__func__
    if isinstance(obj, functools.cached_property):
        return "cached_property", obj.func
    if isinstance(obj, property):
        return "property", obj
    return "function", obj


def params_of(fn):
    return [(p.name, p.kind) for p in inspect.signature(fn).parameters.values()]


def check_tree(era, root, components=COMPONENTS, targets=None):
    """Returns a list of differences between the tree at root (holding vllm/) and targets.json[era]."""
    targets = targets or load_targets()
    for m in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[m]
    sys.path.insert(0, root)
    problems = []
    try:
        for comp in components:
            c = targets[era].get(comp)
            if not isinstance(c, dict) or not c.get("module"):
                continue
            mod_name = c["module"]
            try:
                spec = importlib.util.find_spec(mod_name)
            except ModuleNotFoundError:
                spec = None
            if spec is not None and spec.origin and not spec.origin.startswith(root):
                spec = None
            if not c.get("exists"):
                if spec is not None:
                    problems.append("%s: %s exists but must be absent" % (comp, mod_name))
                continue
            if spec is None:
                problems.append("%s: module %s missing" % (comp, mod_name))
                continue
            mod = importlib.import_module(mod_name)
            funcs = c.get("functions") or {}
            if isinstance(funcs, list):
                funcs = {f: None for f in funcs}
            for fname, sig in funcs.items():
                fn = getattr(mod, fname, None)
                if fn is None:
                    problems.append("%s: function %s.%s missing" % (comp, mod_name, fname))
                elif sig is not None:
                    _, want, _ = expected(sig)
                    if params_of(fn) != want:
                        problems.append("%s: %s.%s params %s != %s" % (comp, mod_name, fname, params_of(fn), want))
            for cname, cls_t in (c.get("classes") or {}).items():
                cls = getattr(mod, cname, None)
                if not inspect.isclass(cls):
                    problems.append("%s: class %s.%s missing" % (comp, mod_name, cname))
                    continue
                for mname, sig in (cls_t.get("methods") or {}).items():
                    where = "%s.%s.%s" % (mod_name, cname, mname)
                    try:
                        have_kind, obj = actual(cls, mname)
                    except AttributeError:
                        problems.append("%s: method %s missing" % (comp, where))
                        continue
                    try:
                        want_kind, want, setter = expected(sig)
                    except SyntaxError:
                        continue
                    if have_kind != want_kind:
                        problems.append("%s: %s is %s, want %s" % (comp, where, have_kind, want_kind))
                        continue
                    if have_kind == "property":
                        fn = obj.fset if setter else obj.fget
                        if fn is None:
                            problems.append("%s: %s lacks its %s" % (comp, where, "setter" if setter else "getter"))
                            continue
                    else:
                        fn = obj
                    got = params_of(fn)
                    if got != want:
                        problems.append("%s: %s params %s != %s" % (comp, where, got, want))
    finally:
        sys.path.remove(root)
        for m in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
            del sys.modules[m]
    return problems
