"""Shared helpers: fresh interpreters with the real shim and a tiny vLLM-shaped tree."""
import glob
import json
import os
import subprocess
import sys
import tempfile
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM = os.path.dirname(HERE)
ROOT = os.path.dirname(SHIM)
TESTBED = os.path.join(ROOT, "testbed")

SCHEDULER = '''
class Out:
    def __init__(self, n):
        self.total_num_scheduled_tokens = n
        self.num_scheduled_tokens = {"r": n}


class Scheduler:
    max_num_scheduled_tokens = 8
    max_num_running_reqs = 2

    def __init__(self):
        self.waiting, self.running = [], []

    def schedule(self):
        return Out(4)

    def update_from_output(self, %s):
        return "original"

if __name__ == "__main__":
    print("main ran:", Scheduler().schedule().total_num_scheduled_tokens)
'''


def fake_tree(update_params="scheduler_output, model_runner_output"):
    """A minimal vllm package with the v0.8.2+ scheduler module and an entry point."""
    d = tempfile.mkdtemp(prefix="pm-fake-")
    files = {
        "vllm/__init__.py": "__version__ = '0.10.2'\n",
        "vllm/v1/__init__.py": "", "vllm/v1/core/__init__.py": "", "vllm/v1/core/sched/__init__.py": "",
        "vllm/v1/core/sched/scheduler.py": SCHEDULER % update_params,
        "vllm/entrypoints/__init__.py": "", "vllm/entrypoints/openai/__init__.py": "",
        "vllm/entrypoints/openai/api_server.py": textwrap.dedent('''
            import sys
            from vllm.v1.core.sched import scheduler
            if __name__ == "__main__":
                scheduler.Scheduler().schedule()
                print("served", sys.argv[1:])
        '''),
    }
    for rel, body in files.items():
        path = os.path.join(d, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(body)
    return d


def run(args, paths, env=None, out_dir=None, timeout=120, shim=True, input=None):
    """Runs python with PYTHONPATH = [shim] + paths; returns CompletedProcess (text)."""
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("PROFILEMATE_", "VLLM_", "PMSIM_")) and k != "PYTHONPATH"}
    e["PYTHONPATH"] = os.pathsep.join(([SHIM] if shim else []) + list(paths))
    e["PYTHONDONTWRITEBYTECODE"] = "1"
    # No agent lookup unless a test names a socket: an agent listening at a default path on
    # this machine must not receive the test's events.
    e["PROFILEMATE_SOCKET"] = "off"
    if out_dir:
        e["PROFILEMATE_OUTPUT_DIR"] = out_dir
    e.update(env or {})
    return subprocess.run([sys.executable] + list(args), env=e, capture_output=True, text=True,
                          timeout=timeout, input=input)


def sessions(out_dir):
    return sorted(glob.glob(os.path.join(out_dir, "session_*")))


def proc_dirs(session_dir):
    return sorted(p for p in glob.glob(os.path.join(session_dir, "*")) if os.path.isdir(p))


def read_json(path):
    with open(path) as f:
        return json.load(f)


def csv_rows(path):
    import csv
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_engine_sim(testcase, era, env, truth_key, tables, model="sim/m", prefix="pm-sim-"):
    """Runs `vllm serve` of the simulator (one EngineCore, runner inside) under the shim with its
    folder sink; returns (the ground truth of the process that has `truth_key`, {table: rows} of the
    EngineCore folder, its metadata.json)."""
    import shutil
    out = tempfile.mkdtemp(prefix=prefix)
    testcase.addCleanup(shutil.rmtree, out, True)
    gt = os.path.join(out, "truth.json")
    env = dict(env, PMSIM_GROUND_TRUTH=gt)
    try:
        r = run([os.path.join(TESTBED, "bin", "vllm"), "serve", model],
                [os.path.join(TESTBED, "eras", era), TESTBED], env=env, out_dir=os.path.join(out, "pm"),
                timeout=120)
    except subprocess.TimeoutExpired:
        testcase.fail("era %s: the simulator did not finish within 120 s" % era)
    testcase.assertEqual(r.returncode, 0, r.stderr[-3000:])
    truth = read_json(gt)
    proc = [p for p in truth["processes"] if truth_key in p]
    testcase.assertEqual(len(proc), 1, truth["processes"])
    folders = glob.glob(os.path.join(out, "pm", "session_*", "engine_core-*"))
    testcase.assertEqual(len(folders), 1, folders)
    rows = {}
    for name in tables:
        path = os.path.join(folders[0], name + ".csv")
        rows[name] = csv_rows(path) if os.path.exists(path) else []
    return proc[0], rows, read_json(os.path.join(folders[0], "metadata.json"))


class Proc:
    """One process of a simulator run: its ground truth, and what the shim wrote in its folder."""

    def __init__(self, truth, folder, tables, meta):
        self.truth, self.folder, self.tables, self.meta = truth, folder, tables, meta


def run_tree(testcase, era, env, tables, model="sim/m", prefix="pm-tree-", timeout=180):
    """Runs `vllm serve` of the simulator under the shim (folder sink) with env (PMSIM_TP/PP/DP...);
    returns [Proc] for every EngineCore and worker process, matched to its ground truth by pid.
    Fails the test when a process with ground truth has no folder or the other way round."""
    import shutil
    out = tempfile.mkdtemp(prefix=prefix)
    testcase.addCleanup(shutil.rmtree, out, True)
    gt = os.path.join(out, "truth.json")
    env = dict(env, PMSIM_GROUND_TRUTH=gt)
    try:
        r = run([os.path.join(TESTBED, "bin", "vllm"), "serve", model],
                [os.path.join(TESTBED, "eras", era), TESTBED], env=env, out_dir=os.path.join(out, "pm"),
                timeout=timeout)
    except subprocess.TimeoutExpired:
        testcase.fail("era %s: the simulator did not finish within %d s" % (era, timeout))
    testcase.assertEqual(r.returncode, 0, r.stderr[-3000:])
    truth = read_json(gt)
    folders = {}
    for d in glob.glob(os.path.join(out, "pm", "session_*", "*-*-*")):
        if os.path.isdir(d):
            folders[int(d.rsplit("-", 1)[1])] = d
    procs = []
    for p in truth["processes"]:
        if p["role"] not in ("engine_core", "worker"):
            continue
        d = folders.get(p["pid"])
        testcase.assertIsNotNone(d, "%s %s (pid %d) wrote no folder: %s" % (p["role"], p["rank"], p["pid"],
                                                                            sorted(folders.values())))
        rows = {}
        for name in tables:
            path = os.path.join(d, name + ".csv")
            rows[name] = csv_rows(path) if os.path.exists(path) else []
        procs.append(Proc(p, d, rows, read_json(os.path.join(d, "metadata.json"))))
    return procs
