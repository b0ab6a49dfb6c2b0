"""Per-process bounded event buffer.

record() is the only call hot-path wrappers make: it never blocks and never raises. It appends
(seq, step, ts_ns, kind, table, cols) to a deque bounded by `capacity`; a deque append is atomic
under the GIL. When the buffer is full the deque itself lets go of its oldest event, so record
needs no length check: every event took a seq when it was recorded, so those dropped show
downstream as gaps, and `dropped` counts them exactly from what drain() saw (the highest seq
drained minus the events drained) and, while the buffer is full, from recorded - drained - queued.
An event being recorded by another thread at that moment has its seq but is not queued yet: it is
never counted as dropped while the buffer has room.

record is a plain function made once per Recorder (not a bound method): everything it reads lives
in its closure, so a call costs the profiler-kind check, the sequence number, the clock and one
append (docs/BENCHMARKS.md, "Recording and flush-thread CPU"). reset() clears the same buffer and
restarts the sequence in place, so callers may keep a reference to record across forks.
"""
import collections
import itertools
import time

DEFAULT_CAPACITY = 200000


class Recorder:
    """Attributes: record(kind, table, cols, step=None); step (the process's current step);
    enabled_kinds (None: every kind, else the set of kinds kept); dropped, recorded, last_seq
    (counts since the last reset)."""

    def __init__(self, capacity=DEFAULT_CAPACITY):
        self.capacity = capacity
        self._buf = collections.deque(maxlen=capacity)
        self._cur = [-1]  # current real step of this process (scheduler or model runner)
        self.record, self._rebind = _make_record(self._buf, self._cur)
        self.reset()

    def reset(self):
        self._buf.clear()
        self._seq = itertools.count(1)
        self._on = None
        self._rebind(self._seq, None)
        self._drained = 0  # events taken out by drain()
        self._drained_max = 0  # the highest seq drain() has taken out
        self._lost = 0  # drained events a sink could not deliver (add_dropped)
        self._cur[0] = -1

    @property
    def dropped(self):
        """Events lost in this process: pushed out of the full buffer, plus those a sink could not
        deliver (add_dropped). Read while events are being recorded it may lag by the events of the
        moment, never run ahead."""
        # Drops happen only while the buffer is full, always to its oldest events; only drain()
        # makes room again. So with room left, every drop lies below the highest seq drained and
        # the count is exact, however many events other threads are recording right now.
        if len(self._buf) < self.capacity:
            return self._lost + max(0, self._drained_max - self._drained)
        recorded = self.last_seq  # first: an event recorded in between only lowers the difference
        return self._lost + max(0, recorded - self._drained - len(self._buf))

    def add_dropped(self, n):
        """Counts n drained events that could not be delivered (a sink that stopped)."""
        self._lost += n

    @property
    def step(self):
        return self._cur[0]

    @step.setter
    def step(self, value):
        self._cur[0] = value

    @property
    def enabled_kinds(self):
        return self._on

    @enabled_kinds.setter
    def enabled_kinds(self, kinds):
        """None: every kind on; else a set of kind names (copied)."""
        self._on = None if kinds is None else frozenset(kinds)
        self._rebind(self._seq, self._on)

    @property
    def last_seq(self):
        """The seq of the last event recorded (0: none since the last reset)."""
        text = repr(self._seq)  # "count(N)": N is the next seq
        return int(text[text.index("(") + 1:-1]) - 1

    @property
    def recorded(self):
        """Events recorded since the last reset (every recorded event took one seq)."""
        return self.last_seq

    def drain(self, limit=None):
        """Takes queued events out, oldest first (flush thread only): at most `limit`, or every
        event queued when the call began (events recorded meanwhile wait for the next drain)."""
        buf = self._buf
        n = len(buf)
        if limit is not None:
            n = min(n, max(0, limit))
        pop = buf.popleft
        out = [pop() for _ in itertools.repeat(None, n)]
        self._drained += n
        if out and out[-1][0] > self._drained_max:
            self._drained_max = out[-1][0]
        return out

    def pending(self):
        return len(self._buf)


def _make_record(buf, cur):
    """(record, rebind): record queues one event as (seq, step, ts_ns, kind, table, cols);
    rebind(seq counter, enabled kinds or None) swaps what record reads, in place."""
    append = buf.append
    time_ns = time.time_ns
    seq = itertools.count(1)
    on = None

    def record(kind, table, cols, step=None):
        """Queues one event; cols holds only the table's own columns; step defaults to the
        process's current step."""
        try:
            if on is not None and kind not in on:
                return
            append((next(seq), cur[0] if step is None else step, time_ns(), kind, table, cols))
        except Exception:
            pass

    def rebind(new_seq, new_on):
        nonlocal seq, on
        seq, on = new_seq, new_on

    return record, rebind


RECORDER = Recorder()
record = RECORDER.record
