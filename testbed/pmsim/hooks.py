"""Per-module additions made after an era module is defined (filled in as behaviour lands)."""


def module_loaded(name, namespace):
    return None
