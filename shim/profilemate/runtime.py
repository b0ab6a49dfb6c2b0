"""The active shim in one process: statuses, patches, flushing, exit and signal handling.

Imported only once the process starts (a vLLM target module was imported, or
VLLM_ENABLE_PROFILING=1). Nothing here may raise into vLLM.

Fork safety: every module the flush and exit paths use is imported here, at start, never
lazily (a fork can leave a module's import lock held by a thread that does not exist in the
child); the only lock the flush path takes is S.lock, replaced in every forked child; log lines
go out with os.write (no buffered-stream lock). docs/shim.md, "process lifecycles".
"""
import atexit
import operator
import os
import signal
import sys
import threading
import time

from profilemate import patching, procinfo, redact, schema, sinks, targets
from profilemate.gpu_timing import POOL
from profilemate.identity import IDENT
from profilemate.recorder import RECORDER

ENV_OUTPUT = "PROFILEMATE_OUTPUT_DIR"
ENV_SOCKET = "PROFILEMATE_SOCKET"
ENV_PROFILERS = "PROFILEMATE_PROFILERS"
ENV_FLUSH = "PROFILEMATE_FLUSH_MS"
ENV_HOST = "PROFILEMATE_HOST"
DEFAULT_OUTPUT = "/tmp/vllm_profiling"
# End states of a process (metadata.json, session.json, the bye line): the process itself
# writes "clean" (or "killed" with end_signal when a default-action signal ends it after its
# last flush); observers (pmagent) write "lost" or "killed" for processes that could not.
END_CLEAN, END_LOST, END_KILLED = "clean", "lost", "killed"
# Environment excerpt kept in metadata.json (redacted): what shapes a vLLM run.
_ENV_PREFIXES = ("VLLM_", "PROFILEMATE_", "CUDA_", "NCCL_", "HF_", "HUGGING", "TORCH", "PYTORCH_", "OMP_")

STATUSES = ("patched", "absent", "not_loaded", "failed", "disabled")


class _State:
    def __init__(self):
        self.reset()

    def reset(self):
        self.started = False
        self.pid = os.getpid()
        self.start_ns = 0
        self.end_ns = 0
        self.session = ""
        self.session_given = False  # PROFILEMATE_SESSION was set when this process started
        self.why = ""
        self.sink = None
        self.thread = None
        self.stop = threading.Event()
        self.lock = threading.Lock()  # serialises flushes (thread, exit, signal)
        self.finished = False
        self.armed = False  # started in a child armed by its parent (the parent announced the session)
        self.instance = procinfo.new_instance_id()
        self.end_state = ""
        self.end_signal = ""
        self.argv = []  # redacted once at start
        self.env = {}
        self.secrets = ()  # secret values seen in argv/env, scrubbed from the title
        self.inherited = False  # forked from a started parent: stay silent until an event
        # target name -> {"status", "reason", "handles": [(hook, cls, handle)], "paths": {module: status}}
        self.targets = {}
        self.dirty = True
        self.sched_steps = False


S = _State()
_enabled = None  # set of enabled kinds
# Profilers with state to hand over before the last flush (e.g. device counters) append a
# no-argument callable here; NOTES entries appear in metadata.json under "notes".
FINAL_HOOKS = []
NOTES = {}
TABLES_SEEN = set()  # tables this process recorded rows for (metadata.json "tables")
_TABLE_OF = operator.itemgetter(4)  # an event's table


def enabled(kind):
    return _enabled is None or kind in _enabled


# record(kind, table, cols, step=None): the recorder's own function, so a target's wrapper pays one
# call per event, not two (docs/BENCHMARKS.md, "Recording and flush-thread CPU").
record = RECORDER.record


def _recorder_kinds():
    """The recorder's filter: None (nothing to check per event) while every kind is on."""
    if _enabled is None or _enabled >= set(schema.KINDS):
        return None
    return set(_enabled)


def next_step(source="scheduler"):
    """Advances the process's step. In EngineCore the scheduler's steps count; the model
    runner's only where no scheduler runs (worker processes)."""
    if source == "scheduler":
        S.sched_steps = True
    elif S.sched_steps:
        return RECORDER.step
    RECORDER.step = RECORDER.step + 1 if RECORDER.step >= 0 else 1
    return RECORDER.step


