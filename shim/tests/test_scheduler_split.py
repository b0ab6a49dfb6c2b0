"""The scheduler target's prefill/decode split (targets/scheduler.py _split): tokens of requests whose
computed tokens before the step are fewer than their prompt count as prefill; a request id the
scheduler does not know is left out of both."""
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM = os.path.dirname(HERE)
if SHIM not in sys.path:
    sys.path.insert(0, SHIM)

from profilemate.targets import scheduler  # noqa: E402


class Req:
    def __init__(self, computed, prompt):
        self.num_computed_tokens, self.num_prompt_tokens = computed, prompt


class Obj:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class Split(unittest.TestCase):
    def test_before_and_after_advance(self):
        reqs = {"a": Req(0, 100), "b": Req(96, 100), "c": Req(300, 100), "d": Req(99, 100)}
        out = Obj(num_scheduled_tokens={"a": 64, "b": 4, "c": 1, "d": 1})
        self.assertEqual(scheduler._split(Obj(requests=reqs), out, False), (69, 1))
        for r, n in (("a", 64), ("b", 4), ("c", 1), ("d", 1)):
            reqs[r].num_computed_tokens += n  # what vLLM does after the split was taken
        self.assertEqual(scheduler._split(Obj(requests=reqs), out, True), (69, 1))

    def test_unknown_request_is_left_out(self):
        reqs = {"a": Req(0, 100), "c": Req(300, 100)}
        out = Obj(num_scheduled_tokens={"a": 10, "gone": 7, "c": 1})
        self.assertEqual(scheduler._split(Obj(requests=reqs), out, False), (10, 1))
        self.assertEqual(scheduler._split(Obj(), Obj(), False), (0, 0))


if __name__ == "__main__":
    unittest.main()
