"""moe_expert switched off and on at run time: the device counters keep counting while off (as a
captured CUDA graph does), and the first rows after "on" cover only steps after it, with exact
counts. Real torch CPU tensors (Debian's python3-torch under /usr/bin/python3); skipped where torch
is not importable."""
import collections
import random
import unittest

try:
    import torch
except Exception:  # pragma: no cover - interpreters without torch
    torch = None

from profilemate.moe_counter import Counters

LAYER = "model.layers.0.mlp.experts"


@unittest.skipIf(torch is None, "torch not importable in this interpreter")
class MoESwitch(unittest.TestCase):
    def run_steps(self, rebase):
        rng = random.Random(11)
        c = Counters()
        rows, on = [], [True]
        # The recorder drops rows of a switched-off kind; the counter does not know.
        emit = lambda step, cols: on[0] and rows.append((step, cols))  # noqa: E731
        after_on = collections.Counter()
        for step in range(1, 21):
            if step == 9:
                on[0] = False  # off between steps 8 and 9
            if step == 14:
                on[0] = True  # on arrives during step 14
                if rebase:
                    c.rebase_pending = True
            ids = [[rng.randrange(8) for _ in range(2)] for _ in range(rng.randint(1, 20))]
            c.count(LAYER, 8, torch.tensor(ids))  # a captured graph counts whether on or off
            if step > 14:
                after_on.update(x for row in ids for x in row)
            # the runner's per-step rule: every 4 steps, or at once after "on"
            if step - c.last_step >= 4 or c.rebase_pending:
                c.poll(emit)
                self.assertTrue(c.snapshot(step))
                c.poll(emit)
        if c.last_step < 20:  # the last interval, as finish() does at exit
            c.poll(emit)
            self.assertTrue(c.snapshot(20))
            c.poll(emit)
        return rows, after_on

    def test_rows_after_on_are_exact(self):
        rows, after_on = self.run_steps(rebase=True)
        late = [(s, cols) for s, cols in rows if s > 14]
        got = collections.Counter()
        for _s, cols in late:
            got[cols["expert"]] += cols["count"]
        self.assertEqual(+got, after_on)
        covered = sum(cols["interval_steps"] for _s, cols in late if cols["expert"] == 0)
        self.assertEqual(covered, 20 - 14, "rows after on must cover exactly the steps after it")
        self.assertFalse([s for s, _c in rows if 8 < s <= 14], "rows while off")

    def test_without_rebase_rows_after_on_overcount(self):
        # The failure the rebase fixes: the first row after "on" also holds steps from while off.
        rows, after_on = self.run_steps(rebase=False)
        got = collections.Counter()
        for s, cols in rows:
            if s > 14:
                got[cols["expert"]] += cols["count"]
        self.assertNotEqual(+got, after_on)


if __name__ == "__main__":
    unittest.main()
