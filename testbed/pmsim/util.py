"""Small helpers shared by the simulator."""
import importlib
import inspect
import sys


_ERAS = {}


def era():
    """(major, minor) of the test tree's vllm.__version__ (parsed once per version string: the
    simulator asks on every KV call)."""
    v = sys.modules["vllm"].__version__ if "vllm" in sys.modules else importlib.import_module("vllm").__version__
    e = _ERAS.get(v)
    if e is None:
        parts = v.split(".")
        e = _ERAS[v] = (int(parts[0]), int(parts[1]))
    return e


def construct(cls, **known):
    """Calls cls with the parameters its era signature names, taken from known (missing: default/None)."""
    sig = inspect.signature(cls.__init__)
    kw = {}
    for name, p in list(sig.parameters.items())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if name in known:
            kw[name] = known[name]
        elif p.default is p.empty:
            kw[name] = None
    return cls(**kw)


def call_filtered(fn, **known):
    sig = inspect.signature(fn)
    kw = {k: v for k, v in known.items() if k in sig.parameters}
    for name, p in sig.parameters.items():
        if name not in kw and p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            kw[name] = None
    return fn(**kw)


def make_record(cls, **known):
    obj = cls.__new__(cls)
    try:
        obj.__init__()
    except TypeError:
        pass
    for k, v in known.items():
        object.__setattr__(obj, k, v)
    return obj


def mod(name):
    return importlib.import_module(name)


def has(module, attr):
    try:
        return hasattr(importlib.import_module(module), attr)
    except ImportError:
        return False
