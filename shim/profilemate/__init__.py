"""ProfileMate shim: profiles vLLM from inside its processes (standard library only).

This module is the activation, and every entry road ends in activate(): `sitecustomize.py`, the
`.pth` line of `pmagent install` (`import profilemate; profilemate.activate("pth")`), and the
`vllm.general_plugins` entry point `profilemate.bootstrap:vllm_plugin` (profilemate/bootstrap.py
keeps the names older installs use). It decides whether this process profiles and installs the
import hook (the meta-path finder, below).

Kept light on purpose: a process that never imports vLLM loads two modules of the shim at start
(sitecustomize and this package, from byte-code where pmagent prepared it, docs/agent-host.md),
pays one environment lookup and one meta_path entry. Everything heavier (threads, files,
sockets, inspect) is imported only when a vLLM target module is imported, or at once under an
explicit VLLM_ENABLE_PROFILING=1.

Decision table (DESIGN.md, issue "shim core"):
  VLLM_ENABLE_PROFILING=0            -> off here and in every child (they inherit the variable)
  VLLM_ENABLE_PROFILING=1            -> active, started at once (status lines, folder, threads);
                                        in a helper that is not vLLM's (Python's multiprocessing
                                        resource tracker or fork server, Ray's own processes such
                                        as `ray start`): watching, as below (helper()), with
                                        a session id chosen for its children
  PROFILEMATE_ARMED=1 (from parent)  -> watching; starts when a vLLM target module is imported
  otherwise                          -> watching; importing `vllm` arms the process (session id
                                        chosen and exported for children), importing a target
                                        or entry-point module starts it
"""
import os
import sys

try:
    from _thread import get_ident as _get_ident
except ImportError:  # pragma: no cover
    from threading import get_ident as _get_ident

__version__ = "1.0.0"

_state = {"done": False, "mode": "", "origin": "", "armed": False}

# Environment names (ARCHITECTURE.md).
ENV_SWITCH = "VLLM_ENABLE_PROFILING"
ENV_ARMED = "PROFILEMATE_ARMED"
ENV_SESSION = "PROFILEMATE_SESSION"
ENV_SESSION_ORIGIN = "PROFILEMATE_SESSION_ORIGIN"  # "shim": the session id above was made by a shim


def decision(environ=None):
    """Returns (mode, reason); mode is 'off', 'explicit', 'armed' or 'watching'."""
    env = os.environ if environ is None else environ
    switch = env.get(ENV_SWITCH, "").strip()
    if switch == "0":
        return "off", "VLLM_ENABLE_PROFILING=0: profiling switched off for this process and its children"
    if switch == "1":
        what = helper()
        if what:
            return "watching", ("VLLM_ENABLE_PROFILING=1, but this is %s, not a vLLM process: starts only "
                                "if it imports a vLLM target module" % what)
        return "explicit", "VLLM_ENABLE_PROFILING=1: active at once"
    if env.get(ENV_ARMED, "") == "1":
        return "armed", "PROFILEMATE_ARMED=1 (child of an active process): starts when a vLLM target module is imported"
    return "watching", "no switch set: the process arms itself when it imports vllm and starts on a vLLM target module"


# `python -c` commands of Python's multiprocessing helper processes (the resource tracker vLLM's
# spawned queues start, the fork server): they never run vLLM code.
_MP_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.semaphore_tracker", "multiprocessing.forkserver")


def _command_line():
    """This interpreter's command line as it was started (sys.orig_argv, Python 3.10+; else
    /proc/self/cmdline); [] when unreadable."""
    argv = getattr(sys, "orig_argv", None)
    if argv:
        return [str(a) for a in argv]
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except Exception:
        return []


def helper(argv=None):
    """What this process is when it is a helper that is not a vLLM process, from its command line:
    "Python's multiprocessing helper" (`python -c "from multiprocessing.resource_tracker import
    main; ..."`), "a Ray process" (the `ray` command, e.g. `ray start`, or a script of the ray
    package such as its log monitor or dashboard; Ray's workers run vLLM's actors and start on
    the vLLM module they import); "" otherwise. Reads no module."""
    argv = _command_line() if argv is None else argv
    for i, a in enumerate(argv[1:], 1):
        if a == "-c":
            code = argv[i + 1] if i + 1 < len(argv) else ""
            return "Python's multiprocessing helper" if any(m in code for m in _MP_HELPERS) else ""
        if a == "-m" or not a.startswith("-"):
            script = argv[i + 1] if a == "-m" and i + 1 < len(argv) else a
            norm = script.replace("\\", "/")
            if norm.rsplit("/", 1)[-1] == "ray" or script == "ray" or script.startswith("ray.") or \
                    "/site-packages/ray/" in norm or "/dist-packages/ray/" in norm:
                return "a Ray process"
            return ""
    return ""


