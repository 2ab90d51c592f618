"""Length distributions: contract, and empirical moments against mean() and variance()."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.errors import ScenarioError
from sim.spec import ComponentSpec, build_params
from sim.workload.lengths import MAX_TOKENS, LengthDistribution, LognormalLength, lengths

EXAMPLES: dict[str, dict[str, object]] = {
    "fixed": {"tokens": 128},
    "uniform": {"low_tokens": 10, "high_tokens": 300},
    "lognormal": {"median_tokens": 900.0, "sigma": 0.8, "max_tokens": 8192},
    "empirical": {"values_tokens": [5, 50, 500, 7], "weights": [1.0, 2.0, 0.0, 0.5]},
    "geometric": {"mean_tokens": 200.0},
    "empirical_by_prompt": {"prompt_edges_tokens": [100], "bin_weights": [0.5, 0.5],
                            "tables": [{"values_tokens": [5, 50]},
                                       {"values_tokens": [500, 7], "weights": [1.0, 3.0]}]},
}
SAMPLES = 200_000


def make(name: str, **params: object) -> LengthDistribution:
    """Build a registered length distribution from raw params."""
    cls, p = build_params(lengths, ComponentSpec(name=name, params=params), "lengths")
    dist: LengthDistribution = cls(p)
    return dist


def test_every_registered_distribution_has_an_example() -> None:
    """Each registered name is covered by the contract tests below."""
    assert sorted(EXAMPLES) == lengths.names()


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_sample_contract(name: str) -> None:
    """Samples are int64, >= 1, within upper_bound, and come only from the injected rng."""
    dist = make(name, **EXAMPLES[name])
    x = dist.sample(np.random.default_rng(1), 10_000)
    assert (np.int64, (10_000,)) == (x.dtype, x.shape)
    assert int(x.min()) >= 1
    bound = dist.upper_bound()
    assert bound is None or int(x.max()) <= bound
    assert np.array_equal(x, dist.sample(np.random.default_rng(1), 10_000))


@pytest.mark.parametrize(("name", "params"), [
    *sorted(EXAMPLES.items()),
    ("uniform", {"low_tokens": 1, "high_tokens": 1}),
    ("lognormal", {"median_tokens": 1000.0, "sigma": 1.0, "max_tokens": 800}),
    ("lognormal", {"median_tokens": 3.0, "sigma": 1.5, "max_tokens": 40, "min_tokens": 2}),
    ("lognormal", {"median_tokens": 0.4, "sigma": 0.7, "max_tokens": 10}),
    ("geometric", {"mean_tokens": 1.0}),
    ("geometric", {"mean_tokens": 3.5}),
])
def test_mean_within_four_standard_errors(name: str, params: dict[str, object]) -> None:
    """The sample mean is within 4 analytic SE of mean(); the variance within 3 %."""
    dist = make(name, **params)
    x = dist.sample(np.random.default_rng(2), SAMPLES).astype(np.float64)
    se = math.sqrt(dist.variance() / SAMPLES)
    assert abs(x.mean() - dist.mean()) <= max(4 * se, 1e-12)
    assert x.var() == pytest.approx(dist.variance(), rel=0.03, abs=1e-12)


def test_lognormal_mean_includes_the_clip() -> None:
    """A biting clip moves mean() far from the unclipped mean, and samples agree with it."""
    dist = make("lognormal", median_tokens=1000.0, sigma=1.0, max_tokens=800)
    unclipped = 1000.0 * math.exp(0.5)
    assert dist.mean() < 700 < unclipped
    x = dist.sample(np.random.default_rng(3), SAMPLES)
    assert int(x.max()) == 800
    share_at_max = np.mean(x == 800)
    p_max = 1 - 0.5 * math.erfc(-(math.log(799.5) - math.log(1000.0)) / math.sqrt(2))
    assert abs(share_at_max - p_max) < 4 * math.sqrt(p_max * (1 - p_max) / SAMPLES)


def test_lognormal_mean_without_clip_is_the_textbook_mean() -> None:
    """Far from the clip, mean() is median * exp(sigma^2 / 2) (rounding averages out)."""
    dist = make("lognormal", median_tokens=1000.0, sigma=0.5, max_tokens=MAX_TOKENS)
    assert pytest.approx(1000.0 * math.exp(0.125), abs=1e-3) == dist.mean()
    assert pytest.approx((math.exp(0.25) - 1) * 1000.0**2 * math.exp(0.25), rel=1e-6) \
        == dist.variance()


def test_lognormal_degenerate_cases_are_exact() -> None:
    """min = max gives that value; a tiny sigma gives the rounded median."""
    assert make("lognormal", median_tokens=100.0, sigma=1.0, max_tokens=7,
                       min_tokens=7).mean() == 7.0
    assert make("lognormal", median_tokens=10.2, sigma=1e-3, max_tokens=50).mean() == 10.0


@settings(max_examples=60, deadline=None, derandomize=True)
@given(median=st.floats(0.01, 1e6), sigma=st.floats(0.01, 10.0),
       low=st.integers(1, 5000), width=st.integers(0, 20_000))
def test_lognormal_samples_stay_within_the_clip(median: float, sigma: float, low: int,
                                                width: int) -> None:
    """Any valid params: samples in [min, max], pmf sums to 1, mean() in [min, max]."""
    dist = make("lognormal", median_tokens=median, sigma=sigma, min_tokens=low,
                max_tokens=low + width)
    assert isinstance(dist, LognormalLength)
    x = dist.sample(np.random.default_rng(4), 2_000)
    assert low <= int(x.min()) and int(x.max()) <= low + width
    values, probs = dist.pmf()
    assert pytest.approx(1.0, abs=1e-9) == float(probs.sum())
    assert low <= int(values.min()) and int(values.max()) <= low + width
    assert low - 1e-9 <= dist.mean() <= low + width + 1e-9


def test_uniform_includes_both_ends() -> None:
    """low_tokens and high_tokens are both drawn."""
    x = make("uniform", low_tokens=3, high_tokens=5).sample(np.random.default_rng(5), 1_000)
    assert sorted(set(x.tolist())) == [3, 4, 5]


def test_empirical_never_draws_zero_weight_values() -> None:
    """A value with weight 0 never appears; frequencies follow the weights."""
    dist = make("empirical", values_tokens=[1, 2, 3], weights=[1.0, 0.0, 3.0])
    x = dist.sample(np.random.default_rng(6), SAMPLES)
    assert int(np.count_nonzero(x == 2)) == 0
    assert abs(np.mean(x == 3) - 0.75) < 4 * math.sqrt(0.75 * 0.25 / SAMPLES)


def test_geometric_probability_of_one() -> None:
    """P(K = 1) = 1 / mean_tokens, and the support starts at 1."""
    x = make("geometric", mean_tokens=4.0).sample(np.random.default_rng(7), SAMPLES)
    assert int(x.min()) == 1
    assert abs(np.mean(x == 1) - 0.25) < 4 * math.sqrt(0.25 * 0.75 / SAMPLES)


@pytest.mark.parametrize(("name", "params", "field"), [
    ("fixed", {"tokens": 0}, "tokens"),
    ("uniform", {"low_tokens": 5, "high_tokens": 4}, "high_tokens"),
    ("lognormal", {"median_tokens": 10.0, "sigma": -1.0, "max_tokens": 9}, "sigma"),
    ("lognormal", {"median_tokens": 10.0, "sigma": 1.0, "max_tokens": 9, "min_tokens": 10},
     ""),
    ("lognormal", {"median_tokens": 10.0, "sigma": 1.0, "max_tokens": MAX_TOKENS + 1},
     "max_tokens"),
    ("empirical", {"values_tokens": [0, 5]}, "values_tokens"),
    ("empirical", {"values_tokens": [1, 5], "weights": [1.0]}, ""),
    ("empirical", {"values_tokens": [1, 5], "weights": [0.0, 0.0]}, ""),
    ("geometric", {"mean_tokens": 0.5}, "mean_tokens"),
])
def test_bad_params_name_the_field(name: str, params: dict[str, object], field: str) -> None:
    """Invalid parameters raise ScenarioError naming the field path."""
    path = "workload.prompt_tokens.params" + (f".{field}" if field else "")
    with pytest.raises(ScenarioError, match=rf"^{path.replace('.', r'[.]')}:"):
        build_params(lengths, ComponentSpec(name=name, params=params), "workload.prompt_tokens")