def parse_profilers(value):
    """'all,-moe_expert' -> set of enabled kinds; '' -> all."""
    kinds = set(schema.KINDS)
    items = [x.strip() for x in (value or "").split(",") if x.strip()]
    if not items:
        return kinds
    out = set()
    for item in items:
        if item == "all":
            out |= kinds
        elif item == "none":
            out = set()
        elif item.startswith("-"):
            out.discard(item[1:])
        else:
            out.add(item)
    return out


# --------------------------------------------------------------------------- start-up

def start(why, armed=False):
    """Starts this process's shim once: session, sink, flush thread, exit and signal hooks.
    armed: the process was armed by an active parent (the parent announced the session)."""
    global _enabled
    if S.started and S.pid == os.getpid():
        return
    S.started = True
    S.pid = os.getpid()
    S.why = why
    S.armed = armed
    S.start_ns = time.time_ns()
    S.session_given = bool(os.environ.get("PROFILEMATE_SESSION")) and os.environ.get("PROFILEMATE_SESSION_ORIGIN") != "shim"
    S.session = os.environ.get("PROFILEMATE_SESSION") or _new_session()
    _name_ray_instance()
    _capture_process()
    _enabled = parse_profilers(os.environ.get(ENV_PROFILERS, ""))
    RECORDER.enabled_kinds = _recorder_kinds()
    for t in _all_targets():
        S.targets.setdefault(t.name, {"status": "not_loaded", "reason": "", "handles": [], "paths": {}})
    _open_sink()
    _announce()
    atexit.register(final_flush)
    _install_signals()
    _register_mp_exit()
    _start_thread()


def _name_ray_instance():
    """A vLLM started here with `--distributed-executor-backend ray` whose workers on other nodes
    are Ray actors outside this process tree: PROFILEMATE_INSTANCE_KEY names the instance
    (ray:<this session>) and VLLM_RAY_EXTRA_ENV_VARS_TO_COPY carries it to the actors, whose agents
    then join them to this instance's session (docs/multinode.md). Not when a session was given."""
    if S.session_given or os.environ.get("PROFILEMATE_INSTANCE_KEY"):
        return
    try:
        argv = [str(a) for a in getattr(sys, "orig_argv", sys.argv)]
        ray = "--distributed-executor-backend=ray" in argv or any(
            a == "--distributed-executor-backend" and b == "ray" for a, b in zip(argv, argv[1:]))
        if not ray:
            return
        os.environ["PROFILEMATE_INSTANCE_KEY"] = "ray:" + S.session
        names = [n.strip() for n in os.environ.get("VLLM_RAY_EXTRA_ENV_VARS_TO_COPY", "").split(",") if n.strip()]
        if "PROFILEMATE_INSTANCE_KEY" not in names:
            names.append("PROFILEMATE_INSTANCE_KEY")
        os.environ["VLLM_RAY_EXTRA_ENV_VARS_TO_COPY"] = ",".join(names)
    except Exception:
        pass


def _new_session():
    sid = procinfo.new_session_id()
    os.environ["PROFILEMATE_SESSION"] = sid
    os.environ["PROFILEMATE_SESSION_ORIGIN"] = "shim"
    return sid


def _capture_process():
    """argv and the environment excerpt, redacted once (issue 16): nothing secret leaves."""
    try:
        raw = [str(a) for a in getattr(sys, "orig_argv", sys.argv)]
        S.argv = redact.argv(raw)
        env = {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}
        S.env = redact.env(env)
        # The values redact.argv replaced (`--k=v`, `NAME=v`: the part after "="), and secret variables.
        secrets = [(a.partition("=")[2] if "=" in a and b.endswith("=" + redact.REDACTED) else a)
                   for a, b in zip(raw, S.argv) if a != b]
        secrets += [v for k, v in os.environ.items() if redact.is_secret_name(k)]
        S.secrets = tuple(secrets)
    except Exception:
        S.argv, S.env, S.secrets = [], {}, ()