def activate(origin="sitecustomize"):
    """Idempotent entry for every road (origin: "sitecustomize", "pth", "vllm_plugin"); returns
    the mode of decision(); never raises."""
    try:
        if _state["done"]:
            if origin == "vllm_plugin":
                _arm()
            return _state["mode"]
        _state["done"] = True
        _state["origin"] = origin
        mode, _ = decision()
        _state["mode"] = mode
        if mode == "off":
            return mode
        install_finder(_on_vllm, _on_target)
        if mode == "watching" and os.environ.get(ENV_SWITCH, "").strip() == "1":
            # A helper under VLLM_ENABLE_PROFILING=1 (helper()): it says nothing itself, but the
            # processes it starts (a Ray node's actors) share one session id, as they did with it.
            _arm()
        if mode == "armed":
            _state["armed"] = True
        if mode == "explicit":
            _arm()
            _start("explicit")
        elif origin == "vllm_plugin":
            _arm()
        return mode
    except Exception as e:  # never break the host process
        _warn("bootstrap failed: %r" % (e,))
        return "off"


def vllm_plugin():
    """vllm.general_plugins entry point: vLLM calls it in every process it starts."""
    activate("vllm_plugin")


def _arm():
    """Marks the process tree as active: one session id, inherited by spawned children."""
    if _state["mode"] == "off":
        return
    _state["armed"] = True
    os.environ[ENV_ARMED] = "1"
    if not os.environ.get(ENV_SESSION):
        os.environ[ENV_SESSION] = new_session_id()
        os.environ[ENV_SESSION_ORIGIN] = "shim"  # not given by the user (hello session_given)


def new_session_id():
    from profilemate import procinfo
    return procinfo.new_session_id()


def _on_vllm():
    """Called by the import hook when the top-level `vllm` package is first imported."""
    _arm()


def _on_target(name, module):
    """Called by the import hook after a watched vLLM module executed (or was found imported)."""
    _arm()
    _start("import:" + name)
    from profilemate import runtime
    runtime.module_loaded(name, module)


def _start(why):
    from profilemate import runtime
    runtime.start(why, armed=_state["mode"] == "armed")


def state():
    return dict(_state)


def _warn(msg):
    try:
        sys.stderr.write("[profilemate] %s\n" % msg)
    except Exception:
        pass


# --------------------------------------------------------------------------- the import hook
#
# The sys.meta_path finder that runs a patch right after a watched vLLM module executes.
#
# Design points (each one a defect of the original guide's find_module/load_module hook):
# - implements find_spec (the only protocol Python 3.12+ consults) and walks the other
#   finders itself, with a per-name, per-thread re-entry guard; it never calls
#   importlib.util.find_spec or import_module from inside, so it cannot recurse;
# - wraps only the loader: exec_module runs vLLM's module first, then the patch; every other
#   loader attribute passes through unchanged (`python -m` needs get_code, resources need
#   get_resource_reader); a loader without exec_module (zipimport on 3.9, third-party loaders)
#   gets a proxy whose load_module does the same, and no exec_module of its own;
# - every way a module executes reaches the patch: first import, importlib.reload (the finder
#   is asked again), sourceless .pyc, zip files, namespace packages;
# - non-vLLM names exit after one set lookup; the full watch list is loaded only when the
#   top-level `vllm` package is first imported, or when a `vllm.` submodule is first looked up
#   (a launcher may put a `vllm` module object into sys.modules without importing it);
# - modules already imported when the hook is installed are patched at once;
# - no lock is held while a patch runs, and a patch that raises is reported, never raised
#   into the import.


class _LoaderProxy:
    """Delegates to vLLM's real loader; exec_module also runs the patch afterwards."""

    def __init__(self, loader, name, finder):
        self.__dict__["_pm_loader"] = loader
        self.__dict__["_pm_name"] = name
        self.__dict__["_pm_finder"] = finder

    def create_module(self, spec):
        create = getattr(self._pm_loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module):
        self._pm_loader.exec_module(module)
        # The real loader ran; record it as module.__loader__ consumers expect.
        self._pm_finder._loaded(self._pm_name, module)

    def __getattr__(self, attr):
        return getattr(self._pm_loader, attr)

    def __setattr__(self, attr, value):
        setattr(self._pm_loader, attr, value)

    def __repr__(self):
        return "<profilemate loader for %r: %r>" % (self._pm_name, self._pm_loader)


