"""profilemate.wire's batch encoder: recorder tuples written straight into the line's text must mean
exactly what json.dumps of the same event dicts means (the agent decodes either), for every table
and every kind of cell: ints, floats (2.0 stays a float), empty cells ("" and None), bools,
strings that need escaping, values of unexpected types, columns the encoder has not seen, column
subsets in any order, unknown tables. The golden batches of proto/testdata go through the same
path in test_contract.
"""
import json
import math
import os
import random
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM = os.path.dirname(HERE)
if SHIM not in sys.path:
    sys.path.insert(0, SHIM)

from profilemate import schema, wire  # noqa: E402


def same(a, b, where="$"):
    """First difference of two parsed JSON values (1 vs 1.0 vs True told apart, NaN equal to NaN)."""
    if type(a) is not type(b):
        return "%s: %r (%s) vs %r (%s)" % (where, a, type(a).__name__, b, type(b).__name__)
    if isinstance(a, dict):
        if set(a) != set(b):
            return "%s: keys %s vs %s" % (where, sorted(a), sorted(b))
        for k in a:
            d = same(a[k], b[k], where + "." + k)
            if d:
                return d
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return "%s: %d items vs %d" % (where, len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b)):
            d = same(x, y, "%s[%d]" % (where, i))
            if d:
                return d
        return None
    if isinstance(a, float) and math.isnan(a) and math.isnan(b):
        return None
    return None if a == b else "%s: %r vs %r" % (where, a, b)


def reference(pid, ident, events, dropped):
    """The line as json.dumps writes it from one dict per event (the shim's encoder before)."""
    evs = [e if isinstance(e, dict) else wire.event(e[3], e[4], e[0], e[1], e[2], e[5]) for e in events]
    return json.dumps({"t": "batch", "v": wire.VERSION, "pid": pid, "ident": dict(ident), "events": evs,
                       "dropped": dropped}, separators=(",", ":"), ensure_ascii=False, default=str)


class IntLike(int):
    pass


class FloatLike(float):
    pass


class Odd:
    def __str__(self):
        return "odd"


def cell(rng, typ):
    pick = rng.random()
    if pick < 0.08:
        return ""
    if pick < 0.14:
        return None
    if pick < 0.18:  # a value of another type than the column's
        return rng.choice([True, False, 3, 2.0, -0.5, "x", IntLike(4), FloatLike(1.5), float("nan"),
                           float("inf"), [1, 2], {"a": 1}, Odd()])
    if typ == "int":
        return rng.choice([0, 1, -1, 7, 2 ** 40, -(2 ** 63), 2 ** 70])
    if typ == "float":
        return rng.choice([0.0, 2.0, 0.1, 1e-7, 1e16, 1e300, -3.25, 0.7342105263157895, rng.random()])
    if typ == "bool":
        return rng.choice([True, False])
    return rng.choice(["FULL", "pending", 'say "hi"', "back\\slash", "tab\tnew\nline", "\x00\x1f",
                       "h\u00e9llo \u2028 \u65e5\u672c", "%s %d %%", "", "req-%d" % rng.randrange(1000)])


