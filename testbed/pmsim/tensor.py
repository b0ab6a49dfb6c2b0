"""A list-backed tensor with the few torch-like methods a counter needs, and CUDA-graph capture.

While a graph captures, every op is recorded onto the graph's tape instead of running (as on a GPU,
capture records kernels). Replay refills the static input buffers in place and re-runs the tape: no
Python-level layer code runs at replay, only the recorded ops, so a device-side counter recorded
during capture counts every replay while Python around the layer sees nothing.
"""
_capturing = []


class FakeTensor:
    __slots__ = ("data", "shape", "dtype")

    def __init__(self, data, shape=None, dtype="int64"):
        self.data = data
        self.shape = tuple(shape) if shape is not None else (len(data),)
        self.dtype = dtype

    # shape helpers
    def numel(self):
        n = 1
        for s in self.shape:
            n *= s
        return n

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    def dim(self):
        return len(self.shape)

    def flatten(self):
        return FakeTensor(self.data, (self.numel(),), self.dtype)

    def view(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        if shape == (-1,):
            shape = (self.numel(),)
        return FakeTensor(self.data, shape, self.dtype)

    def long(self):
        return FakeTensor(self.data, self.shape, "int64")

    def int(self):
        return FakeTensor(self.data, self.shape, "int32")

    def to(self, *a, **k):
        return self

    def tolist(self):
        if len(self.shape) == 2:
            c = self.shape[1]
            return [list(self.data[i * c:(i + 1) * c]) for i in range(self.shape[0])]
        return list(self.data)

    def __len__(self):
        return self.shape[0]

    def new_zeros(self, shape, dtype=None, device=None):
        if isinstance(shape, int):
            shape = (shape,)
        n = 1
        for s in shape:
            n *= s
        return FakeTensor([0] * n, shape, dtype or self.dtype)

    def new_ones(self, shape, dtype=None, device=None):
        t = self.new_zeros(shape, dtype)
        t.data[:] = [1] * len(t.data)
        return t

    def clone(self):
        out = FakeTensor([0] * len(self.data), self.shape, self.dtype)
        _op(lambda: out.data.__setitem__(slice(None), self.data))
        return out

    def copy_(self, src):
        _op(lambda: self.data.__setitem__(slice(None), src.data))
        return self

    def zero_(self):
        _op(lambda: self.data.__setitem__(slice(None), [0] * len(self.data)))
        return self

    def index_add_(self, dim, index, source):
        def run():
            d = self.data
            for i, v in zip(index.data, source.data):
                d[i] += v
        _op(run)
        return self

    def bincount(self, minlength=0):
        out = FakeTensor([0] * max(minlength, 0), (max(minlength, 0),))

        def run():
            n = max([minlength] + [v + 1 for v in self.data])
            counts = [0] * n
            for v in self.data:
                counts[v] += 1
            out.data[:] = counts
            out.shape = (n,)
        _op(run)
        return out

    def add_(self, other):
        def run():
            if isinstance(other, FakeTensor):
                for i, v in enumerate(other.data):
                    self.data[i] += v
            else:
                for i in range(len(self.data)):
                    self.data[i] += other
        _op(run)
        return self

    def __repr__(self):
        return "FakeTensor(shape=%s)" % (self.shape,)


def _op(fn):
    if _capturing:
        _capturing[-1].tape.append(fn)
    else:
        fn()


def apply(fn):
    """Runs fn now, or records it when a graph is capturing (used by the simulator's own kernels)."""
    _op(fn)


class Graph:
    """One captured CUDA graph: a tape of ops over static buffers."""

    def __init__(self):
        self.tape = []
        self.replays = 0

    def __enter__(self):
        _capturing.append(self)
        return self

    def __exit__(self, *exc):
        _capturing.pop()
        return False

    def replay(self):
        self.replays += 1
        for fn in self.tape:
            fn()


def is_capturing():
    return bool(_capturing)
