"""Multi-node launch shapes of `vllm serve`, two "hosts" being two process trees on one machine.

- Multi-node MP (vLLM PR #23691): `--nnodes N --node-rank R --master-addr A --master-port Q`
  [`--headless` on followers]. The world (tp x pp workers of the one EngineCore) is split evenly
  over the nodes: node R runs the workers of global ranks R*L .. R*L+L-1 with local ranks 0..L-1
  (L = tp*pp / N). The head (node 0) runs the API server and EngineCore; a headless follower runs
  only its workers, children of the `vllm serve --headless` process.
- Multi-node DP: `--data-parallel-size D --data-parallel-size-local L --data-parallel-address A
  --data-parallel-rpc-port Q` on the head (API server plus EngineCore_DP0..L-1);
  `--headless --data-parallel-start-rank S` on a follower (EngineCore_DP<S>..<S+L-1>, no API server).

Head and followers meet over TCP at the master (or data-parallel) address and port: the head
listens, a follower connects (retrying until PMSIM_START_TIMEOUT_S) and relays messages between
the head and the queues of its own child processes. On the head each remote child looks like a
local one: an input with put(), a process with is_alive()/join()/terminate() and its answers in the
same queue a local child writes to. Only loopback addresses are meant here (tests); nothing is
authenticated. Each node's processes write ground truth under that node's PMSIM_GROUND_TRUTH.
"""
import argparse
import os
import queue
import socket
import sys
import threading
import time
from multiprocessing.connection import Connection

from pmsim import config, procs, truth

POLL_S = procs.POLL_S


# ---------------------------------------------------------------- flags -> PMSIM_* environment

