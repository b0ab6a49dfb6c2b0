"""The one helper that wraps vLLM methods, and its exact inverse.

wrap() resolves the attribute on the class that defines it (so AsyncScheduler inherits the
wrapped Scheduler.schedule), keeps the descriptor kind (staticmethod, classmethod, property),
refuses to wrap twice, checks the parameters the wrapper relies on with inspect.signature,
and on a mismatch leaves vLLM's method untouched. unwrap() puts back the exact object that
was in the class's __dict__, so a switched-off profiler costs nothing.
"""
import functools

MARK = "__profilemate_original__"


class PatchError(Exception):
    """A wrap that was refused; str() is the one-line reason."""


class Handle:
    __slots__ = ("owner", "name", "raw", "installed")

    def __init__(self, owner, name, raw, installed):
        self.owner, self.name, self.raw, self.installed = owner, name, raw, installed

    def __repr__(self):
        return "<wrapped %s.%s>" % (getattr(self.owner, "__qualname__", self.owner), self.name)


def defining_class(cls, name):
    for klass in getattr(cls, "__mro__", (cls,)):
        if name in vars(klass):
            return klass
    return None


def _unpack(raw):
    """Returns (kind, function) for a class-dict entry."""
    if isinstance(raw, staticmethod):
        return "static", raw.__func__
    if isinstance(raw, classmethod):
        return "class", raw.__func__
    if isinstance(raw, property):
        return "property", raw.fget
    if callable(raw):
        return "plain", raw
    raise PatchError("not callable: %r" % (type(raw).__name__,))


def is_wrapped(cls, name):
    owner = defining_class(cls, name)
    if owner is None:
        return False
    try:
        return hasattr(_unpack(vars(owner)[name])[1], MARK)
    except PatchError:
        return False


def check_params(func, required):
    """Raises PatchError unless every name in `required` is a parameter of func."""
    if not required:
        return
    import inspect
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError) as e:
        raise PatchError("no signature for %s: %s" % (getattr(func, "__qualname__", func), e))
    missing = [p for p in required if p not in params]
    if missing:
        raise PatchError("%s%s lacks parameter(s) %s" % (
            getattr(func, "__qualname__", func), inspect.signature(func), ", ".join(missing)))


def wrap(cls, name, make_wrapper, required=()):
    """Replaces cls.name with make_wrapper(original_function).

    make_wrapper receives the plain function (for a property: its getter) and returns a
    callable taking the same arguments, passing *args/**kwargs through. Returns a Handle
    for unwrap(); raises PatchError (vLLM's method untouched) when the attribute is missing,
    already wrapped, or lacks a required parameter.
    """
    owner = defining_class(cls, name)
    if owner is None:
        raise PatchError("%s has no attribute %s" % (getattr(cls, "__qualname__", cls), name))
    raw = vars(owner)[name]
    kind, func = _unpack(raw)
    if hasattr(func, MARK):
        raise PatchError("%s.%s is already wrapped" % (owner.__qualname__, name))
    check_params(func, required)
    wrapper = make_wrapper(func)
    try:
        functools.update_wrapper(wrapper, func)
    except (AttributeError, TypeError):
        pass
    setattr(wrapper, MARK, func)
    if kind == "static":
        new = staticmethod(wrapper)
    elif kind == "class":
        new = classmethod(wrapper)
    elif kind == "property":
        new = property(wrapper, raw.fset, raw.fdel, raw.__doc__)
    else:
        new = wrapper
    setattr(owner, name, new)
    return Handle(owner, name, raw, new)


def unwrap(handle):
    """Restores the original class attribute exactly; a no-op if someone replaced it since."""
    current = vars(handle.owner).get(handle.name)
    if current is handle.installed:
        setattr(handle.owner, handle.name, handle.raw)
        return True
    return False