def _all_targets():
    return targets.all_targets()


def output_root():
    return os.environ.get(ENV_OUTPUT) or DEFAULT_OUTPUT


def _open_sink():
    S.metadata = metadata
    S.on_ctl = _on_ctl
    S.title = title
    S.sink = sinks.open_sink(S, os.environ.get(ENV_SOCKET, ""), output_root())


def _on_ctl(msg):
    """A control line from the agent (sinks.SocketSink hands it over)."""
    if msg.get("op") == "profiler" and msg.get("name"):
        set_profiler(msg["name"], bool(msg.get("enabled")))
    elif msg.get("op") == "session" and msg.get("session"):
        S.session = msg["session"]
        os.environ["PROFILEMATE_SESSION"] = msg["session"]


def _announce():
    """The session's three start-up lines, once per session (first process that records)."""
    if not S.sink.claim_announcement(S.session):
        return
    log("[sitecustomize] vLLM Comprehensive Instrumentation Loaded", prefix=False)
    log("Session ID: %s" % S.session, prefix=False)
    log("Output directory: %s" % S.sink.describe(), prefix=False)


def log(msg, prefix=True):
    """One line on stderr, written with os.write (fork-safe, never raises)."""
    try:
        if prefix:
            ident = IDENT.as_dict()
            rank = IDENT.folder_rank()
            msg = "[%s %s] %s" % (ident["role"], rank, msg)
        procinfo.write_line(msg)
    except Exception:
        pass


# --------------------------------------------------------------------------- patching

def module_loaded(name, module):
    """Applies every target path watching `name`; reports one line per target changed.

    Called each time the module executed (first import, importlib.reload, a re-import after
    it was removed from sys.modules): hooks whose attribute is still wrapped are kept, the
    others (fresh classes of a re-executed module) are wrapped again.
    """
    for target, path in targets.by_module(name):
        entry = S.targets.setdefault(target.name, {"status": "not_loaded", "reason": "", "handles": [], "paths": {}})
        if path.module in entry["paths"]:
            if _path_intact(entry, path, module):
                continue  # handled already, and the wrappers are still in place
            entry["handles"] = [r for r in entry["handles"] if r.get("path") != path.module]
        status, reason = _apply_path(target, path, module, entry)
        entry["paths"][path.module] = (status, reason)
        before = entry["status"]
        entry["status"], entry["reason"] = _combine(entry["paths"])
        S.dirty = True
        if entry["status"] != before:
            if entry["status"] == "patched":
                log("[Instrumentation] \u2705 Successfully patched %s" % target.component)
            elif entry["status"] == "failed":
                log("[Instrumentation] \u274c Failed to patch %s: %s" % (target.component, entry["reason"]))


_RANK = {"failed": 5, "patched": 4, "disabled": 3, "absent": 2, "not_loaded": 1}


def _path_intact(entry, path, module):
    """True when `path` has live handles and each still sits on the class the module now holds."""
    live = 0
    for rec in entry["handles"]:
        if rec.get("path") != path.module or rec["handle"] is None:
            continue
        hook = rec["hook"]
        cls = getattr(module, hook.cls, None) if hook.cls else module
        if cls is not rec["cls"] or not patching.is_wrapped(cls, rec["method"]):
            return False
        live += 1
    return live > 0


def _combine(paths):
    best, reason = "not_loaded", ""
    for status, why in paths.values():
        if _RANK[status] > _RANK[best]:
            best, reason = status, why
    return best, reason


def _hook_on(hook):
    return not hook.kinds or any(enabled(k) for k in hook.kinds)


