"""Small helpers for target wrappers (no vLLM imports)."""


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
