"""vLLM targets: one module per target; TARGETS below is the one list.

Structure of a target module (see scheduler.py for the model):

    TARGET = Target(
        name="scheduler", component="Scheduler",
        kinds=("batch_util", "preemption", "cpu_timing"),
        paths=[Path("vllm.v1.core.sched.scheduler", eras="v0.8.2+", hooks=[
                   Hook("Scheduler", "schedule", _schedule, kinds=("batch_util", ...)), ...]),
               Path("vllm.v1.core.scheduler", eras="v0.6.6-v0.8.1", hooks=[...])],
        tables=("batch_utilization", "preemption_events", ...))

- Imports: a target module imports `Hook, Path, Target` (and helpers) from `targets._util` and
  the step state it shares with other targets from `profilemate.stepctx`, never another target
  module, so no import cycle exists, function-local imports included.
- `tables`: the CSV tables the target's hooks produce or feed; `table_statuses()` below turns
  target statuses into each table's status for metadata.json and doctor.

- `Path`: one vLLM module (and the eras that have it) with the hooks applied when it loads.
  A path whose class is missing from the module is `absent`; a target is `patched` when the
  hooks of at least one of its paths are in place.
- `Hook(cls, method, factory, required=(), kinds=(), optional=False)`: `factory(original, rt)`
  returns the wrapper; `rt` is `profilemate.runtime`. `required` names parameters the wrapper
  relies on (checked with inspect.signature; a mismatch leaves vLLM's method untouched and
  marks the target `failed`). `kinds` are the profiler kinds the hook feeds: when all of them
  are switched off (PROFILEMATE_PROFILERS=all,-moe_expert or a ctl message) the hook is not
  installed, or is unwrapped exactly. An empty `kinds` means always on (identity, step
  counters). `method` may be a tuple of alternatives, newest first: the first name the class
  has (itself or inherited) is wrapped. `optional=True`: the method exists only in some eras; missing is not an error.

Recording API for the profilers (all O(1), never raise, never block):
- `rt.record(kind, table, cols, step=None)`: one event; `cols` holds only the table's own
  columns (proto/tables/<table>.json); `step` defaults to the process's current step.
- `rt.enabled(kind)`: whether a profiler kind is on (check before costly work).
- `rt.RECORDER.step`: the current step (EngineCore: real scheduler steps; worker: real
  model-runner steps, capture/profile/dummy runs excluded); `rt.next_step()` advances it.
- `rt.IDENT.set_role(...)`, `rt.IDENT.set_ranks(dp=, pp=, tp=, ep=, rank=)`: identity.
- `time.perf_counter_ns()` twice and one `rt.record` is the budget of a hot-path wrapper.
"""
import importlib

from profilemate import schema
from profilemate.targets._util import Hook, Path, Target  # noqa: F401  (the public names)

# The one list: module names under profilemate.targets, in reporting order.
TARGET_MODULES = (
    "worker", "engine_core", "scheduler", "kv_cache_manager", "block_pool",
    "gpu_model_runner", "cuda_graph", "fused_moe",
)


_loaded = []


def all_targets():
    if not _loaded:
        for name in TARGET_MODULES:
            _loaded.append(importlib.import_module("profilemate.targets." + name).TARGET)
    return list(_loaded)


def watched_modules():
    names = set()
    for t in all_targets():
        names.update(t.modules())
    return names


def by_module(module_name):
    return [(t, p) for t in all_targets() for p in t.paths if p.module == module_name]


# Tables whose rows exist only where CUDA events can be created (a GPU and torch with CUDA).
NEEDS_CUDA = {"moe_expert_timing": "unavailable: needs CUDA events"}


def table_statuses(target_statuses, seen=None, enabled=None, cuda=None):
    """Why each CSV table has rows or not in this process (metadata.json "tables", doctor).

    target_statuses: [{target, status, reason}] (runtime.statuses() or doctor's); seen: the set of
    tables this process recorded rows for (None in doctor: nothing ran yet); enabled(kind) -> bool;
    cuda: whether CUDA events can be made (None: unknown). Returns [{"table", "status"}] in the
    seed's table order; status is one of: recorded, no events (hooked, nothing happened yet),
    available (doctor: would be recorded), unavailable: needs CUDA events, disabled,
    not in this vLLM era (the hooks' classes are missing), not in this process (no feeding
    target module was imported here, e.g. scheduler tables in a worker), failed: <reason>.
    """
    by = {t["target"]: t for t in target_statuses}
    out = []
    for table in schema.STANDALONE_TABLES:
        feeders = [by.get(t.name) or {"status": "not_loaded", "reason": ""}
                   for t in all_targets() if table in t.tables]
        st = {f["status"] for f in feeders}
        kind = schema.table_kind(table)
        if seen is not None and table in seen:
            status = "recorded"
        elif enabled is not None and not enabled(kind):
            status = "disabled"
        elif "patched" in st:
            if table in NEEDS_CUDA and cuda is False:
                status = NEEDS_CUDA[table]
            else:
                status = "no events" if seen is not None else "available"
        elif "failed" in st:
            status = "failed: " + "; ".join(f["reason"] for f in feeders if f["status"] == "failed")
        elif "disabled" in st:
            status = "disabled"
        elif st and st <= {"absent"}:
            status = "not in this vLLM era"
        else:
            status = "not in this process"
        out.append({"table": table, "status": status})
    return out

