"""The mergeable quantile sketch (sim.metrics.sketch): its stated relative error, exact
moments, and exact merges."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim.metrics.sketch import QuantileSketch

QS = [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0]


def _within(sketch: QuantileSketch, x: np.ndarray, qs: list[float] = QS) -> None:
    """Each sketch quantile is within alpha of the exact value of its rank (the values
    numpy.percentile interpolates between bracket it)."""
    xs = np.sort(x)
    a = sketch.alpha
    for q, est in zip(qs, sketch.quantiles(qs), strict=True):
        rank = q * (xs.size - 1)
        lo, hi = xs[math.floor(rank)], xs[math.ceil(rank)]
        assert lo * (1 - a) - 1e-12 <= est <= hi * (1 + a) + 1e-12, (q, est, lo, hi)
        if hi - lo <= a * hi:  # no gap between the two ranks: close to numpy's figure too
            exact = float(np.percentile(x, 100 * q))
            assert abs(est - exact) <= 2.01 * a * hi + 1e-12


@pytest.mark.parametrize("alpha", [0.005, 0.01, 0.05])
@pytest.mark.parametrize("dist", ["lognormal", "exponential", "pareto", "uniform", "bimodal"])
def test_relative_error_bound(alpha: float, dist: str) -> None:
    rng = np.random.default_rng(hash((dist, alpha)) % 2**32)
    n = 200_000
    x = {"lognormal": lambda: rng.lognormal(-1, 1.5, n),
         "exponential": lambda: rng.exponential(0.05, n),
         "pareto": lambda: rng.pareto(1.2, n) + 1e-3,
         "uniform": lambda: rng.uniform(0.01, 0.02, n),
         "bimodal": lambda: np.concatenate([rng.normal(0.02, 0.001, n // 2).clip(1e-6),
                                            rng.normal(30, 1, n // 2).clip(1e-6)])}[dist]()
    sketch = QuantileSketch(alpha)
    for chunk in np.array_split(x, 7):  # streamed in chunks
        sketch.add_many(chunk)
    _within(sketch, x)
    assert sketch.count == n
    assert sketch.min == x.min() and sketch.max == x.max()
    assert sketch.mean() == pytest.approx(x.mean(), rel=1e-12)
    # size: buckets span log(max/min)/log(gamma), independent of n
    assert sketch.buckets <= math.log(x.max() / x.min()) / math.log(sketch.gamma) + 3


def test_merge_equals_sketch_of_union() -> None:
    rng = np.random.default_rng(1)
    parts = [rng.lognormal(m, 1, 10_000) for m in (-5, 0, 3)] + [np.zeros(50)]
    merged = QuantileSketch()
    for part in parts:
        s = QuantileSketch()
        s.add_many(part)
        merged.merge(s)
    whole = QuantileSketch()
    whole.add_many(np.concatenate(parts))
    assert np.array_equal(merged.counts, whole.counts)
    assert (merged.count, merged.zeros, merged.min, merged.max) == (
        whole.count, whole.zeros, whole.min, whole.max)
    assert merged.quantiles(QS) == whole.quantiles(QS)
    _within(merged, np.concatenate(parts))


def test_zeros_empty_and_bad_input() -> None:
    s = QuantileSketch()
    assert math.isnan(s.quantile(0.5)) and math.isnan(s.mean())
    s.add_many(np.array([0.0, 0.0, 0.0, 2.0]))
    assert s.quantile(0.5) == 0.0 and s.quantile(1.0) == 2.0 and s.mean() == 0.5
    s.add(4.0)
    assert s.count == 5
    with pytest.raises(ValueError):
        s.add_many(np.array([1.0, np.nan]))
    with pytest.raises(ValueError):
        s.add(-1.0)
    with pytest.raises(ValueError):
        s.merge(QuantileSketch(alpha=0.01))