def _apply_path(target, path, module, entry):
    wrapped, failures, missing, off = 0, [], [], 0
    for hook in path.hooks:
        cls = getattr(module, hook.cls, None) if hook.cls else module
        if cls is None or (hook.cls and not isinstance(cls, type)):
            if not hook.optional:
                missing.append(hook.cls)
            continue
        method = _pick_method(cls, hook.method)
        if method is None:
            if not hook.optional:
                missing.append("%s.%s" % (hook.cls, "|".join(_names(hook.method))))
            continue
        rec = {"hook": hook, "cls": cls, "handle": None, "method": method, "path": path.module}
        entry["handles"].append(rec)
        if not _hook_on(hook):
            off += 1
            continue
        if patching.is_wrapped(cls, method):
            # Wrapped by this shim already (a module executed twice into the same class).
            rec["handle"] = patching.Handle(patching.defining_class(cls, method), method, None, None)
            wrapped += 1
            continue
        try:
            rec["handle"] = patching.wrap(cls, method, _factory(hook), hook.required)
            wrapped += 1
        except patching.PatchError as e:
            failures.append(str(e))
        except Exception as e:
            failures.append("%s.%s: %r" % (hook.cls, hook.method, e))
    if failures:
        return "failed", "; ".join(failures)
    if missing and not wrapped:
        return "absent", "%s has no %s" % (path.module, ", ".join(missing))
    if missing:
        return "failed", "%s lacks %s" % (path.module, ", ".join(missing))
    if wrapped:
        return "patched", ""
    if off:
        return "disabled", "profiler switched off: %s" % ",".join(target.kinds)
    return "absent", "nothing to patch in %s" % path.module


def _names(method):
    return method if isinstance(method, tuple) else (method,)


def _pick_method(cls, method):
    """A hook may name alternatives (newest first): the first the class has is wrapped."""
    for name in _names(method):
        if patching.defining_class(cls, name) is not None:
            return name
    return None


def _factory(hook):
    me = sys.modules[__name__]
    return lambda original: hook.factory(original, me)


def set_profiler(kind, on):
    """Switches a profiler kind; hooks feeding only switched-off kinds are unwrapped exactly."""
    global _enabled
    if _enabled is None:
        _enabled = set(schema.KINDS)
    if on and kind == "moe_expert" and kind not in _enabled:
        mc = sys.modules.get("profilemate.moe_counter")
        if mc is not None:
            mc.COUNTERS.rebase_pending = True
    (_enabled.add if on else _enabled.discard)(kind)
    RECORDER.enabled_kinds = _recorder_kinds()
    for name, entry in S.targets.items():
        for rec in entry["handles"]:
            hook = rec["hook"]
            want = _hook_on(hook)
            if want and rec["handle"] is None:
                try:
                    rec["handle"] = patching.wrap(rec["cls"], rec["method"], _factory(hook), hook.required)
                except Exception as e:
                    log("re-wrapping %s.%s failed: %s" % (hook.cls, hook.method, e))
            elif not want and rec["handle"] is not None:
                patching.unwrap(rec["handle"])
                rec["handle"] = None
        handles = [r for r in entry["handles"]]
        if handles and entry["status"] in ("patched", "disabled"):
            live = any(r["handle"] is not None for r in handles)
            entry["status"] = "patched" if live else "disabled"
    S.dirty = True


def statuses():
    """[{target, status, reason}] for every target, in list order. "patched" is read from the
    class attributes themselves: a target whose wrappers were replaced since (a reload outside
    the import system, someone assigning the method) reports "failed" with the attribute."""
    out = []
    for t in _all_targets():
        e = S.targets.get(t.name) or {"status": "not_loaded", "reason": ""}
        status, reason = e["status"], e["reason"]
        if status == "patched":
            gone = _unwrapped(e)
            if gone:
                status, reason = "failed", "no longer wrapped: %s (replaced after patching)" % ", ".join(gone)
        out.append({"target": t.name, "status": status, "reason": reason})
    return out


def _unwrapped(entry):
    gone = []
    for rec in entry.get("handles", ()):
        if rec["handle"] is None:
            continue
        hook = rec["hook"]
        mod = sys.modules.get(rec.get("path", ""))
        cls = rec["cls"]
        if mod is not None and hook.cls:
            cls = getattr(mod, hook.cls, cls)
        try:
            ok = patching.is_wrapped(cls, rec["method"])
        except Exception:
            ok = False
        if not ok:
            gone.append("%s.%s" % (hook.cls or rec.get("path", ""), rec["method"]))
    return gone


# --------------------------------------------------------------------------- flushing

