"""Arrival processes: contract, and empirical moments against the analytic ones."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim.errors import ScenarioError
from sim.spec import ComponentSpec, build_params
from sim.workload.arrivals import ArrivalProcess, arrivals

EXAMPLES: dict[str, dict[str, object]] = {
    "poisson": {"rate_rps": 50.0},
    "gamma": {"rate_rps": 20.0, "cv": 2.5},
    "mmpp2": {"low_rps": 2.0, "high_rps": 20.0, "mean_low_s": 4.0, "mean_high_s": 1.0},
    "piecewise": {"rates_rps": [1.0, 5.0, 0.0, 10.0], "period_s": 40.0},
    "clustered": {"base": {"name": "poisson", "params": {"rate_rps": 10.0}},
                  "sizes": {"name": "empirical", "params": {"values_tokens": [1, 4],
                                                            "weights": [3.0, 1.0]}},
                  "spread_s": 0.01},
}


def make(name: str, **params: object) -> ArrivalProcess:
    """Build a registered arrival process from raw params."""
    cls, p = build_params(arrivals, ComponentSpec(name=name, params=params), "arrivals")
    process: ArrivalProcess = cls(p)
    return process


def rng(seed: int = 0) -> np.random.Generator:
    """A fixed-seed generator for tests."""
    return np.random.default_rng(seed)


def batch_se(values: np.ndarray, statistic, batches: int = 20) -> tuple[float, float]:
    """Return (statistic over all values, batch-means standard error of it)."""
    parts = np.array_split(values, batches)
    stats = np.array([statistic(p) for p in parts])
    return float(statistic(values)), float(stats.std(ddof=1) / math.sqrt(batches))


def cv(x: np.ndarray) -> float:
    """Sample coefficient of variation."""
    return float(x.std(ddof=1) / x.mean())


def test_every_registered_process_has_an_example() -> None:
    """Each registered name is covered by the contract tests below."""
    assert sorted(EXAMPLES) == arrivals.names()


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_sample_contract(name: str) -> None:
    """Samples are sorted float64 times in [0, duration); duration 0 gives none."""
    process = make(name, **EXAMPLES[name])
    times = process.sample(rng(1), 300.0)
    assert np.float64 == times.dtype
    assert bool(np.all(np.diff(times) >= 0)) and times[0] >= 0 and times[-1] < 300.0
    assert process.sample(rng(1), 0.0).shape[0] == 0
    with pytest.raises(ValueError, match="duration_s"):
        process.sample(rng(1), -1.0)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_same_rng_state_same_times(name: str) -> None:
    """A process draws only from the injected generator."""
    process = make(name, **EXAMPLES[name])
    assert np.array_equal(process.sample(rng(5), 100.0), process.sample(rng(5), 100.0))


@pytest.mark.parametrize(("name", "params", "duration_s"), [
    ("poisson", EXAMPLES["poisson"], 2_000.0),
    ("gamma", {"rate_rps": 20.0, "cv": 0.5}, 5_000.0),
    ("gamma", EXAMPLES["gamma"], 5_000.0),
    ("mmpp2", EXAMPLES["mmpp2"], 40_000.0),
    ("mmpp2", {"low_rps": 0.0, "high_rps": 30.0, "mean_low_s": 2.0, "mean_high_s": 2.0},
     20_000.0),
    ("piecewise", EXAMPLES["piecewise"], 20_000.0),
])
def test_mean_rate_within_four_standard_errors(name: str, params: dict[str, object],
                                               duration_s: float) -> None:
    """N(0, T) is within 4 SE of rate * T, SE from the analytic index of dispersion."""
    process = make(name, **params)
    count = process.sample(rng(11), duration_s).shape[0]
    expected = process.expected_count(duration_s)
    assert expected == pytest.approx(process.mean_rate_rps * duration_s)
    se = math.sqrt(process.index_of_dispersion * expected)
    assert abs(count - expected) < 4 * se


@pytest.mark.parametrize(("name", "params", "duration_s"), [
    ("poisson", EXAMPLES["poisson"], 2_000.0),
    ("gamma", {"rate_rps": 20.0, "cv": 0.5}, 5_000.0),
    ("gamma", EXAMPLES["gamma"], 5_000.0),
    ("mmpp2", EXAMPLES["mmpp2"], 40_000.0),
])
def test_gap_moments_within_four_standard_errors(name: str, params: dict[str, object],
                                                 duration_s: float) -> None:
    """The mean gap is 1/rate and the gap CV matches interarrival_cv (batch means)."""
    process = make(name, **params)
    gaps = np.diff(process.sample(rng(12), duration_s))
    mean_gap, mean_se = batch_se(gaps, np.mean)
    assert abs(mean_gap - 1.0 / process.mean_rate_rps) < 4 * mean_se
    gap_cv, cv_se = batch_se(gaps, cv)
    assert process.interarrival_cv is not None
    assert abs(gap_cv - process.interarrival_cv) < 4 * cv_se


@pytest.mark.parametrize(("name", "params", "window_s", "relax_rate_per_s"), [
    ("poisson", EXAMPLES["poisson"], 4.0, 0.0),
    ("gamma", {"rate_rps": 20.0, "cv": 0.5}, 10.0, 0.0),
    ("gamma", EXAMPLES["gamma"], 10.0, 0.0),
    ("mmpp2", EXAMPLES["mmpp2"], 40.0, 1.25),
])
def test_index_of_dispersion(name: str, params: dict[str, object], window_s: float,
                             relax_rate_per_s: float) -> None:
    """Var/mean of window counts matches the IDC (MMPP: with its finite-window factor)."""
    process = make(name, **params)
    windows = 1_000
    times = process.sample(rng(13), windows * window_s)
    counts = np.bincount((times // window_s).astype(np.int64), minlength=windows)
    idc = counts.var(ddof=1) / counts.mean()
    expected = process.index_of_dispersion
    if relax_rate_per_s:  # IDC(t) = 1 + (IDC - 1) (1 - (1 - e^-at) / (at)), a = r1 + r2
        at = relax_rate_per_s * window_s
        expected = 1 + (expected - 1) * (1 - (1 - math.exp(-at)) / at)
    assert abs(idc / expected - 1) < 4 * math.sqrt(2 / (windows - 1))


def test_poisson_gaps_are_not_truncated() -> None:
    """The share of gaps above 3x the mean is e^-3 (Vidur's generator cut them off)."""
    gaps = np.diff(make("poisson", rate_rps=50.0).sample(rng(14), 2_000.0))
    share = np.mean(gaps > 3 * gaps.mean())
    se = math.sqrt(math.exp(-3) * (1 - math.exp(-3)) / gaps.shape[0])
    assert abs(share - math.exp(-3)) < 4 * se


def test_mmpp2_moments_reduce_to_poisson() -> None:
    """With equal rates the MMPP2 is Poisson: IDC 1 and gap CV 1."""
    process = make("mmpp2", low_rps=5.0, high_rps=5.0, mean_low_s=3.0, mean_high_s=1.0)
    assert (process.mean_rate_rps, process.index_of_dispersion) == (5.0, 1.0)
    assert process.interarrival_cv == pytest.approx(1.0)


def test_mmpp2_closed_forms() -> None:
    """Mean rate and IDC match the Fischer & Meier-Hellstern formulas by hand."""
    process = make("mmpp2", **EXAMPLES["mmpp2"])
    assert pytest.approx(5.6) == process.mean_rate_rps
    # 1 + 2 (20 - 2)^2 (1/4)(1) / ((5/4)^2 (2 * 1 + 20 / 4))
    assert pytest.approx(1 + 2 * 324 * 0.25 / (1.5625 * 7)) == process.index_of_dispersion


def test_piecewise_rate_of_each_piece() -> None:
    """Arrivals in each piece of the period match rate_i * duration_i * periods."""
    process = make("piecewise", rates_rps=[1.0, 5.0, 0.0, 10.0], durations_s=[10.0, 5.0, 5.0,
                                                                               20.0])
    periods = 500
    phase = process.sample(rng(15), periods * 40.0) % 40.0
    counts = np.histogram(phase, bins=[0.0, 10.0, 15.0, 20.0, 40.0])[0]
    expected = np.array([10.0, 25.0, 0.0, 200.0]) * periods
    assert counts[2] == 0
    assert bool(np.all(np.abs(counts - expected) <= 4 * np.sqrt(expected)))
    assert pytest.approx(235.0 / 40.0) == process.mean_rate_rps


@pytest.mark.parametrize(("duration_s", "expected_per_run"), [(12.0, 50.0), (17.0, 70.0)])
def test_piecewise_partial_period(duration_s: float, expected_per_run: float) -> None:
    """E[N(0, T)] integrates the rate over a partial last period."""
    process = make("piecewise", rates_rps=[0.0, 10.0], period_s=10.0)
    assert pytest.approx(expected_per_run) == process.expected_count(duration_s)
    runs = 200
    generator = rng(16)
    total = sum(process.sample(generator, duration_s).shape[0] for _ in range(runs))
    assert abs(total - runs * expected_per_run) < 4 * math.sqrt(runs * expected_per_run)


@pytest.mark.parametrize(("name", "params", "field"), [
    ("poisson", {"rate_rps": -1.0}, "rate_rps"),
    ("poisson", {"rate_rps": 1.0, "rate": 1.0}, "rate"),
    ("gamma", {"rate_rps": 1.0, "cv": 0.0}, "cv"),
    ("mmpp2", {"low_rps": 5.0, "high_rps": 1.0, "mean_low_s": 1.0, "mean_high_s": 1.0},
     "high_rps"),
    ("piecewise", {"rates_rps": [0.0, 0.0], "period_s": 1.0}, "rates_rps"),
    ("piecewise", {"rates_rps": [1.0], "period_s": 1.0, "durations_s": [1.0]}, "params"),
    ("piecewise", {"rates_rps": [1.0, 2.0], "durations_s": [1.0]}, "params"),
    ("piecewise", {"rates_rps": [1.0], "durations_s": [-1.0]}, "durations_s"),
])
def test_bad_params_name_the_field(name: str, params: dict[str, object], field: str) -> None:
    """Invalid parameters raise ScenarioError naming the field path."""
    with pytest.raises(ScenarioError, match=rf"^workload\.arrivals\.params(\.{field})?:"):
        build_params(arrivals, ComponentSpec(name=name, params=params), "workload.arrivals")
