"""Who this process is: role and ranks, from vLLM's own sources.

Most reliable first: Worker.__init__ arguments and EngineCore's parallel_config (set by the
targets), parallel_state groups after distributed init, then the multiprocessing process
name vLLM gives its children, then the launching process is the API server, or the launcher
when started with `--headless` (it starts this node's EngineCores or workers and serves no API).
"""
import os
import sys

ROLES = ("api_server", "launcher", "engine_core", "worker")
_PRIORITY = {"": 0, "api_server": 1, "launcher": 1, "worker": 2, "engine_core": 3}


class Identity:
    def __init__(self):
        self.version = 0  # bumped on every change, so sinks resend ident
        self.reset()

    def reset(self):
        """Forgets role and ranks: a forked child is not what its parent was (issue 13: TP workers
        started with `fork` must not carry EngineCore's identity). It learns its own from the
        process name vLLM gives it and from its own Worker.__init__."""
        self.role = ""
        self.dp = self.pp = self.tp = self.ep = self.rank = -1
        self.version += 1

    def as_dict(self):
        role = self.role or self.guess_role()
        d = {"role": role, "dp": self.dp, "pp": self.pp, "tp": self.tp, "ep": self.ep, "rank": self.rank}
        # vLLM numbers API servers and engines from 0 and names only the later ones (APIServer_1,
        # EngineCore_DP1): a lone one is index 0, so its process token is api0 / eng0 (launch0).
        if role in ("api_server", "launcher") and self.rank < 0:
            d["rank"] = 0
        elif role == "engine_core" and self.dp < 0:
            d["dp"] = self.folder_rank()
        return d

    def set_role(self, role, force=False):
        """engine_core wins over worker (UniProcExecutor runs the worker inside EngineCore)."""
        if role not in ROLES:
            return
        if force or _PRIORITY[role] > _PRIORITY.get(self.role, 0):
            if role != self.role:
                self.role = role
                self.version += 1

    def set_ranks(self, **ranks):
        for k, v in ranks.items():
            if v is None or k not in ("dp", "pp", "tp", "ep", "rank"):
                continue
            try:
                v = int(v)
            except (TypeError, ValueError):
                continue
            if getattr(self, k) != v:
                setattr(self, k, v)
                self.version += 1

    def guess_role(self):
        """From the multiprocessing process name first (a forked child gets its own at once), then
        from the process title (a forked child keeps its parent's until it sets its own)."""
        name = _mp_name()
        if name.startswith("EngineCore"):
            return "engine_core"
        if "Worker" in name:
            return "worker"
        title = _title()
        if "EngineCore" in title:
            return "engine_core"
        if "Worker" in title:
            return "worker"
        if _headless():
            return "launcher"
        return "api_server"

    def folder_rank(self):
        role = self.role or self.guess_role()
        if role == "worker":
            # Before Worker.__init__ reports the rank, vLLM's process name (VllmWorker-<rank>) has it.
            return self.rank if self.rank >= 0 else _rank_from_name()
        if role == "engine_core":
            dp = self.dp if self.dp >= 0 else _dp_from_name()
            return dp if dp >= 0 else 0
        return 0

    def refresh_from_parallel_state(self):
        """Reads tp/pp/dp/ep group ranks once vLLM's distributed state is initialised."""
        ps = sys.modules.get("vllm.distributed.parallel_state")
        if ps is None:
            return
        try:
            ready = getattr(ps, "model_parallel_is_initialized", None)
            if ready is None or not ready():
                return
        except Exception:
            return
        for attr, getter in (("tp", "get_tp_group"), ("pp", "get_pp_group"),
                             ("dp", "get_dp_group"), ("ep", "get_ep_group")):
            fn = getattr(ps, getter, None)
            if fn is None:
                continue
            try:
                self.set_ranks(**{attr: fn().rank_in_group})
            except Exception:
                pass


def _headless():
    """`vllm serve ... --headless`: this process starts its node's part of the instance and runs no
    API server. A spawned child has its own command line; a forked one learns its role first."""
    argv = getattr(sys, "orig_argv", None) or sys.argv
    return "--headless" in argv


def _mp_name():
    proc = sys.modules.get("multiprocessing.process")
    if proc is None:
        return ""
    try:
        return proc.current_process().name or ""
    except Exception:
        return ""


def _dp_from_name():
    name = _mp_name()
    if name.startswith("EngineCore_DP"):
        try:
            return int(name[len("EngineCore_DP"):])
        except ValueError:
            return -1
    return -1


def _title():
    """The process title vLLM sets via setproctitle (VLLM::Worker_TP1), when readable."""
    try:
        with open("/proc/%d/cmdline" % os.getpid(), "rb") as f:
            first = f.read(200).split(b"\0", 1)[0]
        return first.decode("utf-8", "replace")
    except Exception:
        return ""


IDENT = Identity()


def _rank_from_name():
    name = _mp_name()
    if name.startswith("VllmWorker-"):
        try:
            return int(name[len("VllmWorker-"):])
        except ValueError:
            pass
    return -1