def flush_interval():
    try:
        return max(1, int(os.environ.get(ENV_FLUSH, "100"))) / 1000.0
    except ValueError:
        return 0.1


def _start_thread():
    S.stop = threading.Event()
    t = threading.Thread(target=_loop, name="profilemate-flush", daemon=True)
    S.thread = t
    t.start()


def _import_finder():
    """The import hook's finder when the activation (the profilemate package) installed one, else
    None."""
    pkg = sys.modules.get("profilemate")
    finder = getattr(pkg, "finder", None)
    return finder() if finder is not None else None


def _loop():
    interval = flush_interval()
    finder = _import_finder()
    while not S.stop.wait(interval):
        if finder is not None:
            try:
                finder.sweep()
            except Exception:
                pass
        flush()


def flush(final=False, timeout=None):
    """Moves buffered events to the sink; only this path touches files and the socket."""
    if S.sink is None:
        return
    lock = S.lock
    got = lock.acquire(timeout=timeout) if timeout is not None else lock.acquire()
    if not got:
        return
    try:
        IDENT.refresh_from_parallel_state()
        events = RECORDER.drain()
        TABLES_SEEN.update(map(_TABLE_OF, events))
        if S.inherited and not events and not final:
            return
        if events:
            S.inherited = False
        S.sink.write(events, final=final)
    except Exception as e:
        # One line per kind of failure and process, never one per flush interval.
        procinfo.say_once("flush:%s" % type(e).__name__, "flush failed: %r (said once per process)" % (e,))
    finally:
        lock.release()


def flush_locks():
    """Every lock the flush and exit paths take (the fork-safety tests hold each while forking)."""
    return [S.lock]


def final_flush(timeout=None, end_state=END_CLEAN, end_signal=""):
    """Last flush, metadata end time and end state, session summary; idempotent."""
    if not S.started or S.finished or S.pid != os.getpid():
        return
    S.stop.set()
    for hook in list(FINAL_HOOKS):
        try:
            hook()
        except Exception as e:
            log("final hook failed: %r" % (e,))
    S.end_ns = time.time_ns()
    S.end_state, S.end_signal = end_state, end_signal
    S.dirty = True
    flush(final=True, timeout=timeout)
    S.finished = True
    try:
        S.sink.close()
    except Exception as e:
        log("closing the sink failed: %r" % (e,))


def metadata():
    """This process as metadata.json shows it (argv and env redacted)."""
    vllm = sys.modules.get("vllm")
    targets_now = statuses()
    return {
        "session": S.session,
        "host": os.environ.get(ENV_HOST, "") or _hostname(),
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "instance": S.instance,
        "ident": IDENT.as_dict(),
        "python": "%d.%d.%d" % sys.version_info[:3],
        "vllm": getattr(vllm, "__version__", "") if vllm else "",
        "argv": list(S.argv),
        "env": dict(S.env),
        # The multi-node instance (a Ray actor receives it after it started; the redacted env
        # excerpt above holds neither that nor an unredacted value): `pmhub import` matches on it.
        "instance_key": os.environ.get("PROFILEMATE_INSTANCE_KEY", ""),
        "activation": S.why,
        "sink": S.sink.describe() if S.sink is not None else "",
        "profilers": sorted(_enabled) if _enabled is not None else sorted(schema.KINDS),
        "targets": targets_now,
        "tables": _table_statuses(targets_now),
        "notes": dict(NOTES),
        "recorded": RECORDER.recorded,
        "dropped": RECORDER.dropped,
        "spilled": getattr(S.sink, "spilled", 0),  # sent to this folder while the agent was away
        "unconfirmed": getattr(S.sink, "unconfirmed", 0),  # sent, never acknowledged, let go (bound)
        "last_seq": RECORDER.last_seq,
        "start_ns": S.start_ns,
        "end_ns": S.end_ns,
        "end_state": S.end_state,
        "end_signal": S.end_signal,
    }


def title():
    """The process title with any secret value of argv or the environment scrubbed."""
    return redact.text(sinks.proc_title(), S.secrets)


