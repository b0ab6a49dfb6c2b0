"""GPU time from pooled CUDA event pairs, polled later: never a synchronize on vLLM's stream.

start() records a start event on the current stream and returns a pair (or None without CUDA);
stop(pair, on_done, data) records the end event and queues the pair. poll() (called by the
worker after each step and once at exit) resolves the finished pairs in order with
event.query(), which does not block, calls on_done(ms, data) and returns the events to the
pool. torch is never imported here: without a torch that vLLM already loaded, or without
CUDA, available() is False and callers write status "unavailable".
"""
import collections
import sys
import time

MAX_PENDING = 4096


class _Pool:
    def __init__(self):
        self.free = []
        self.pending = collections.deque()
        self.ok = None  # None: not probed yet
        self.torch = None
        self.dropped = 0

    def available(self):
        ok = self.ok
        if ok is None:
            ok = False
            torch = sys.modules.get("torch")
            try:
                if torch is not None and hasattr(torch, "cuda") and torch.cuda.is_available():
                    self.torch, ok = torch, True
            except Exception:
                ok = False
            self.ok = ok
        return ok

    def start(self):
        if not (self.ok if self.ok is not None else self.available()):
            return None
        try:
            if self.free:
                pair = self.free.pop()
            else:
                ev = self.torch.cuda.Event
                pair = (ev(enable_timing=True), ev(enable_timing=True))
            pair[0].record()
            return pair
        except Exception:
            return None

    def stop(self, pair, on_done, data):
        """Records the end event and queues the pair; False when it could not be queued."""
        if pair is None:
            return False
        if len(self.pending) >= MAX_PENDING:
            self.dropped += 1
            self.free.append(pair)
            return False
        try:
            pair[1].record()
        except Exception:
            self.free.append(pair)
            return False
        self.pending.append((pair, on_done, data))
        return True

    def poll(self, wait_s=0.0):
        """Resolves finished pairs in order; waits up to wait_s (exit only) by polling query()."""
        deadline = time.monotonic() + wait_s
        pending = self.pending
        while pending:
            pair, on_done, data = pending[0]
            try:
                done = pair[1].query()
            except Exception:
                done = None
            if done is False:
                if time.monotonic() < deadline:
                    time.sleep(0.001)
                    continue
                return
            pending.popleft()
            ms = None
            if done:
                try:
                    ms = pair[0].elapsed_time(pair[1])
                except Exception:
                    ms = None
            self.free.append(pair)
            try:
                on_done(ms, data)
            except Exception:
                pass

    def drain_unresolved(self):
        """Hands back what never finished: (on_done, data) pairs; called at exit."""
        out = [(on_done, data) for _pair, on_done, data in self.pending]
        self.pending.clear()
        return out


POOL = _Pool()
