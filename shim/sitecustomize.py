"""ProfileMate start-up hook: loads the shim, then the next `sitecustomize` on sys.path.

Boilerplate only: it never raises and never writes to stdout. Python imports the first
`sitecustomize` it finds, so a distribution's or a conda environment's copy further down
sys.path is executed here under the same name to keep it working.
"""


def _profilemate_start():
    try:
        import profilemate as _p
        _p.activate("sitecustomize")
    except Exception:  # the shim must never break the interpreter's start-up
        pass


def _profilemate_chain():
    import os
    import sys
    try:
        here = os.path.dirname(os.path.abspath(__file__))
    except Exception:
        return
    entries = list(sys.path)
    try:
        rest = entries[entries.index(here) + 1:]  # PYTHONPATH names this folder as it is (pmagent)
    except ValueError:
        rest = None
        for i, entry in enumerate(entries):
            try:
                if os.path.abspath(entry or os.getcwd()) == here:
                    rest = entries[i + 1:]
                    break
            except Exception:
                continue
        if rest is None:
            return
    for entry in rest:
        try:
            folder = os.path.abspath(entry or os.getcwd())
        except Exception:
            continue
        if folder == here:
            continue
        for candidate in (os.path.join(folder, "sitecustomize.py"),
                          os.path.join(folder, "sitecustomize", "__init__.py")):
            if os.path.isfile(candidate):
                try:
                    import types
                    mod = types.ModuleType("sitecustomize")
                    mod.__file__ = candidate
                    with open(candidate, "rb") as f:
                        code = compile(f.read(), candidate, "exec")
                    exec(code, mod.__dict__)
                    globals()["_profilemate_chained"] = mod
                except Exception as e:  # a broken chained hook must not break ours either
                    try:
                        sys.stderr.write("[profilemate] chained sitecustomize %s failed: %r\n" % (candidate, e))
                    except Exception:
                        pass
                return


_profilemate_start()
_profilemate_chain()
