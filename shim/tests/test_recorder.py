"""profilemate.recorder: the bounded buffer's counts stay exact (recorded = delivered + dropped +
queued), a full buffer never blocks, record keeps working across reset (fork), and the profiler-kind
filter holds."""
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM = os.path.dirname(HERE)
if SHIM not in sys.path:
    sys.path.insert(0, SHIM)

from profilemate.recorder import Recorder  # noqa: E402


class RecorderCounts(unittest.TestCase):
    def test_full_buffer_counts_every_drop(self):
        r = Recorder(capacity=10)
        rec = r.record
        got = []
        for i in range(25):
            rec("cpu_timing", "cpu_operations_timing", {"i": i})
            if i == 6:
                got += r.drain()  # 7 delivered
        self.assertEqual((r.recorded, r.last_seq), (25, 25))
        self.assertEqual(r.pending(), 10)  # the newest ten
        self.assertEqual(r.dropped, 25 - 7 - 10)
        got += r.drain()
        self.assertEqual(r.dropped, 8)
        seqs = [e[0] for e in got]
        self.assertEqual(seqs, list(range(1, 8)) + list(range(16, 26)), "drops show as a gap in seq")
        self.assertEqual(len(got) + r.dropped, r.recorded)
        r.add_dropped(3)  # a sink that could not deliver three drained events
        self.assertEqual(r.dropped, 11)

    def test_event_being_recorded_is_not_a_drop(self):
        # Another thread reads dropped (a batch line, the bye) while this one is inside record():
        # its event already took a seq but is not queued yet. Nothing was dropped.
        import time
        seen = []
        real = time.time_ns
        box = {}

        def clock():
            if "r" in box:
                seen.append(box["r"].dropped)
            return real()

        time.time_ns = clock
        try:
            r = Recorder(capacity=100)
        finally:
            time.time_ns = real
        for i in range(5):
            r.record("kv_cache", "kv_cache_usage", {}, step=i)
        r.drain()
        box["r"] = r
        r.record("kv_cache", "kv_cache_usage", {}, step=5)
        self.assertEqual(seen, [0])
        self.assertEqual((r.dropped, r.recorded, r.pending()), (0, 6, 1))

    def test_drain_limit_and_order(self):
        r = Recorder(capacity=100)
        for i in range(5):
            r.record("kv_cache", "kv_cache_usage", {}, step=i)
        first = r.drain(limit=2)
        self.assertEqual([(e[0], e[1]) for e in first], [(1, 0), (2, 1)])
        self.assertEqual([e[0] for e in r.drain()], [3, 4, 5])
        self.assertEqual(r.drain(), [])
        self.assertEqual(r.dropped, 0)

    def test_reset_keeps_the_same_function(self):
        r = Recorder(capacity=4)
        rec = r.record
        r.step = 7
        for _ in range(6):
            rec("kv_cache", "kv_cache_usage", {})
        self.assertEqual(r.dropped, 2)
        r.reset()  # what a forked child does
        self.assertEqual((r.recorded, r.dropped, r.pending(), r.step), (0, 0, 0, -1))
        rec("kv_cache", "kv_cache_usage", {})
        r.step = 3
        rec("kv_cache", "kv_cache_usage", {})
        self.assertEqual([(e[0], e[1]) for e in r.drain()], [(1, -1), (2, 3)])

    def test_kind_filter(self):
        r = Recorder()
        r.enabled_kinds = {"kv_cache"}
        r.record("kv_cache", "kv_cache_usage", {})
        r.record("moe_expert", "moe_expert_selection", {})
        self.assertEqual([e[3] for e in r.drain()], ["kv_cache"])
        self.assertEqual(r.recorded, 1, "a filtered event takes no seq")
        r.enabled_kinds = None
        r.record("moe_expert", "moe_expert_selection", {})
        self.assertEqual([(e[0], e[3]) for e in r.drain()], [(2, "moe_expert")])

    def test_record_never_raises(self):
        r = Recorder()
        r.enabled_kinds = {"kv_cache"}
        r.record([], "t", None)  # an unhashable kind: the filter raises inside, record does not
        r.record("kv_cache", "kv_cache_usage", None, "not a step")
        self.assertEqual(r.pending(), 1)


if __name__ == "__main__":
    unittest.main()
