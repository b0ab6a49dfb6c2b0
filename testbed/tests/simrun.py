"""Runs the simulator's entry points in a fresh interpreter and reads back what the run left behind."""
import json
import os
import subprocess
import sys
import tempfile

TESTBED = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ERAS = ["v0_7_3", "v0_10_2", "v0_11_0", "v0_16_0", "main_2026_08_20"]

# Test-only: records what sys.argv was when sitecustomize ran in every process of the tree.
SITECUSTOMIZE = '''
import json, os, sys
_d = os.environ.get("PMSIM_TEST_ARGV_DIR")
if _d:
    with open(os.path.join(_d, "%d.json" % os.getpid()), "w") as _f:
        json.dump({"pid": os.getpid(), "ppid": os.getppid(), "argv": list(sys.argv)}, _f)
'''

OFFLINE = "from vllm import LLM\nout = LLM(model='sim/moe-tiny').generate()\nprint('offline: %d outputs' % len(out))\n"

ENTRY_ARGS = {
    "serve": lambda: [os.path.join(TESTBED, "bin", "vllm"), "serve", "sim/moe-tiny"],
    "api_server": lambda: ["-m", "vllm.entrypoints.openai.api_server", "--model", "sim/moe-tiny"],
    "offline": lambda: ["-c", OFFLINE],
}

# A hang guard for the subprocess only; every run is expected to end long before it.
GUARD_S = 300


class Run:
    def __init__(self, rc, output, truth, argv_records):
        self.rc, self.output, self.truth, self.argv_records = rc, output, truth, argv_records

    def processes(self, role):
        return [p for p in self.truth["processes"] if p["role"] == role]


def run(era, entry, tmp, flags=(), **env_extra):
    """Runs one entry point of one era with a fast workload and returns a Run; flags are appended
    to the entry point's command line (`vllm serve` flags such as -tp)."""
    site = os.path.join(tmp, "site")
    argv_dir = os.path.join(tmp, "argv")
    os.makedirs(site, exist_ok=True)
    os.makedirs(argv_dir, exist_ok=True)
    with open(os.path.join(site, "sitecustomize.py"), "w") as f:
        f.write(SITECUSTOMIZE)
    gt = os.path.join(tmp, "truth.json")
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("PMSIM_") or k.startswith("PROFILEMATE"):
            del env[k]
    env.update(PYTHONPATH=os.pathsep.join([site, os.path.join(TESTBED, "eras", era), TESTBED]),
               PMSIM_GROUND_TRUTH=gt, PMSIM_STEP_WORK_MS="0", PMSIM_TEST_ARGV_DIR=argv_dir,
               PYTHONDONTWRITEBYTECODE="1")
    # The tests' standard tree: 4 workers unless a test gives PMSIM_TP ("" = the simulator's default, 1).
    env["PMSIM_TP"] = "4"
    env.update({k: str(v) for k, v in env_extra.items()})
    p = subprocess.run([sys.executable] + ENTRY_ARGS[entry]() + list(flags), env=env, cwd=tmp, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=GUARD_S)
    truth = None
    if os.path.exists(gt):
        with open(gt) as f:
            truth = json.load(f)
    records = []
    for name in sorted(os.listdir(argv_dir)):
        with open(os.path.join(argv_dir, name)) as f:
            records.append(json.load(f))
    return Run(p.returncode, p.stdout.decode("utf-8", "replace"), truth, records)


def alive(pid):
    """True while pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False


def tempdir():
    return tempfile.TemporaryDirectory(prefix="pmsim-test-")
