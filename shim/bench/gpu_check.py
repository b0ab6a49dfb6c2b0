"""GPU check for the worker profilers (needs torch with CUDA; prepared, not yet run on a GPU).

Run on an H100/H200: PYTHONPATH=shim python3 shim/bench/gpu_check.py [N_REPLAYS] [K_ITERS]
1. device-side expert counts exact after N CUDA-graph replays (counter captured in the graph);
2. CUDA-event forward times (profilemate.gpu_timing, polled) against synchronized wall time over K;
3. the recording path clean under torch.cuda.set_sync_debug_mode("error").
Prints one line per check and the GPU's name; exits 1 when a check fails.
"""
import sys
import time

import torch

from profilemate.gpu_timing import POOL
from profilemate.moe_counter import Counters


def main():
    n_replays = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    k = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    dev = torch.device("cuda")
    print("gpu:", torch.cuda.get_device_name(0), "torch", torch.__version__)
    ok = True
    E, rows, topk = 64, 256, 8
    ids = torch.randint(0, E, (rows, topk), device=dev, dtype=torch.int32)
    c = Counters()
    c.count("model.layers.0.mlp.experts", E, ids)  # eager first: allocates counter and ones
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    g = torch.cuda.CUDAGraph()
    with torch.cuda.stream(s):
        with torch.cuda.graph(g, stream=s):
            c.count("model.layers.0.mlp.experts", E, ids)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(n_replays):
            g.replay()
        c.snapshot(1)
        emitted = []
        while not c.poll(lambda step, cols: emitted.append(cols)):
            time.sleep(0.001)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    want = torch.bincount(ids.flatten().long(), minlength=E).cpu() * (n_replays + 1)
    got = torch.tensor([r["count"] for r in emitted])
    exact = bool(torch.equal(got, want))
    ok &= exact
    print("1. expert counts after %d graph replays exact: %s (sum %d)" % (n_replays, exact, int(got.sum())))

    a = torch.randn(4096, 4096, device=dev)
    times = []
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(k):
            pair = POOL.start()
            for _ in range(4):
                a = a @ a
                a = a / a.norm()
            POOL.stop(pair, lambda ms, d: times.append(ms), None)
            POOL.poll()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    POOL.poll(wait_s=10.0)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(k):
        for _ in range(4):
            a = a @ a
            a = a / a.norm()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) * 1000.0 / k
    ev = sum(times) / len(times)
    agree = len(times) == k and abs(ev - wall) / wall < 0.10
    ok &= agree
    print("2. event mean %.3f ms vs synchronized wall %.3f ms per iteration (%d/%d resolved): %s"
          % (ev, wall, len(times), k, "agree" if agree else "DIFFER"))
    print("3. recording path under set_sync_debug_mode('error'): clean")  # any sync above would have raised
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
