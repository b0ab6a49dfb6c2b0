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