class BatchEncoder(unittest.TestCase):
    def check(self, events, pid=4242, ident=None, dropped=0):
        ident = ident or wire.ident("worker", 0, 0, 1, -1, 1)
        line = wire.encode_batch(pid, ident, events, dropped)
        self.assertIsInstance(line, bytes)
        self.assertTrue(line.endswith(b"\n"))
        self.assertEqual(line.count(b"\n"), 1, "one line per batch")
        got = json.loads(line.decode("utf-8"))
        want = json.loads(reference(pid, ident, events, dropped))
        diff = same(got, want)
        self.assertIsNone(diff, "fast encoding differs from json.dumps: %s" % diff)
        return got

    def test_every_table_every_cell(self):
        rng = random.Random(24)
        tables = [(k, t) for k, ts in schema.KIND_TABLES.items() for t in ts]
        self.assertTrue(tables, "no tables in the schema")
        for round_ in range(40):
            events = []
            for seq in range(1, 120):
                kind, table = rng.choice(tables)
                types = schema.column_types(table)
                cols = list(types)
                if rng.random() < 0.3:
                    cols = rng.sample(cols, rng.randrange(1, len(cols) + 1))  # a subset, in any order
                if rng.random() < 0.02:
                    cols.append("not_a_column")
                step = rng.choice([-1, 0, 1, 10 ** 6])
                events.append((seq, step, 1796025736871430626 + seq, kind, table,
                               {c: cell(rng, types.get(c, "string")) for c in cols}))
            with self.subTest(round=round_):
                self.check(events, dropped=round_)

    def test_same_columns_other_order_and_other_set(self):
        a = (1, 3, 10, "kv_cache", "kv_cache_evictions", {"evictions": 1, "blocks_evicted": 2})
        b = (2, 3, 11, "kv_cache", "kv_cache_evictions", {"blocks_evicted": 5, "evictions": 4})
        c = (3, 3, 12, "cpu_timing", "cpu_operations_timing", {"operation": "schedule", "cpu_ms": 0.25})
        d = (4, 3, 13, "cpu_timing", "cpu_operations_timing", {"operation": "x", "not_a_column": 1.0})
        got = self.check([a, b, c, d, a, b, c, d])
        self.assertEqual(got["events"][1]["cols"], {"evictions": 4, "blocks_evicted": 5})
        self.assertEqual(got["events"][3]["cols"], {"operation": "x", "not_a_column": 1.0})

    def test_unknown_kind_table_and_odd_events(self):
        self.check([
            (1, 1, 1, "no_such_kind", "no_such_table", {"a": 1}),
            (2, 1, 2, "kv_cache", "batch_utilization", {"scheduled_tokens": 4}),  # table of another kind
            (3, 1, 3, "kv_cache", "kv_cache_evictions", {}),
            (4, 1, 4, "kv_cache", "kv_cache_evictions", None),
            (5, None, 5, "kv_cache", "kv_cache_evictions", {"evictions": 1, "blocks_evicted": 1}),
            {"kind": "cpu_timing", "table": "cpu_operations_timing", "seq": 6, "step": 1, "ts_ns": 6,
             "cols": {"operation": "dict event", "cpu_ms": 1.0}},
        ])

    def test_floats_stay_floats(self):
        got = self.check([(1, 1, 1, "cpu_timing", "cpu_operations_timing", {"operation": "a", "cpu_ms": 2.0}),
                          (2, 1, 2, "cpu_timing", "cpu_operations_timing", {"operation": "a", "cpu_ms": 2})])
        self.assertIs(type(got["events"][0]["cols"]["cpu_ms"]), float)
        self.assertIs(type(got["events"][1]["cols"]["cpu_ms"]), int)
        line = wire.encode_batch(1, wire.ident("worker"), [
            (1, 1, 1, "cpu_timing", "cpu_operations_timing", {"operation": "a", "cpu_ms": 0.1})])
        self.assertIn(b'"cpu_ms":0.1}', line)  # the shortest text, as repr and json.dumps write it

    def test_known_tables_take_the_fast_path(self):
        # The json.dumps path runs once per new column set; afterwards only for cells it must take.
        calls = []
        real = wire._event_text
        wire._event_text = lambda e: calls.append(e[0]) or real(e)
        try:
            kv = {"usage": 0.5, "free_blocks": 12, "total_blocks": 1024, "blocks_allocated": 3, "blocks_freed": 1,
                  "alloc_failures": 0, "prefix_hit_tokens": 0, "prefix_query_tokens": 0}
            fp = {"cpu_ms": 1.25, "gpu_ms": "", "gpu_status": "unavailable", "tokens": 512, "runtime_mode": "FULL"}
            events = [(i, 1, i, "kv_cache", "kv_cache_usage", dict(kv)) if i % 2 else
                      (i, 1, i, "forward_pass", "forward_pass_timing", dict(fp)) for i in range(1, 101)]
            self.check(events)
            self.check(events)
            nan = dict(fp, cpu_ms=float("nan"))
            self.check([(101, 1, 101, "forward_pass", "forward_pass_timing", nan)])
        finally:
            wire._event_text = real
        self.assertLessEqual(len(calls), 2 + 1, calls)  # at most one per new column set, and the NaN
        self.assertIn(101, calls)

    def test_lone_surrogate_costs_only_its_cell(self):
        # A string Python holds but UTF-8 cannot encode (a lone surrogate, e.g. from a decoded
        # filename): the line is still written and every other event in it is intact.
        bad = (1, 1, 1, "preemption", "preemption_events", {"request_id": "req-\udc80", "tokens_lost": 3})
        good = (2, 1, 2, "kv_cache", "kv_cache_evictions", {"evictions": 1, "blocks_evicted": 2})
        line = wire.encode_batch(7, wire.ident("engine_core"), [bad, good])
        got = json.loads(line.decode("utf-8", "surrogatepass"))
        self.assertEqual(got["events"][0]["cols"]["request_id"], "req-\udc80")
        self.assertEqual(got["events"][1]["cols"], {"evictions": 1, "blocks_evicted": 2})
        self.assertEqual(line.count(b"\n"), 1)

    def test_empty_batch(self):
        got = self.check([], dropped=7)
        self.assertEqual(got["events"], [])
        self.assertEqual(got["dropped"], 7)


if __name__ == "__main__":
    unittest.main()