class _LegacyLoaderProxy:
    """For loaders with load_module only: importlib then calls load_module, which runs the real
    one and then the patch. It has no exec_module/create_module, so importlib keeps using the
    legacy protocol; everything else passes through."""

    def __init__(self, loader, name, finder):
        self.__dict__["_pm_loader"] = loader
        self.__dict__["_pm_name"] = name
        self.__dict__["_pm_finder"] = finder

    def load_module(self, fullname):
        module = self._pm_loader.load_module(fullname)
        if fullname == self._pm_name:
            self._pm_finder._loaded(fullname, sys.modules.get(fullname, module))
        return module

    def __getattr__(self, attr):
        if attr in ("exec_module", "create_module"):
            raise AttributeError(attr)
        return getattr(self._pm_loader, attr)

    def __setattr__(self, attr, value):
        setattr(self._pm_loader, attr, value)

    def __repr__(self):
        return "<profilemate legacy loader for %r: %r>" % (self._pm_name, self._pm_loader)


class VllmFinder:
    """Meta-path finder; `on_vllm()` runs when `vllm` is imported, `on_module(name, module)`
    after a watched module executed."""

    def __init__(self, on_vllm, on_module, names_loader):
        self._on_vllm = on_vllm
        self._on_module = on_module
        self._names_loader = names_loader
        self._names = frozenset(("vllm",))  # grows to the full watch list on first vLLM import
        self._busy = set()  # (name, thread id) currently being resolved by this finder
        self._vllm_seen = False
        self._seen = {}  # watched name -> the module object last patched

    # -- finder protocol -------------------------------------------------------------
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self._names:
            if self._vllm_seen or not fullname.startswith("vllm."):
                return None
            # `vllm` is in sys.modules without having been imported through the finders.
            self._see_vllm()
            if fullname not in self._names:
                return None
        if fullname == "vllm":
            self._see_vllm()
            return None
        key = (fullname, _get_ident())
        if key in self._busy:
            return None
        self._busy.add(key)
        try:
            spec = None
            for finder in list(sys.meta_path):
                if finder is self:
                    continue
                find = getattr(finder, "find_spec", None)
                if find is None:
                    continue
                try:
                    spec = find(fullname, path, target)
                except TypeError:
                    spec = find(fullname, path)
                if spec is not None:
                    break
        finally:
            self._busy.discard(key)
        if spec is None or spec.loader is None or isinstance(spec.loader, (_LoaderProxy, _LegacyLoaderProxy)):
            return spec
        if hasattr(spec.loader, "exec_module"):
            spec.loader = _LoaderProxy(spec.loader, fullname, self)
        elif hasattr(spec.loader, "load_module"):
            spec.loader = _LegacyLoaderProxy(spec.loader, fullname, self)
        return spec

    def invalidate_caches(self):
        return None

    # -- internals -------------------------------------------------------------------
    def _see_vllm(self):
        if self._vllm_seen:
            return
        self._vllm_seen = True
        try:
            self._names = frozenset(self._names_loader()) | frozenset(("vllm",))
        except Exception as e:
            _warn("loading the target list failed: %r" % (e,))
        try:
            self._on_vllm()
        except Exception as e:
            _warn("arming failed: %r" % (e,))
        self._catch_up()

    def _catch_up(self):
        """Patches watched modules that were imported before the hook saw them."""
        for name in sorted(self._names):
            if name == "vllm":
                continue
            mod = sys.modules.get(name)
            if mod is not None:
                self._seen[name] = mod
                self._loaded(name, mod)

    def sweep(self):
        """Patches watched modules that reached sys.modules without this finder (a finder put
        ahead of it on sys.meta_path, a module object inserted by hand). Cheap: one dict lookup
        per watched name; run by the flush thread."""
        if not self._vllm_seen:
            if "vllm" not in sys.modules:
                return
            self._see_vllm()
        for name in self._names:
            mod = sys.modules.get(name)
            if mod is None or name == "vllm" or self._seen.get(name) is mod:
                continue
            if getattr(getattr(mod, "__spec__", None), "_initializing", False):
                continue  # still executing in an importing thread: its loader patches it
            self._loaded(name, mod)

    def _loaded(self, name, module):
        self._seen[name] = module
        try:
            self._on_module(name, module)
        except Exception as e:  # a failing patch never fails vLLM's import
            _warn("patch for %s raised %r; the module imported unpatched" % (name, e))


_finder = None


def _target_names():
    from profilemate import targets
    return targets.watched_modules()


def install_finder(on_vllm, on_module, names_loader=None):
    """Puts the finder first on sys.meta_path (once) and handles an already-imported vLLM; returns it."""
    global _finder
    if _finder is not None:
        return _finder
    _finder = VllmFinder(on_vllm, on_module, names_loader or _target_names)
    sys.meta_path.insert(0, _finder)
    if "vllm" in sys.modules:
        _finder._see_vllm()
    return _finder


def finder():
    """The installed finder, or None."""
    return _finder


def uninstall_finder():
    """Removes the finder (doctor tries the patches itself and must not race the hook)."""
    global _finder
    if _finder is not None:
        try:
            sys.meta_path.remove(_finder)
        except ValueError:
            pass
    _finder = None
