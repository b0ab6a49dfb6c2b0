"""Start-up cost of a non-vLLM process with the shim on PYTHONPATH, as a ratio to plain
`python -c pass`, per Python version found under pyenv. Usage: python3 shim/bench/startup.py [N]"""
import glob
import os
import subprocess
import sys
import time

SHIM = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench(py, with_shim, n):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith(("VLLM_", "PROFILEMATE_"))}
    if with_shim:
        env["PYTHONPATH"] = SHIM
    best = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([py, "-c", "pass"], env=env, check=True)
        best.append(time.perf_counter() - t0)
    best.sort()
    return best[len(best) // 2]  # median


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip() or os.path.expanduser("~/.pyenv")
    print("| python | plain `-c pass` (ms, median of %d) | with shim (ms) | ratio | added (ms) |" % n)
    print("|---|---|---|---|---|")
    for v in ("3.9", "3.10", "3.11", "3.12", "3.13"):
        found = sorted(glob.glob(os.path.join(root, "versions", v + ".*", "bin", "python3")))
        if not found:
            continue
        py = found[-1]
        bench(py, True, 3)  # warm the .pyc cache
        plain, shim = [], []
        for _ in range(2):  # interleave to share machine noise
            plain.append(bench(py, False, n // 2))
            shim.append(bench(py, True, n // 2))
        p, s = min(plain), min(shim)
        print("| %s | %.2f | %.2f | %.3f | %.2f |" % (v, p * 1e3, s * 1e3, s / p, (s - p) * 1e3))


if __name__ == "__main__":
    main()
