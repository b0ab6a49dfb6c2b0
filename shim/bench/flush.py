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
Usage: python3 shim/bench/flush.py [EVENTS] [BURST]   (defaults 200000, 256)
"""
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

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


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200000
    burst = int(sys.argv[2]) if len(sys.argv) > 2 else 256
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
    print("python %s, %d events in bursts of %d, flush interval %s ms, load average %.1f" % (
        sys.version.split()[0], n, burst, os.environ.get("PROFILEMATE_FLUSH_MS", "100"), os.getloadavg()[0]))
    print("| measure | per event (ns) |")
    print("|---|---|")
    print("| record(), calling thread CPU | %.0f |" % (record_ns / n))
    print("| flush thread CPU in flush() (drain + encode + send) | %.0f |" % (fl / n))
    print("| flush thread CPU, whole life (wake-ups, sweep included) | %.0f |" % (life["ns"] / n))
    print()
    print("events recorded %d, received by the socket %d, dropped %d, flush() calls %d" % (
        n, sent, RECORDER.dropped, flush_cpu["calls"]))
    if sent != n or RECORDER.dropped:
        sys.exit("count mismatch")


if __name__ == "__main__":
    main()