def apply_flags(argv):
    """Reads the parallel and multi-node flags of `vllm serve` from argv into PMSIM_* variables (so
    spawned children see them) and returns the parsed namespace. Unknown flags are ignored."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-tp", "--tensor-parallel-size", type=int)
    p.add_argument("-pp", "--pipeline-parallel-size", type=int)
    p.add_argument("-dp", "--data-parallel-size", type=int)
    p.add_argument("-dpl", "--data-parallel-size-local", type=int)
    p.add_argument("--data-parallel-start-rank", "-dpr", type=int)
    p.add_argument("--data-parallel-address", "-dpa")
    p.add_argument("--data-parallel-rpc-port", "-dpp", type=int)
    p.add_argument("--nnodes", type=int)
    p.add_argument("--node-rank", type=int)
    p.add_argument("--master-addr")
    p.add_argument("--master-port", type=int)
    p.add_argument("--headless", action="store_true")
    p.add_argument("--distributed-executor-backend")
    args, _ = p.parse_known_args(argv)
    env = {"PMSIM_TP": args.tensor_parallel_size, "PMSIM_PP": args.pipeline_parallel_size,
           "PMSIM_DP": args.data_parallel_size, "PMSIM_DP_LOCAL": args.data_parallel_size_local,
           "PMSIM_DP_START_RANK": args.data_parallel_start_rank, "PMSIM_DP_ADDRESS": args.data_parallel_address,
           "PMSIM_DP_RPC_PORT": args.data_parallel_rpc_port, "PMSIM_NNODES": args.nnodes,
           "PMSIM_NODE_RANK": args.node_rank, "PMSIM_MASTER_ADDR": args.master_addr,
           "PMSIM_MASTER_PORT": args.master_port}
    for k, v in env.items():
        if v is not None:
            os.environ[k] = str(v)
    if args.headless:
        os.environ["PMSIM_HEADLESS"] = "1"
    if args.distributed_executor_backend:
        os.environ["PMSIM_BACKEND"] = args.distributed_executor_backend
    return args


def _env_int(name, default):
    v = os.environ.get(name, "").strip()
    return int(v) if v else default


def ray():
    """--distributed-executor-backend ray: workers are actors on the Ray nodes (RAY_ADDRESS)."""
    return os.environ.get("PMSIM_BACKEND", "") == "ray"


def nnodes():
    if ray():
        return max(_env_int("PMSIM_RAY_NODES", 2), 1)
    return max(_env_int("PMSIM_NNODES", 1), 1)


def node_rank():
    return _env_int("PMSIM_NODE_RANK", 0)


def headless():
    return os.environ.get("PMSIM_HEADLESS", "") == "1"


def master():
    if ray():
        host, _, port = os.environ.get("RAY_ADDRESS", "127.0.0.1:6379").rpartition(":")
        return host or "127.0.0.1", int(port)
    return os.environ.get("PMSIM_MASTER_ADDR", "127.0.0.1"), _env_int("PMSIM_MASTER_PORT", 29501)


# What vLLM copies into a Ray actor's environment (vllm/executor/ray_utils.py and envs.py): these
# prefixes, PYTHONHASHSEED, and the names listed in VLLM_RAY_EXTRA_ENV_VARS_TO_COPY. PMSIM_TP/PP/DP
# stand for the model configuration vLLM ships with the actor.
RAY_COPY_PREFIXES = ("VLLM_", "NCCL_", "HF_", "HUGGING_FACE_", "LMCACHE_", "UCX_")
RAY_COPY_NAMES = ("PYTHONHASHSEED", "PMSIM_TP", "PMSIM_PP", "PMSIM_DP")


def ray_env(environ=None):
    """The variables a Ray actor receives from the driver, after it started."""
    environ = os.environ if environ is None else environ
    extra = {n.strip() for n in environ.get("VLLM_RAY_EXTRA_ENV_VARS_TO_COPY", "").split(",") if n.strip()}
    return {k: v for k, v in environ.items()
            if k.startswith(RAY_COPY_PREFIXES) or k in RAY_COPY_NAMES or k in extra}


def dp_layout(cfg):
    """(first DP rank here, DP ranks here, whether other nodes hold the rest) of this node."""
    dp = max(cfg.dp, 1)
    local = _env_int("PMSIM_DP_LOCAL", dp)
    start = _env_int("PMSIM_DP_START_RANK", 0)
    return start, list(range(start, min(start + local, dp))), local < dp


def dp_endpoint():
    return os.environ.get("PMSIM_DP_ADDRESS", "127.0.0.1"), _env_int("PMSIM_DP_RPC_PORT", 13345)


def local_worker_ranks(world):
    """[(global rank, local rank)] of the workers this node runs for an engine of world workers.

    Raises ValueError when world does not split evenly over --nnodes (vLLM requires it too)."""
    n = nnodes()
    if world % n:
        raise ValueError("tp*pp = %d workers do not split over --nnodes %d" % (world, n))
    per = world // n
    first = node_rank() * per
    return [(first + i, i) for i in range(per)]


# ---------------------------------------------------------------- head side

class RemoteProc:
    """A follower's child as the head sees it (multiprocessing.Process's waiting surface)."""

    def __init__(self, node, cid, name):
        self.node, self.cid, self.name, self.pid = node, cid, name, None
        self.exitcode = None
        self._exited = threading.Event()

    def is_alive(self):
        return not self._exited.is_set()

    def join(self, timeout=None):
        self._exited.wait(timeout)

    def terminate(self):
        self.node.send(("stop", self.cid, None))

    kill = terminate

    def _exit(self, code):
        if not self._exited.is_set():
            self.exitcode = code
            self._exited.set()


class RemoteInput:
    """A follower's child's input queue as the head sees it."""

    def __init__(self, node, cid):
        self.node, self.cid = node, cid

    def put(self, msg):
        self.node.send(("in", self.cid, msg))

    def cancel_join_thread(self):
        pass


class RemoteNode:
    """One follower connection: sends inputs, routes answers, tracks its children's exits."""

    def __init__(self, conn, ids, route, name):
        self.conn, self.route = conn, route
        self._lock = threading.Lock()
        self.procs = {cid: RemoteProc(self, cid, name % cid) for cid in ids}
        self.inputs = {cid: RemoteInput(self, cid) for cid in ids}
        threading.Thread(target=self._read, daemon=True, name="pmsim-follower").start()

    def send(self, msg):
        with self._lock:
            try:
                self.conn.send(msg)
            except (OSError, ValueError):
                pass

    def _read(self):
        while True:
            try:
                kind, cid, value = self.conn.recv()
            except (EOFError, OSError, ValueError):
                break
            if kind == "out":
                self.route(cid).put(value)
            elif kind == "exited":
                self.procs[cid]._exit(value)
                if all(not p.is_alive() for p in self.procs.values()):
                    break
        for p in self.procs.values():
            p._exit(-1)  # the follower is gone
        try:
            self.conn.close()
        except OSError:
            pass


