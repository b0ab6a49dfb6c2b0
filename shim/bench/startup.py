"""Start-up time a non-vLLM Python process pays for the shim on PYTHONPATH (as `pmagent run` and
`pmagent env` put it there), per Python version found under pyenv, with PYTHONDONTWRITEBYTECODE=1
as on many hosts and containers (Python never writes byte-code itself there).

Three interleaved variants per iteration, each a fresh `python -c pass`:
  plain   no shim;
  source  the shim's files only (Python compiles every module at every start);
  pyc     the same files with byte-code compiled by that interpreter into __pycache__ (what
          `pmagent run/env --python` and `pmagent install` prepare).
Each run is measured by its own CPU time (user + system, from wait4), not wall time: on a shared,
loaded machine wall time is mostly waiting for a core. Added time = median over iterations of
(variant - plain) of the same iteration, in ms, so noise shared by neighbouring runs cancels.

Usage: python3 shim/bench/startup.py [N] (default 40)
       python3 shim/bench/startup.py --versus DIR [N]: a fourth variant interleaved, DIR's shim (a
       folder with sitecustomize.py and profilemate/, e.g. an older checkout's shim/) with its
       byte-code, so before and after come from one run.
       python3 shim/bench/startup.py --instructions [--versus DIR]: instead of CPU time, the user-space
       instructions of one `python -c pass` per variant under valgrind (callgrind), which do not
       depend on the machine's load (system calls are not counted).
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile

SHIM = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _copy_shim(dst, src=SHIM):
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copy2(os.path.join(src, "sitecustomize.py"), dst)
    shutil.copytree(os.path.join(src, "profilemate"), os.path.join(dst, "profilemate"), ignore=ignore)


def _env(shim_dir):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith(("VLLM_", "PROFILEMATE_"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONHASHSEED"] = "0"  # the same hashing in every run (instruction counts repeat exactly)
    if shim_dir:
        env["PYTHONPATH"] = shim_dir
    return env


def _once(py, env):
    """CPU time (user + system, s) of one `python -c pass`: on a loaded machine it follows the
    work the process does far better than wall time, which mostly measures waiting for a core."""
    proc = subprocess.Popen([py, "-c", "pass"], env=env)
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else status
    if proc.returncode != 0:
        raise RuntimeError("%s exited %s" % (py, proc.returncode))
    return ru.ru_utime + ru.ru_stime


def _median(xs):
    xs = sorted(xs)
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


def bench(py, n, tmp, before=None):
    """(plain, added source only, added with byte-code, added before with byte-code or None), s."""
    src, pyc, old = os.path.join(tmp, "src"), os.path.join(tmp, "pyc"), os.path.join(tmp, "before")
    for d, origin in ((src, SHIM), (pyc, SHIM), (old, before)):
        shutil.rmtree(d, ignore_errors=True)
        if origin is None:
            continue
        os.makedirs(d)
        _copy_shim(d, origin)
    subprocess.run([py, "-I", "-m", "compileall", "-q", pyc], check=True)
    envs = {"plain": _env(None), "source": _env(src), "pyc": _env(pyc)}
    if before:
        subprocess.run([py, "-I", "-m", "compileall", "-q", old], check=True)
        envs["before"] = _env(old)
    for e in envs.values():
        _once(py, e)  # warm the page cache
    plain, added = [], {k: [] for k in envs if k != "plain"}
    for _ in range(n):
        p = _once(py, envs["plain"])
        plain.append(p)
        for k in added:
            added[k].append(_once(py, envs[k]) - p)
    return (_median(plain), _median(added["source"]), _median(added["pyc"]),
            _median(added["before"]) if before else None)


def _instructions(py, env):
    """User-space instructions (callgrind's Ir) of one `python -c pass`."""
    r = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", py, "-c", "pass"],
                       env=env, capture_output=True, text=True)
    for line in r.stderr.splitlines():
        if "Collected :" in line:
            return int(line.split(":")[-1])
    raise RuntimeError("valgrind: %s" % r.stderr[-500:])


def instructions(root, before):
    print("| python | plain `-c pass` (M instructions) | added before, byte-code (M) | added after, byte-code (M) "
          "| added after, source only (M) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="pm-startup-") as tmp:
        for v in ("3.9", "3.10", "3.11", "3.12", "3.13"):
            found = sorted(glob.glob(os.path.join(root, "versions", v + ".*", "bin", "python3")))
            if not found:
                continue
            py = os.path.realpath(found[-1])
            dirs = {"src": SHIM, "pyc": SHIM, "before": before}
            envs = {"plain": _env(None)}
            for name, origin in dirs.items():
                if origin is None:
                    continue
                d = os.path.join(tmp, name)
                shutil.rmtree(d, ignore_errors=True)
                os.makedirs(d)
                _copy_shim(d, origin)
                if name != "src":
                    subprocess.run([py, "-I", "-m", "compileall", "-q", d], check=True)
                envs[name] = _env(d)
            got = {k: _instructions(py, e) for k, e in envs.items()}
            p = got["plain"]
            b = "%+.2f" % ((got["before"] - p) / 1e6) if before else "-"
            print("| %s | %.1f | %s | %+.2f | %+.2f |" % (v, p / 1e6, b, (got["pyc"] - p) / 1e6, (got["src"] - p) / 1e6),
                  flush=True)


def main():
    args = sys.argv[1:]
    before, count = None, False
    if args[:1] == ["--instructions"]:
        count, args = True, args[1:]
    if args[:1] == ["--versus"]:
        before, args = os.path.abspath(args[1]), args[2:]
    if count:
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip() or \
            os.path.expanduser("~/.pyenv")
        instructions(root, before)
        return
    n = int(args[0]) if args else 40
    root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip() or os.path.expanduser("~/.pyenv")
    try:
        load = "%.1f" % os.getloadavg()[0]
    except OSError:
        load = "?"
    print("Load average at start: %s; %d interleaved iterations per Python." % (load, n))
    print()
    if before:
        print("Before: %s; after: %s." % (before, SHIM))
        print()
        print("| python | plain `-c pass`, CPU (ms) | added before, with byte-code (ms) | added after, with byte-code (ms) "
              "| added after, source only (ms) |")
        print("|---|---|---|---|---|")
    else:
        print("| python | plain `-c pass`, CPU (ms) | added, source only (ms) | added, with byte-code (ms) | ratio with/without byte-code |")
        print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="pm-startup-") as tmp:
        for v in ("3.9", "3.10", "3.11", "3.12", "3.13"):
            found = sorted(glob.glob(os.path.join(root, "versions", v + ".*", "bin", "python3")))
            if not found:
                continue
            p, s, c, b = bench(found[-1], n, tmp, before)
            if before:
                print("| %s | %.2f | %+.2f | %+.2f | %+.2f |" % (v, p * 1e3, b * 1e3, c * 1e3, s * 1e3), flush=True)
                continue
            ratio = (p + c) / (p + s) if p + s > 0 else float("nan")
            print("| %s | %.2f | %+.2f | %+.2f | %.3f |" % (v, p * 1e3, s * 1e3, c * 1e3, ratio), flush=True)
    try:
        load = "%.1f" % os.getloadavg()[0]
    except OSError:
        load = "?"
    print()
    print("Load average at end: %s." % load)


if __name__ == "__main__":
    main()
