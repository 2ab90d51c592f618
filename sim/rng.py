"""Named, reproducible random streams.

Every stochastic component draws from its own generator, keyed by a root seed and a name path,
following Scientific Python SPEC 7 and NumPy's ``SeedSequence`` guidance. Streams are keyed by
name, not by creation order, so adding a node or a strategy never shifts the numbers another
component draws; the workload stream does not depend on the strategy (common random numbers).

>>> a = stream(7, "workload", "arrivals").random()
>>> b = stream(7, "workload", "arrivals").random()
>>> a == b
True
>>> a == stream(7, "workload", "lengths").random()
False
"""

from __future__ import annotations

import zlib

import numpy as np


def _key(part: str | int) -> int:
    if isinstance(part, str):
        # crc32, not hash(): str hashes are salted per process.
        return zlib.crc32(part.encode("utf-8"))
    if part < 0:
        raise ValueError(f"stream key parts must be non-negative, got {part}")
    return int(part)


def stream(root_seed: int, *path: str | int) -> np.random.Generator:
    """Return the generator for the component named by ``path`` under ``root_seed``."""
    if root_seed < 0:
        raise ValueError(f"seed must be non-negative, got {root_seed}")
    key = tuple(_key(p) for p in path)
    return np.random.default_rng(np.random.SeedSequence(root_seed, spawn_key=key))


class UniformDraws:
    """Uniform numbers in [0, 1) from a generator, drawn a block at a time.

    A numpy call costs a microsecond or more (``Generator.choice`` without replacement about
    fifteen), and routing strategies draw once or twice per request: taking the numbers from
    a block of ``rng.random(block)`` makes each draw a list lookup. Deterministic: the same
    generator gives the same sequence.
    """

    __slots__ = ("_block", "_buf", "_i", "_rng")

    def __init__(self, rng: np.random.Generator, block: int = 1024):
        self._rng = rng
        self._block = block
        self._buf: list[float] = []
        self._i = 0

    def random(self) -> float:
        """The next uniform number in [0, 1)."""
        i = self._i
        if i == len(self._buf):
            self._buf = self._rng.random(self._block).tolist()
            i = 0
        self._i = i + 1
        return self._buf[i]

    def index(self, n: int) -> int:
        """A uniform integer in [0, n) (``n`` >= 1)."""
        k = int(self.random() * n)
        return k if k < n else n - 1

    def weighted_index(self, weights: list[float]) -> int:
        """An index drawn with probability proportional to ``weights`` (non-negative, with a
        positive sum)."""
        target = self.random() * sum(weights)
        acc = 0.0
        for i, w in enumerate(weights):
            acc += w
            if target < acc:
                return i
        return max(i for i, w in enumerate(weights) if w > 0)
