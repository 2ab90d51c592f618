"""Report statistics on hand-made numbers: exact means, t intervals and paired differences."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from sim.report.stats import (
    METRICS,
    Metric,
    cv_over_time,
    grades,
    load_sweep,
    mean_ci,
    metric_table,
    paired_difference,
    rate_over_time,
)

# Student's t 97.5 % quantiles in closed form: 1 degree of freedom (Cauchy) and 2
T975_1 = math.tan(math.pi * (0.975 - 0.5))  # 12.7062...
T975_2 = (2 * 0.975 - 1) / math.sqrt(2 * 0.975 * 0.025)  # 4.3027...


def test_mean_ci_of_three_values() -> None:
    """mean 2, s 1, half-width t(0.975, 2) / sqrt(3)."""
    e = mean_ci([1.0, 2.0, 3.0])
    assert e.mean == 2.0 and e.n == 3
    assert e.half_width == pytest.approx(T975_2 / math.sqrt(3), rel=1e-12)
    assert (e.low, e.high) == pytest.approx((2 - T975_2 / math.sqrt(3), 2 + T975_2 / 3 ** .5))


def test_mean_ci_of_two_values_and_degenerate_cases() -> None:
    """Two values use t with 1 degree of freedom; one value has no interval; NaN is ignored."""
    e = mean_ci([10.0, 14.0, math.nan])
    assert e.mean == 12.0 and e.n == 2
    assert e.half_width == pytest.approx(T975_1 * math.sqrt(8) / math.sqrt(2), rel=1e-12)
    one = mean_ci([5.0])
    assert one.mean == 5.0 and one.n == 1 and math.isnan(one.half_width) and not one.has_ci
    none = mean_ci([])
    assert none.n == 0 and math.isnan(none.mean)


def test_paired_difference_uses_common_seeds() -> None:
    """Differences per seed (seed 4 only in the baseline is ignored): [1, 2, 1]."""
    d = paired_difference({1: 10.0, 2: 12.0, 3: 11.0}, {1: 9.0, 2: 10.0, 3: 10.0, 4: 99.0})
    assert d.n == 3
    assert d.mean == pytest.approx(4 / 3, rel=1e-12)
    # s = sqrt(1/3): half-width = t * sqrt(1/3) / sqrt(3) = t / 3
    assert d.half_width == pytest.approx(T975_2 / 3, rel=1e-12)
    assert d.low == pytest.approx(4 / 3 - T975_2 / 3)
    assert not d.is_significant  # the interval [-0.10, 2.77] holds zero


def test_pairing_is_tighter_than_independent_intervals() -> None:
    """A constant offset between seeds gives a zero-width paired interval."""
    base = {1: 1.0, 2: 5.0, 3: 9.0}
    d = paired_difference({k: v + 0.5 for k, v in base.items()}, base)
    assert d.mean == pytest.approx(0.5) and d.half_width == pytest.approx(0.0, abs=1e-12)
    assert d.is_significant
    assert mean_ci(list(base.values())).half_width > 1.0


def _summaries() -> pd.DataFrame:
    rows = []
    for strategy, ttft in (("a", [0.10, 0.20, 0.30]), ("b", [0.05, 0.15, 0.25])):
        for seed, value in zip((1, 2, 3), ttft, strict=True):
            rows.append({"strategy": strategy, "seed": seed, "scenario": "s",
                         "result_set": "s", "latency_s.ttft.p99": value,
                         "throughput.goodput_rps": 10.0 + seed,
                         "throughput.offered_rps": 12.0,
                         "utilization.grade.grade": "Good" if seed < 3 else "Fair"})
    return pd.DataFrame(rows)


def test_metric_table_scales_pairs_and_picks_the_best() -> None:
    """TTFT in ms: b is 50 ms better on every seed; goodput ties (no best)."""
    ttft = Metric("latency_s.ttft.p99", "TTFT p99", "ms", 1000.0, "lower")
    good = Metric("throughput.goodput_rps", "goodput", "req/s", 1.0, "higher")
    rows = metric_table(_summaries(), ["a", "b"], "a", [ttft, good])
    assert rows[0].values["a"].mean == pytest.approx(200.0)
    assert rows[0].values["a"].half_width == pytest.approx(T975_2 * 100 / math.sqrt(3))
    assert rows[0].diffs["b"].mean == pytest.approx(-50.0)
    assert rows[0].diffs["b"].half_width == pytest.approx(0.0, abs=1e-9)
    assert rows[0].best == ("b",)
    assert rows[1].best == () and rows[1].diffs["b"].mean == 0.0
    assert "a" not in rows[0].diffs


def test_catalogue_covers_every_sense_of_load() -> None:
    """The table has CV and imbalance for the five senses and the other required metrics."""
    keys = {m.key for m in METRICS}
    for sense in ("busy", "token_share", "kv_occupancy", "batch_occupancy", "mfu"):
        assert {f"utilization.{sense}.cv", f"utilization.{sense}.imbalance"} <= keys
    assert {"latency_s.tpot.p50", "latency_s.e2e.p99", "slo.attainment.all", "cache.hit_rate",
            "preemptions.total", "requests.rejected", "throughput.goodput_rps"} <= keys


def test_grades_join_differing_replications() -> None:
    """Grades that differ between seeds are listed."""
    assert grades(_summaries(), ["a"]) == {"a": "Fair/Good"}


def test_load_sweep_needs_two_different_loads() -> None:
    """Two result sets at 12 and 24 req/s form a sweep; equal loads do not."""
    one = _summaries()
    two = one.assign(result_set="t", **{"throughput.offered_rps": 24.0})
    sweep = load_sweep(pd.concat([one, two]))
    assert list(sweep["offered_rps"]) == [12.0, 12.0, 24.0, 24.0]
    assert sweep.loc[0, "ttft_p99_ms"] == pytest.approx(200.0)
    assert load_sweep(pd.concat([one, one.assign(result_set="t")])).empty


def test_cv_over_time_is_population_cv_per_bucket() -> None:
    """Loads 1 and 3 -> CV 0.5; an idle bucket has CV 0."""
    load = pd.DataFrame({"strategy": ["a"] * 4, "node": [0, 1, 0, 1],
                         "t_s": [0.0, 0.0, 5.0, 5.0], "load": [1.0, 3.0, 0.0, 0.0]})
    cv = cv_over_time(load)
    assert list(cv["cv"]) == [0.5, 0.0]


def test_rate_over_time_counts_per_bucket() -> None:
    """Three events in [0, 2) and one in [2, 4) with 2 s buckets: 1.5 and 0.5 per second."""
    rate = rate_over_time(pd.Series([0.1, 0.5, 1.9, 3.0]), pd.Series(["a"] * 4), 2.0, 4.0)
    assert list(rate["value"]) == [1.5, 0.5]
