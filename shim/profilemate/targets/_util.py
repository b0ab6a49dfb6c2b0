"""Declarations and small helpers for target modules (standard library only, imports nothing).

Hook, Path and Target (documented in targets/__init__.py) live here so that every target module
imports them from a module that imports no target: no import cycle.
"""


def arg(args, kwargs, index, name, default=None):
    """Argument `name` of a call seen as (*args, **kwargs) without self; index is its position."""
    if name in kwargs:
        return kwargs[name]
    if len(args) > index:
        return args[index]
    return default


def dig(obj, *names, default=None):
    for n in names:
        obj = getattr(obj, n, None)
        if obj is None:
            return default
    return obj


class Hook:
    __slots__ = ("cls", "method", "factory", "required", "kinds", "optional")

    def __init__(self, cls, method, factory, required=(), kinds=(), optional=False):
        self.cls, self.method, self.factory = cls, method, factory
        self.required, self.kinds, self.optional = tuple(required), tuple(kinds), optional


class Path:
    __slots__ = ("module", "eras", "hooks")

    def __init__(self, module, hooks, eras=""):
        self.module, self.hooks, self.eras = module, list(hooks), eras


class Target:
    """tables: the CSV tables (proto/tables) whose rows this target's hooks produce or feed."""

    def __init__(self, name, component, kinds, paths, doc="", tables=()):
        self.name, self.component, self.kinds = name, component, tuple(kinds)
        self.paths, self.doc, self.tables = list(paths), doc, tuple(tables)

    def modules(self):
        return [p.module for p in self.paths]
