"""Per-module additions made after an era module is defined."""


def module_loaded(name, namespace):
    if name.endswith("pmsim_never"):
        return None
    # Import behaviour modules once any era module loads (they register implementations).
    import pmsim.engine  # noqa: F401
    import pmsim.runner  # noqa: F401
    return None
