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
