"""Flush-thread CPU (= GIL time taken from vLLM) per recorded event, and the recording cost in
the calling thread, with the real shim runtime and its socket sink (never asserted in tests).

A child process listens on a Unix socket and discards what it reads (the agent's side is not
measured here). This process starts the shim (`runtime.start`) with PROFILEMATE_SOCKET pointing
at it, then records a fixed number of events from the main thread in bursts of one step's
worth, and waits until the flush thread has sent every one. Measured with `time.thread_time_ns`:
  record: main thread CPU over the record() calls / events;
  flush:  the flush thread's CPU summed over its flush() calls (drain, JSON encoding, send) /
          events, and over its whole life (timer wake-ups, the import-hook sweep included).
Every count is checked: events recorded == events sent in batch lines, no drops.
The same burst loop calling a no-op function of record's signature is timed too (the loop and
call overhead every caller pays, measured in the same process).

Usage: python3 shim/bench/flush.py [--shim DIR] [EVENTS] [BURST]   (defaults: this checkout's shim,
       200000, 256)
       python3 shim/bench/flush.py --versus DIR [--rounds N] [EVENTS] [BURST]
           every pyenv Python 3.9-3.13, DIR's shim (before) and this checkout's (after) alternated
           in fresh processes, N rounds each (default 3); prints one table with medians.
"""
import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM = os.path.dirname(HERE)

SERVER = r"""
import os, socket, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
os.chmod(path, 0o600)
s.listen(4)
print("ready", flush=True)
events = 0
lines = 0
while True:
    c, _ = s.accept()
    buf = b""
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        buf += b
        *done, buf = buf.split(b"\n")
        for l in done:
            if l.startswith(b'{"t":"batch"'):
                lines += 1
                events += l.count(b'"seq":')
        sys.stdout.write("%d %d\n" % (lines, events))
        sys.stdout.flush()
"""


def measure(n, burst):
    tmp = tempfile.mkdtemp(prefix="pm-flush-")
    os.chmod(tmp, 0o700)
    sock = os.path.join(tmp, "agent.sock")
    srv = subprocess.Popen([sys.executable, "-c", SERVER, sock], stdout=subprocess.PIPE, text=True)
    assert srv.stdout.readline().strip() == "ready"
    got = {"events": 0}

    def reader():
        for line in srv.stdout:
            got["events"] = int(line.split()[1])

    threading.Thread(target=reader, daemon=True).start()

    os.environ.update({"PROFILEMATE_SOCKET": sock, "PROFILEMATE_SESSION": "bench-flush",
                       "PROFILEMATE_OUTPUT_DIR": tmp, "VLLM_ENABLE_PROFILING": "1"})
    from profilemate import runtime
    from profilemate.recorder import RECORDER

    flush_cpu = {"ns": 0, "calls": 0, "thread": None}
    real_flush = runtime.flush

    def measured_flush(*a, **kw):
        if threading.current_thread().name != "profilemate-flush":
            return real_flush(*a, **kw)
        flush_cpu["thread"] = threading.current_thread()
        t0 = time.thread_time_ns()
        try:
            return real_flush(*a, **kw)
        finally:
            flush_cpu["ns"] += time.thread_time_ns() - t0
            flush_cpu["calls"] += 1

    runtime.flush = measured_flush  # _loop looks the name up at every call
    life = {"ns": 0}
    real_loop = runtime._loop

    def measured_loop():
        t0 = time.thread_time_ns()
        try:
            real_loop()
        finally:
            life["ns"] = time.thread_time_ns() - t0

    runtime._loop = measured_loop
    runtime.start("explicit")
    if type(runtime.S.sink).__name__ != "SocketSink":
        sys.exit("shim did not connect to the bench socket (sink %r)" % (runtime.S.sink,))
    RECORDER.enabled_kinds = None
    time.sleep(0.3)  # let the hello and status go first
    base_events, base_flush = got["events"], flush_cpu["ns"]

    kv = {"usage": 0.5, "free_blocks": 12, "total_blocks": 1024}
    fp = {"cpu_ms": 1.25, "tokens": 512, "runtime_mode": "FULL", "gpu_status": "pending"}
    rec = RECORDER.record
    record_ns = 0
    done = 0
    while done < n:
        k = min(burst, n - done)
        t0 = time.thread_time_ns()
        for i in range(k):
            if i & 1:
                rec("forward_pass", "forward_pass_timing", fp)
            else:
                rec("kv_cache", "kv_cache_usage", kv)
        record_ns += time.thread_time_ns() - t0
        done += k
        while RECORDER.pending() > 50000:  # stay far from the buffer's bound
            time.sleep(0.01)
        time.sleep(0.001)  # a step's worth of other work
    deadline = time.monotonic() + 120
    while got["events"] - base_events < n and time.monotonic() < deadline:
        time.sleep(0.02)
    sent = got["events"] - base_events
    runtime.S.stop.set()
    runtime.S.thread.join(5)
    fl = flush_cpu["ns"] - base_flush
    runtime.final_flush(timeout=2)  # bye while the reader still listens
    srv.kill()
    shutil.rmtree(tmp, ignore_errors=True)
    loop_ns = _loop_overhead(n, burst, kv, fp)
    res = {"python": sys.version.split()[0], "events": n, "burst": burst, "record_ns": record_ns / n,
           "loop_ns": loop_ns / n, "flush_ns": fl / n, "life_ns": life["ns"] / n, "sent": sent,
           "dropped": RECORDER.dropped, "flush_calls": flush_cpu["calls"], "shim": SHIM_DIR}
    print("python %s, %d events in bursts of %d, flush interval %s ms, load average %.1f, shim %s" % (
        res["python"], n, burst, os.environ.get("PROFILEMATE_FLUSH_MS", "100"), os.getloadavg()[0], SHIM_DIR))
    print("| measure | per event (ns) |")
    print("|---|---|")
    print("| record(), calling thread CPU | %.0f |" % res["record_ns"])
    print("| the same loop calling a no-op function instead | %.0f |" % res["loop_ns"])
    print("| flush thread CPU in flush() (drain + encode + send) | %.0f |" % res["flush_ns"])
    print("| flush thread CPU, whole life (wake-ups, sweep included) | %.0f |" % res["life_ns"])
    print()
    print("events recorded %d, received by the socket %d, dropped %d, flush() calls %d" % (
        n, sent, RECORDER.dropped, flush_cpu["calls"]))
    print("RESULT " + json.dumps(res))
    if sent != n or RECORDER.dropped:
        sys.exit("count mismatch")


