"""Shared prefixes: Zipf group popularity, carrying fraction and the prepended segment layout."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import chdtrc

from sim.errors import ScenarioError
from sim.spec import ComponentSpec, build_params
from sim.workload.prefixes import (
    SharedPrefix,
    concat_ranges,
    prefix_segments,
    prefixes,
    take_requests,
)
from sim.workload.spec import WorkloadSpec, build_workload

SAMPLES = 200_000


def make(**params: object) -> SharedPrefix:
    """Build a shared_prefix component from raw params."""
    cls, p = build_params(prefixes, ComponentSpec(name="shared_prefix", params=params), "p")
    component: SharedPrefix = cls(p)
    return component


def test_group_probabilities_follow_zipf() -> None:
    """Group g has probability proportional to (g + 1)^-s; s = 0 is uniform."""
    probs = make(groups=4, zipf_s=2.0, prefix_tokens=8).group_probabilities()
    weights = np.array([1.0, 1 / 4, 1 / 9, 1 / 16])
    assert np.allclose(weights / weights.sum(), probs)
    assert np.allclose(np.full(5, 0.2), make(groups=5, prefix_tokens=8).group_probabilities())


def test_group_frequencies_chi_square() -> None:
    """Sampled group counts fit the Zipf probabilities (chi-square, fixed seed)."""
    component = make(groups=20, zipf_s=1.1, prefix_tokens=64, fraction=0.6)
    group = component.sample(np.random.default_rng(1), SAMPLES)
    carried = group[group >= 0]
    observed = np.bincount(carried, minlength=20)
    expected = component.group_probabilities() * carried.shape[0]
    statistic = float(((observed - expected) ** 2 / expected).sum())
    assert chdtrc(20 - 1, statistic) > 1e-4
    share = carried.shape[0] / SAMPLES
    assert abs(share - 0.6) < 4 * math.sqrt(0.6 * 0.4 / SAMPLES)


def test_mean_extra_tokens() -> None:
    """A workload's mean prompt is the sampled mean plus fraction * prefix_tokens."""
    spec = WorkloadSpec.model_validate({
        "arrivals": {"name": "poisson", "params": {"rate_rps": 100.0}},
        "prompt_tokens": {"name": "uniform", "params": {"low_tokens": 1, "high_tokens": 99}},
        "output_tokens": {"name": "fixed", "params": {"tokens": 1}},
        "prefixes": {"name": "shared_prefix",
                     "params": {"groups": 3, "prefix_tokens": 500, "fraction": 0.3}}})
    w = build_workload(spec, 1_000.0, seed=2)
    component = make(groups=3, prefix_tokens=500, fraction=0.3)
    assert component.mean_extra_tokens() == 150.0
    variance = (99**2 - 1) / 12 + 500**2 * 0.3 * 0.7
    assert abs(w.prompt_tokens.mean() - 50.0 - 150.0) < 4 * math.sqrt(variance / len(w))


def test_prefix_is_prepended_as_its_own_segment() -> None:
    """A carrier's segments are [group key, prefix length] then [-1, own length]."""
    seg_ptr, seg_key, seg_len = prefix_segments(np.array([2, -1, 0]), np.array([5, 6, 7]), 100)
    assert seg_ptr.tolist() == [0, 2, 3, 5]
    assert seg_key.tolist() == [2, -1, -1, 0, -1]
    assert seg_len.tolist() == [100, 5, 6, 100, 7]


def test_concat_ranges_and_take_requests() -> None:
    """The CSR helpers gather ranges and reorder requests with their segments."""
    assert concat_ranges(np.zeros(0, np.int64), np.zeros(0, np.int64)).tolist() == []
    seg_ptr = np.array([0, 2, 3, 6])
    new_ptr, index = take_requests(seg_ptr, np.array([2, 0, 1]))
    assert new_ptr.tolist() == [0, 3, 5, 6]
    assert index.tolist() == [3, 4, 5, 0, 1, 2]


def test_no_prefix_when_fraction_is_zero() -> None:
    """fraction 0 gives no carriers."""
    group = make(groups=3, prefix_tokens=8, fraction=0.0).sample(np.random.default_rng(3), 100)
    assert bool(np.all(group == -1))


@pytest.mark.parametrize(("params", "field"), [
    ({"groups": 0, "prefix_tokens": 8}, "groups"),
    ({"groups": 2, "prefix_tokens": 8, "zipf_s": -1.0}, "zipf_s"),
    ({"groups": 2, "prefix_tokens": 8, "fraction": 1.5}, "fraction"),
    ({"groups": 2}, "prefix_tokens"),
])
def test_bad_params_name_the_field(params: dict[str, object], field: str) -> None:
    """Invalid parameters raise ScenarioError naming the field path."""
    with pytest.raises(ScenarioError, match=rf"^workload\.prefixes\.params\.{field}:"):
        build_params(prefixes, ComponentSpec(name="shared_prefix", params=params),
                     "workload.prefixes")