def _table_statuses(targets_now):
    """Per-table status for metadata.json; imports nothing here (this runs on the flush path)."""
    try:
        # POOL.ok, not available(): probing caches the answer, and torch may not be imported yet.
        return targets.table_statuses(targets_now, set(TABLES_SEEN), enabled, POOL.ok)
    except Exception as e:
        return [{"table": "", "status": "failed: %r" % (e,)}]


def _hostname():
    return sinks.hostname()


# --------------------------------------------------------------------------- signals, fork

_chained = {}
_real_signal = signal.signal
_real_getsignal = signal.getsignal
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _signal_name(signum):
    try:
        return signal.Signals(signum).name
    except Exception:
        return str(signum)


def _on_signal(signum, frame):
    """Flushes, then runs the handler the program installed (or the default action).

    A program that handles the signal (uvicorn's graceful drain, asyncio's add_signal_handler)
    goes on working: recording goes on too, so this path only flushes. Only when the default
    action is about to end the process is this the last flush (end state "killed").
    """
    prev = _chained.get(signum, signal.SIG_DFL)
    if callable(prev):
        flush(timeout=2.0)
        return prev(signum, frame)
    if prev == signal.SIG_IGN:
        flush(timeout=2.0)
        return None
    if signum == signal.SIGINT:
        flush(timeout=2.0)  # KeyboardInterrupt may be caught; atexit writes the end
        raise KeyboardInterrupt
    final_flush(timeout=2.0, end_state=END_KILLED, end_signal=_signal_name(signum))
    _real_signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _signal_wrapper(signum, handler):
    """signal.signal replacement: handlers installed later still run after our flush."""
    if signum in _SIGNALS and _chained.get("installed"):
        prev = _chained.get(signum, signal.SIG_DFL)
        _real_signal(signum, _on_signal)  # validates main thread like the real call
        _chained[signum] = handler
        return prev
    return _real_signal(signum, handler)


def _getsignal_wrapper(signum):
    if signum in _SIGNALS and _chained.get("installed"):
        return _chained.get(signum, signal.SIG_DFL)
    return _real_getsignal(signum)


def _install_signals():
    if _chained.get("installed") or threading.current_thread() is not threading.main_thread():
        return
    try:
        for sig in _SIGNALS:
            prev = _real_getsignal(sig)
            _real_signal(sig, _on_signal)
            _chained[sig] = prev if prev is not None else signal.SIG_DFL
        _chained["installed"] = True
        signal.signal = _signal_wrapper
        signal.getsignal = _getsignal_wrapper
    except Exception as e:
        log("signal handlers not installed: %r" % (e,))


_mp_registered = []


def _register_mp_exit():
    """multiprocessing fork children leave through os._exit (no atexit): use its finalizers.

    Called at start and again before each fork, since multiprocessing may be imported later.
    """
    util = sys.modules.get("multiprocessing.util")
    if util is None or _mp_registered:
        return
    try:
        util.Finalize(None, final_flush, exitpriority=0)
        util.register_after_fork(RECORDER, lambda _obj: util.Finalize(None, final_flush, exitpriority=0))
        _mp_registered.append(True)
    except Exception:
        pass


def _before_fork():
    if S.started:
        _register_mp_exit()


def _after_fork_child():
    """A forked child is a new process: new lock, buffer, thread, instance id and identity; its
    folder and hello come with its first event. Nothing inherited from the parent's threads
    (a held lock, a half-done import, a buffered stderr line) is used again."""
    if not S.started:
        return
    RECORDER.reset()
    RECORDER.enabled_kinds = _recorder_kinds()
    TABLES_SEEN.clear()
    IDENT.reset()
    procinfo.reset_after_fork()
    S.pid = os.getpid()
    S.lock = threading.Lock()
    S.stop = threading.Event()
    S.thread = None
    S.instance = procinfo.new_instance_id()
    S.finished = False
    S.inherited = True
    S.sched_steps = False
    S.start_ns = time.time_ns()
    S.end_ns = 0
    S.end_state = S.end_signal = ""
    S.dirty = True
    try:
        S.sink = S.sink.forked()
    except Exception:
        S.sink = None
    if S.sink is not None:
        _start_thread()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_child)
