"""Simulator settings, read only from PMSIM_* environment variables (spawned children inherit them)."""
import os


def _int(name, default):
    v = os.environ.get(name, "")
    return int(v) if v.strip() else default


def _float(name, default):
    v = os.environ.get(name, "")
    return float(v) if v.strip() else default


def _bool(name, default=False):
    v = os.environ.get(name, "")
    return default if not v.strip() else v.strip().lower() in ("1", "true", "yes", "on")


class Config:
    def __init__(self):
        # vLLM's -tp/--tensor-parallel-size (`vllm serve` sets PMSIM_TP from it); 1 when neither the
        # command line nor the environment gives it, as vLLM's default.
        self.tp = _int("PMSIM_TP", 1)
        # Pipeline stages and data-parallel engines (vLLM's --pipeline-parallel-size and
        # --data-parallel-size): one EngineCore per DP rank, tp*pp workers each.
        self.pp = _int("PMSIM_PP", 1)
        self.dp = _int("PMSIM_DP", 1)
        # Every N real scheduler steps the scheduler evicts up to 2 cached free blocks through
        # KVCacheManager.evict_blocks (eras that have it, v0.16+); 0: never.
        self.evict_every = _int("PMSIM_EVICT_EVERY", 5)
        self.requests = _int("PMSIM_REQUESTS", 24)
        self.max_steps = _int("PMSIM_MAX_STEPS", 100000)
        self.seed = _int("PMSIM_SEED", 0)
        self.ground_truth = os.environ.get("PMSIM_GROUND_TRUTH", "")
        self.step_work_ms = _float("PMSIM_STEP_WORK_MS", 10.0)
        self.pieces = _int("PMSIM_PIECES", 33)
        self.moe_layers = _int("PMSIM_MOE_LAYERS", 4)
        self.experts = _int("PMSIM_EXPERTS", 16)
        self.top_k = _int("PMSIM_TOP_K", 2)
        self.num_blocks = _int("PMSIM_NUM_BLOCKS", 48)
        self.block_size = _int("PMSIM_BLOCK_SIZE", 16)
        self.token_budget = _int("PMSIM_TOKEN_BUDGET", 256)
        self.max_num_seqs = _int("PMSIM_MAX_NUM_SEQS", 16)
        sizes = os.environ.get("PMSIM_CAPTURE_SIZES", "1,2,4,8,16,32,64")
        self.capture_sizes = sorted(int(x) for x in sizes.split(",") if x.strip())
        self.slow_rank = _int("PMSIM_SLOW_RANK", -1)
        self.slow_ms = _float("PMSIM_SLOW_MS", 20.0)
        self.enforce_eager = _bool("PMSIM_ENFORCE_EAGER")
        self.pause_file = os.environ.get("PMSIM_PAUSE_FILE", "")
        self.v2_runner = os.environ.get("PMSIM_V2_RUNNER", "")
        self.mm_share = _float("PMSIM_MM_SHARE", 0.25)
        self.max_tokens = _int("PMSIM_MAX_TOKENS", 24)
        # Longest wait for any answer between processes before the tree gives up and exits non-zero.
        self.rpc_timeout_s = _float("PMSIM_RPC_TIMEOUT_S", 60.0)
        # Longest wait for workers to start (they are watched for liveness meanwhile): a hang guard
        # only, kept apart from the RPC deadline so a short PMSIM_RPC_TIMEOUT_S on a busy machine
        # does not fail start-up.
        self.start_timeout_s = _float("PMSIM_START_TIMEOUT_S", 300.0)
        # Fault injection for tests: "<how>:<rank>:<step>", how = raise | exit | hang (rank -1: EngineCore).
        self.fail = os.environ.get("PMSIM_FAIL", "")


def fault(rank, step):
    """The fault PMSIM_FAIL asks for at this rank and step, or None."""
    spec = os.environ.get("PMSIM_FAIL", "").strip()
    if not spec:
        return None
    how, r, s = (spec.split(":") + ["", ""])[:3]
    if int(r or 0) == rank and int(s or 0) == step:
        return how
    return None


def inject(rank, step):
    how = fault(rank, step)
    if how == "raise":
        raise RuntimeError("PMSIM_FAIL: injected failure at rank %d step %d" % (rank, step))
    if how == "exit":
        os._exit(3)
    if how == "hang":
        import time
        while True:
            time.sleep(1)


def get():
    return Config()
