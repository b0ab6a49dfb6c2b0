"""Per-process bounded event buffer.

record() is the only call hot-path wrappers make: it never blocks and never raises. A
deque append is atomic under the GIL; when the buffer is full the event is dropped and
counted. seq is assigned at record time (from 1), so drops show downstream as gaps only
if they happen later in the pipeline; drops here are counted in `dropped`.
"""
import collections
import itertools
import time

DEFAULT_CAPACITY = 200000


class Recorder:
    def __init__(self, capacity=DEFAULT_CAPACITY):
        self.capacity = capacity
        self.reset()

    def reset(self):
        self._buf = collections.deque()
        self._seq = itertools.count(1)
        self.last_seq = 0
        self.dropped = 0
        self.recorded = 0
        self.step = -1  # current real step of this process (scheduler or model runner)
        self.enabled_kinds = None  # None: every kind on

    def record(self, kind, table, cols, step=None):
        """Queues one event; cols holds only the table's own columns."""
        try:
            if self.enabled_kinds is not None and kind not in self.enabled_kinds:
                return
            if len(self._buf) >= self.capacity:
                self.dropped += 1
                return
            seq = next(self._seq)
            self.last_seq = seq
            self._buf.append((seq, self.step if step is None else step, time.time_ns(), kind, table, cols))
            self.recorded += 1
        except Exception:
            pass

    def drain(self, limit=None):
        """Takes queued events out, oldest first (flush thread only)."""
        out = []
        pop = self._buf.popleft
        try:
            while limit is None or len(out) < limit:
                out.append(pop())
        except IndexError:
            pass
        return out

    def requeue(self, events):
        """Puts undelivered events back at the front, dropping what no longer fits."""
        room = max(0, self.capacity - len(self._buf))
        keep = events[-room:] if room else []
        self.dropped += len(events) - len(keep)
        self._buf.extendleft(reversed(keep))

    def pending(self):
        return len(self._buf)


RECORDER = Recorder()


def record(kind, table, cols, step=None):
    RECORDER.record(kind, table, cols, step)
