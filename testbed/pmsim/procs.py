"""Process plumbing for the API server -> EngineCore -> workers tree: bounded waits, parent checks, teardown.

Every wait on a multiprocessing queue goes through get(): it wakes up several times a second to check
that the processes it expects an answer from are alive, that its own parent still exists (so no
process outlives the one that started it), and that the answer came within the deadline. A stuck or
crashed process therefore turns into an exception and a non-zero exit, never into a hang.
"""
import os
import queue
import sys
import time

POLL_S = 0.2


class ChildDied(RuntimeError):
    pass


class ParentGone(RuntimeError):
    pass


class ParentWatch:
    """Notices that the process which started this one has exited (we were re-parented).

    On Linux the kernel also sends SIGTERM when the parent dies (PR_SET_PDEATHSIG), which reaches a
    process even while it is busy or stuck outside the queue waits that poll gone().
    """

    def __init__(self):
        self.ppid = os.getppid()
        _die_with_parent()

    def gone(self):
        return os.getppid() != self.ppid


def get(q, what, procs=(), timeout=None, watch=None):
    """q.get() that raises instead of blocking forever (timeout None: no deadline, liveness checks only)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            return q.get(timeout=POLL_S)
        except queue.Empty:
            pass
        for p in procs:
            if not p.is_alive():
                # A process flushes its queue before it exits: take what it said last, if anything.
                try:
                    return q.get(timeout=POLL_S)
                except queue.Empty:
                    raise ChildDied("%s exited with code %s while waiting for %s" % (p.name, p.exitcode, what))
        if watch is not None and watch.gone():
            raise ParentGone("parent process %d exited while waiting for %s" % (watch.ppid, what))
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError("no %s within %.0f s (PMSIM_RPC_TIMEOUT_S)" % (what, timeout))


def _die_with_parent():
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def stop(procs, timeout):
    """Joins procs for up to timeout seconds in all, then terminates, then kills what is left."""
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(2.0)
        if p.is_alive():
            p.kill()
            p.join(2.0)


def warn(msg):
    try:
        sys.stderr.write("pmsim[%d]: %s\n" % (os.getpid(), msg))
        sys.stderr.flush()
    except Exception:
        pass


def install_stack_dumps():
    """PMSIM_FAULTHANDLER=1: SIGUSR1 dumps every thread's stack to stderr; PMSIM_STACK_DUMP_S=N: every N s."""
    import faulthandler
    if os.environ.get("PMSIM_FAULTHANDLER", "").strip() in ("1", "true", "yes"):
        import signal
        try:
            faulthandler.register(signal.SIGUSR1, all_threads=True)
        except (AttributeError, ValueError, RuntimeError):
            pass
    every = os.environ.get("PMSIM_STACK_DUMP_S", "").strip()
    if every:
        faulthandler.dump_traceback_later(float(every), repeat=True)
