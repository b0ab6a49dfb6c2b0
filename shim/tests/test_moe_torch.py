"""The tensor path of the MoE counter on real torch CPU tensors (Debian's python3-torch under
/usr/bin/python3); skipped where torch is not importable."""
import collections
import random
import unittest

try:
    import torch
except Exception:  # pragma: no cover - interpreters without torch
    torch = None

from profilemate.moe_counter import Counters


@unittest.skipIf(torch is None, "torch not importable in this interpreter")
class MoECounterTorch(unittest.TestCase):
    def test_counts_equal_python_count(self):
        rng = random.Random(7)
        c = Counters()
        rows = []
        emit = lambda step, cols: rows.append((step, cols))  # noqa: E731
        want = {name: collections.Counter() for name in ("model.layers.0.mlp.experts", "model.layers.3.mlp.experts")}
        for step in range(1, 11):
            for name in want:
                n = rng.randint(1, 40)
                ids = [[rng.randrange(16) for _ in range(2)] for _ in range(n)]
                dtype = torch.int32 if step % 2 else torch.int64  # vLLM's indices type varies by era
                c.count(name, 16, torch.tensor(ids, dtype=dtype))
                want[name].update(x for row in ids for x in row)
            c.note_mode("NONE")
            if step % 4 == 0:
                self.assertTrue(c.snapshot(step))
                self.assertFalse(c.snapshot(step), "a second snapshot while one is in flight")
                self.assertTrue(c.poll(emit))
        self.assertTrue(c.snapshot(10))
        self.assertTrue(c.poll(emit))
        for name, counter in want.items():
            got = collections.Counter()
            for _step, cols in rows:
                if cols["layer"] == name:
                    got[cols["expert"]] += cols["count"]
            self.assertEqual(+got, counter, name)
        idx = {cols["layer_index"] for _s, cols in rows}
        self.assertEqual(idx, {0, 3})
        self.assertEqual(sum(cols["interval_steps"] for s, cols in rows
                             if cols["layer_index"] == 0 and cols["expert"] == 0), 10)

    def test_counter_is_a_preallocated_tensor_updated_in_place(self):
        c = Counters()
        ids = torch.tensor([[1, 2], [2, 3]])
        c.count("model.layers.1.mlp.experts", 8, ids)
        counts = c.layers["model.layers.1.mlp.experts"].counts
        ptr = counts.data_ptr()
        c.count("model.layers.1.mlp.experts", 8, ids)
        self.assertEqual(counts.data_ptr(), ptr)
        self.assertIs(c.layers["model.layers.1.mlp.experts"].counts, counts)
        self.assertEqual(counts.tolist(), [0, 2, 4, 2, 0, 0, 0, 0])
        self.assertEqual(counts.dtype, torch.int64)


if __name__ == "__main__":
    unittest.main()
