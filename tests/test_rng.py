"""Random streams: named generators and the block-drawn uniforms strategies use."""

from __future__ import annotations

import numpy as np
from scipy import stats

from sim.rng import UniformDraws, stream


def test_uniform_draws_follow_the_generator_block_by_block() -> None:
    """The draws are the generator's ``random(block)`` numbers, in order, across blocks."""
    draws = UniformDraws(stream(3, "test"), block=7)
    expected = stream(3, "test").random(21)
    got = [draws.random() for _ in range(20)]
    assert got == expected[:20].tolist()


def test_index_is_uniform_over_its_range() -> None:
    """``index(n)`` covers 0..n-1 evenly (chi-square test at the 0.1 % level)."""
    draws = UniformDraws(stream(5, "test"))
    n, samples = 7, 70_000
    counts = np.bincount([draws.index(n) for _ in range(samples)], minlength=n)
    assert counts.size == n
    assert stats.chisquare(counts).pvalue > 1e-3


def test_weighted_index_follows_the_weights() -> None:
    """``weighted_index`` picks i with probability w_i / sum(w); zero weights never."""
    draws = UniformDraws(stream(9, "test"))
    weights = [0.5, 0.0, 2.0, 1.5]
    samples = 40_000
    counts = np.bincount([draws.weighted_index(weights) for _ in range(samples)], minlength=4)
    assert counts[1] == 0
    expected = np.array([0.5, 2.0, 1.5]) / 4.0 * samples
    assert stats.chisquare(counts[[0, 2, 3]], expected).pvalue > 1e-3