def _loop_overhead(n, burst, kv, fp):
    """CPU of the record loop with a no-op function in record's place (same bursts and pauses)."""
    def noop(kind, table, cols, step=None):
        pass
    rec, total, done = noop, 0, 0
    while done < n:
        k = min(burst, n - done)
        t0 = time.thread_time_ns()
        for i in range(k):
            if i & 1:
                rec("forward_pass", "forward_pass_timing", fp)
            else:
                rec("kv_cache", "kv_cache_usage", kv)
        total += time.thread_time_ns() - t0
        done += k
        time.sleep(0.001)
    return total


def _pythons():
    root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip() or \
        os.path.expanduser("~/.pyenv")
    out = []
    for v in ("3.9", "3.10", "3.11", "3.12", "3.13"):
        found = sorted(glob.glob(os.path.join(root, "versions", v + ".*", "bin", "python3")))
        if found:
            out.append(found[-1])
    return out


def versus(before, rounds, n, burst):
    """Before and after, alternated in fresh processes per Python; medians of the rounds."""
    print("machine: %s, %d CPUs; load average at start %.1f; %d events in bursts of %d, %d rounds per side, "
          "alternated" % (_machine(), os.cpu_count(), os.getloadavg()[0], n, burst, rounds))
    print()
    print("| python | record before (ns/event) | record after | no-op loop | flush thread before (ns/event) "
          "| flush thread after | events sent before / after, dropped |")
    print("|---|---|---|---|---|---|---|")
    for py in _pythons():
        got = {"before": [], "after": []}
        for _ in range(rounds):
            for side, shim in (("before", before), ("after", SHIM)):
                r = subprocess.run([py, os.path.abspath(__file__), "--shim", shim, str(n), str(burst)],
                                   capture_output=True, text=True, timeout=600)
                line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
                if r.returncode or not line:
                    sys.exit("%s %s failed:\n%s%s" % (py, side, r.stdout[-2000:], r.stderr[-2000:]))
                got[side].append(json.loads(line[0][7:]))
        b, a = got["before"], got["after"]

        def med(rs, k):
            return statistics.median(x[k] for x in rs)
        print("| %s | %.0f | %.0f | %.0f | %.0f | %.0f | %s / %s, %d |" % (
            a[0]["python"], med(b, "record_ns"), med(a, "record_ns"), med(a + b, "loop_ns"), med(b, "flush_ns"),
            med(a, "flush_ns"), "+".join(str(x["sent"]) for x in b), "+".join(str(x["sent"]) for x in a),
            sum(x["dropped"] for x in a + b)), flush=True)
    print()
    print("load average at end %.1f" % os.getloadavg()[0])


def _machine():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


SHIM_DIR = SHIM


def main():
    global SHIM_DIR
    ap = argparse.ArgumentParser()
    ap.add_argument("--shim", default=SHIM, help="the shim folder to measure (default: this checkout's)")
    ap.add_argument("--versus", help="a shim folder to compare with (before), side by side, every Python")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("events", nargs="?", type=int, default=200000)
    ap.add_argument("burst", nargs="?", type=int, default=256)
    args = ap.parse_args()
    if args.versus:
        versus(os.path.abspath(args.versus), args.rounds, args.events, args.burst)
        return
    SHIM_DIR = os.path.abspath(args.shim)
    sys.path.insert(0, SHIM_DIR)
    measure(args.events, args.burst)


if __name__ == "__main__":
    main()
