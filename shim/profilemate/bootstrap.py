"""Activation: decides whether this process profiles, and installs the import hook.

Kept light on purpose: a process that never imports vLLM pays one environment lookup and
one meta_path entry. Everything heavier (threads, files, sockets, inspect) is imported
only when a vLLM target module is imported, or at once under an explicit
VLLM_ENABLE_PROFILING=1.

Decision table (DESIGN.md, issue "shim core"):
  VLLM_ENABLE_PROFILING=0            -> off here and in every child (they inherit the variable)
  VLLM_ENABLE_PROFILING=1            -> active, started at once (status lines, folder, threads)
  PROFILEMATE_ARMED=1 (from parent)  -> watching; starts when a vLLM target module is imported
  otherwise                          -> watching; importing `vllm` arms the process (session id
                                        chosen and exported for children), importing a target
                                        or entry-point module starts it
"""
import os
import sys

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
        return "explicit", "VLLM_ENABLE_PROFILING=1: active at once"
    if env.get(ENV_ARMED, "") == "1":
        return "armed", "PROFILEMATE_ARMED=1 (child of an active process): starts when a vLLM target module is imported"
    return "watching", "no switch set: the process arms itself when it imports vllm and starts on a vLLM target module"


def bootstrap(origin="sitecustomize"):
    """Idempotent entry for every road; never raises."""
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
        from profilemate import importhook
        importhook.install(_on_vllm, _on_target)
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
    bootstrap("vllm_plugin")


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