def accept_followers(addr, port, want, route, name, timeout, watch_procs=(), assign=None):
    """Listens at addr:port until followers announced every id in want; returns {id: RemoteNode}.

    route(id) is the queue an id's answers go to; name % id names its proxy process. A follower
    that announces no ids (a Ray node) gets assign(k) = (ids, spec) for the k-th such node. Raises
    TimeoutError after timeout seconds, ChildDied when one of watch_procs exits meanwhile."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, port))
    srv.listen(16)
    srv.settimeout(POLL_S)
    deadline = time.monotonic() + timeout
    got = {}
    try:
        while set(got) != set(want):
            try:
                s, _ = srv.accept()
            except socket.timeout:
                for p in watch_procs:
                    if not p.is_alive():
                        raise procs.ChildDied("%s exited while waiting for followers" % p.name)
                if time.monotonic() > deadline:
                    raise TimeoutError("followers for %s did not connect to %s:%d within %.0f s"
                                       % (sorted(set(want) - set(got)), addr, port, timeout))
                continue
            s.settimeout(None)
            conn = Connection(s.detach())
            kind, ids, _ = conn.recv()
            if kind != "hello":
                conn.close()
                continue
            if ids is None and assign is not None:
                ids, spec = assign(len(set(got.values())))
                conn.send(("actors", ids, spec))
            node = RemoteNode(conn, ids, route, name)
            for cid in ids:
                got[cid] = node
    finally:
        srv.close()
    return got


# ---------------------------------------------------------------- follower side

def _connect(addr, port, timeout):
    deadline = time.monotonic() + timeout
    while True:
        try:
            s = socket.create_connection((addr, port), timeout=POLL_S * 5)
            s.settimeout(None)
            return Connection(s.detach())
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError("head at %s:%d did not answer within %.0f s" % (addr, port, timeout))
            time.sleep(POLL_S)


def serve_follower(addr, port, children, outputs, timeout):
    """Relays between the head at addr:port and this node's children until all have exited.

    children: {id: (process, input queue)}; outputs: [(queue, ids, tag)] — answers read from queue
    go to the head tagged with tag (None: the head's one queue for all), and ids are the children
    that write to it. Returns 0 when every child exited with 0, else 1."""
    conn = _connect(addr, port, timeout)
    conn.send(("hello", sorted(children), None))
    return _relay(conn, children, outputs)


def _relay(conn, children, outputs):
    lock = threading.Lock()
    reported = set()

    def send(msg):
        with lock:
            try:
                conn.send(msg)
            except (OSError, ValueError):
                pass

    def forward(q, ids, tag):
        while len(reported & set(ids)) < len(ids):
            try:
                send(("out", tag, q.get(timeout=0.05)))
                continue
            except queue.Empty:
                pass
            except (EOFError, OSError):
                break
            # A child flushes its queue before it exits: report its exit only after reading all.
            dead = [i for i in ids if i not in reported and not children[i][0].is_alive()]
            while dead:
                try:
                    send(("out", tag, q.get_nowait()))
                except (queue.Empty, EOFError, OSError):
                    break
            for i in dead:
                send(("exited", i, children[i][0].exitcode))
                reported.add(i)

    threads = [threading.Thread(target=forward, args=o, daemon=True) for o in outputs]
    for t in threads:
        t.start()
    while True:
        try:
            kind, cid, value = conn.recv()
        except (EOFError, OSError):
            break
        if kind == "in":
            children[cid][1].put(value)
        elif kind == "stop":
            children[cid][0].terminate()
    # The head closed the connection: it saw every child exit, or it is gone (stop what is left).
    procs.stop([c[0] for c in children.values()], 5.0)
    for _, inq in children.values():
        inq.cancel_join_thread()
    return 0 if all(c[0].exitcode == 0 for c in children.values()) else 1


def run_headless(model):
    """`vllm serve --headless`: this node's workers (multi-node MP) or EngineCores (multi-node DP)."""
    from pmsim.entry import VllmConfig
    from pmsim.util import mod
    import multiprocessing
    cfg = config.get()
    ctx = multiprocessing.get_context("spawn")
    truth.start("headless", node_rank())
    children, outputs = {}, []
    try:
        if nnodes() > 1:
            addr, port = master()
            vc = VllmConfig(model, 0)
            wp = mod("vllm.v1.executor.multiproc_executor").WorkerProc
            results = ctx.Queue()
            for rank, local in local_worker_ranks(vc.parallel_config.world_size):
                q = ctx.Queue()
                p = ctx.Process(target=wp.worker_main, name="VllmWorker-%d" % rank, daemon=True,
                                kwargs=dict(vllm_config=vc, local_rank=local, rank=rank,
                                            distributed_init_method="tcp://%s:%d" % (addr, port),
                                            input_queue=q, result_queue=results))
                p.start()
                children[rank] = (p, q)
            outputs.append((results, sorted(children), None))
        else:
            addr, port = dp_endpoint()
            start, ranks, _ = dp_layout(cfg)
            core = mod("vllm.v1.engine.core").EngineCoreProc
            for d in ranks:
                vc = VllmConfig(model, d)
                vc.parallel_config.data_parallel_rank_local = d - start
                inq, outq = ctx.Queue(), ctx.Queue()
                p = ctx.Process(target=core.run_engine_core, name="EngineCore_DP%d" % d,
                                kwargs=dict(vllm_config=vc, input_queue=inq, output_queue=outq))
                p.start()
                children[d] = (p, inq)
                outputs.append((outq, [d], d))
        truth.on_terminate(lambda: procs.stop([c[0] for c in children.values()], 5.0))
        return serve_follower(addr, port, children, outputs, cfg.start_timeout_s)
    finally:
        procs.stop([c[0] for c in children.values()], 5.0)
        truth.write()
        if cfg.ground_truth:
            truth.merge(cfg.ground_truth)


def ray_node_main(argv=None):
    """The test tree's `ray start --address A:P`: a Ray worker node started on its own (not by vLLM).

    It connects to the driver's executor at A:P, is told which worker ranks to host, and starts
    each as an actor process of its own; an actor receives the copied variables (ray_env) only
    after it started, as with Ray. Returns when the driver is done: 0 when every actor exited 0."""
    import multiprocessing
    p = argparse.ArgumentParser(prog="ray start")
    p.add_argument("--address", required=True)
    p.add_argument("--block", action="store_true")
    args, _ = p.parse_known_args(sys.argv[2:] if argv is None else argv)
    host, _, port = args.address.rpartition(":")
    cfg = config.get()
    truth.start("ray_node", 0)
    ctx = multiprocessing.get_context("spawn")
    children = {}
    try:
        conn = _connect(host or "127.0.0.1", int(port), cfg.start_timeout_s)
        conn.send(("hello", None, None))
        kind, ids, spec = conn.recv()
        if kind != "actors":
            raise RuntimeError("unexpected %r from the driver" % (kind,))
        results = ctx.Queue()
        for local, rank in enumerate(ids):
            q = ctx.Queue()
            a = ctx.Process(target=ray_actor_main, name="RayWorkerWrapper-%d" % rank, daemon=True,
                            kwargs=dict(env=spec["env"], vllm_config=spec["vllm_config"], local_rank=local, rank=rank,
                                        distributed_init_method=spec["init"], input_queue=q, result_queue=results))
            a.start()
            children[rank] = (a, q)
        truth.on_terminate(lambda: procs.stop([c[0] for c in children.values()], 5.0))
        return _relay(conn, children, [(results, sorted(children), None)])
    finally:
        procs.stop([c[0] for c in children.values()], 5.0)
        truth.write()
        if cfg.ground_truth:
            truth.merge(cfg.ground_truth)


def ray_actor_main(env, **kw):
    """A Ray actor: the driver's copied variables arrive after the process started."""
    from pmsim.util import mod
    os.environ.update(env)
    mod("vllm.v1.executor.multiproc_executor").WorkerProc.worker_main(**kw)
