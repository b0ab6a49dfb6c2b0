"""Ground truth kept by the simulator's own bookkeeping and written at process exit (also on SIGTERM).

Each process writes <PMSIM_GROUND_TRUTH>.d/<role>-<rank>-<pid>.json; the launching process merges
them into <PMSIM_GROUND_TRUTH> once its children have exited (see docs/testbed.md).
"""
import atexit
import glob
import json
import os
import signal
import sys
import threading

_lock = threading.Lock()
_state = {"record": None, "written": False}
_cleanups = []


def on_terminate(fn):
    """Runs fn (e.g. stopping this process's children) when SIGTERM ends this process."""
    _cleanups.append(fn)


def start(role, rank, **extra):
    rec = {"role": role, "rank": rank, "pid": os.getpid(), "argv_at_start": list(sys.argv)}
    rec.update(extra)
    _state["record"] = rec
    from pmsim import procs
    procs.install_stack_dumps()
    atexit.register(write)
    try:
        prev = signal.getsignal(signal.SIGTERM)

        def on_term(signum, frame):
            write()
            for fn in list(_cleanups):
                try:
                    fn()
                except Exception:
                    pass
            if callable(prev) and prev not in (signal.SIG_DFL, signal.SIG_IGN):
                prev(signum, frame)
            os._exit(143)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_term)
    except (ValueError, OSError):
        pass
    return rec


def record():
    if _state["record"] is None:
        start("unknown", -1)
    return _state["record"]


def write():
    from pmsim import config
    path = config.get().ground_truth
    rec = _state["record"]
    if not path or rec is None:
        return
    with _lock:
        d = path + ".d"
        os.makedirs(d, exist_ok=True)
        name = os.path.join(d, "%s-%s-%d.json" % (rec["role"], rec["rank"], rec["pid"]))
        tmp = name + ".tmp"
        with open(tmp, "w") as f:
            json.dump(rec, f, sort_keys=True)
        os.replace(tmp, name)


def merge(path):
    """Merges the per-process files into one summary at path and returns it."""
    procs = []
    for name in sorted(glob.glob(os.path.join(path + ".d", "*.json"))):
        with open(name) as f:
            procs.append(json.load(f))
    workers = [p for p in procs if p["role"] == "worker"]
    engines = [p for p in procs if p["role"] == "engine_core"]
    summary = {
        "processes": procs,
        "totals": {
            "scheduler_steps": sum(p.get("scheduler_steps", 0) for p in engines),
            "preemptions": sum(len(p.get("preemptions", [])) for p in engines),
            "evictions": sum(p.get("evictions", 0) for p in engines),
            "alloc_failures": sum(p.get("alloc_failures", 0) for p in engines),
            "prefix_hit_tokens": sum(p.get("prefix_hit_tokens", 0) for p in engines),
            "runner_steps_by_rank": {str(p["rank"]): p.get("runner_steps", 0) for p in workers},
        },
    }
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f, sort_keys=True, indent=1)
    os.replace(tmp, path)
    return summary
