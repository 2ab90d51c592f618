"""Scoring maths of ``sim.fidelity.score`` against hand computations, and the overload rule
on constructed queues (growing, stable, saturated)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim.fidelity.replay import Prediction
from sim.fidelity.run import EngineConfig, MeasuredRun
from sim.fidelity.score import (
    aggregate,
    in_system,
    mape,
    overload_verdict,
    pct_error,
    score_run,
    summary_stats,
)
from sim.outcome import COMPLETED, UNFINISHED


def test_summary_stats_by_hand() -> None:
    s = summary_stats(np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, np.nan], dtype=float))
    # linear interpolation between order statistics: p90 at rank 8.1, p99 at rank 8.91
    assert s == pytest.approx({"mean": 5.5, "p50": 5.5, "p90": 9.1, "p99": 9.91})
    assert all(math.isnan(v) for v in summary_stats(np.array([np.nan])).values())


def test_errors_by_hand() -> None:
    assert pct_error(110.0, 100.0) == pytest.approx(10.0)
    assert pct_error(90.0, 100.0) == pytest.approx(-10.0)
    assert math.isnan(pct_error(1.0, 0.0)) and math.isnan(pct_error(math.nan, 1.0))
    # |1.1-1|/1 = 10 %, |1.8-2|/2 = 10 %, |3-6|/6 = 50 % -> mean 23.33 %; NaN pair ignored
    assert mape(np.array([1.1, 1.8, 3.0, np.nan]),
                np.array([1.0, 2.0, 6.0, 1.0])) == pytest.approx(70 / 3)


def _run(ttft: list[float], e2e: list[float], out: list[int], ok: list[bool]) -> MeasuredRun:
    n = len(ttft)
    t, e, o = np.array(ttft), np.array(e2e), np.array(out)
    return MeasuredRun("hand", "hand.csv", "table", np.arange(n, dtype=float),
                       np.full(n, 100), o, t, e, (e - t) / (o - 1), np.array(ok),
                       EngineConfig(max_num_seqs=8))


def test_score_run_by_hand() -> None:
    run = _run([0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 3.0, 9.0], [11, 11, 11, 11],
               [True, True, True, False])
    pred = Prediction(ttft_s=np.array([0.2, 0.2, 0.3, np.nan]),
                      e2e_s=np.array([1.5, 2.0, 3.0, np.nan]),
                      itl_s=np.array([0.13, 0.18, 0.27, np.nan]),
                      status=np.array([COMPLETED, COMPLETED, UNFINISHED, -1]),
                      wall_s=0.0, events=0, scenario={})
    s = score_run(run, pred)
    # scored: rows 0 and 1 (row 2 unfinished in simlb, row 3 failed in the run)
    assert (s.rows, s.failed, s.scored) == (4, 1, 2)
    assert s.measured["e2e"]["mean"] == pytest.approx(1.5)
    assert s.predicted["e2e"]["mean"] == pytest.approx(1.75)
    assert s.error["e2e"]["mean"] == pytest.approx(100 * 0.25 / 1.5)
    assert s.error["ttft"]["mean"] == pytest.approx(100 * (0.2 - 0.15) / 0.15)
    # measured ITLs 0.09, 0.18; predicted 0.13, 0.18 -> means 0.135 vs 0.155
    assert s.error["itl"]["mean"] == pytest.approx(100 * 0.02 / 0.135)
    assert s.mape["e2e"] == pytest.approx(25.0)   # (50 % + 0 %) / 2
    assert s.mape["ttft"] == pytest.approx(50.0)  # (100 % + 0 %) / 2
    assert any("not completed by simlb" in n for n in s.notes)


def test_aggregate_medians() -> None:
    run = _run([0.1] * 3, [1.0] * 3, [11] * 3, [True] * 3)
    scores = []
    for factor in (1.1, 0.8, 1.05):
        pred = Prediction(np.full(3, 0.1 * factor), np.full(3, factor), np.full(3, 0.09 * factor),
                          np.full(3, COMPLETED), 0.0, 0, {})
        scores.append(score_run(run, pred))
    agg = aggregate(scores)
    e2e = agg["error"]["e2e"]["mean"]
    assert e2e["median_abs"] == pytest.approx(10.0)    # |+10|, |-20|, |+5|
    assert e2e["median_signed"] == pytest.approx(5.0)  # +10, -20, +5
    assert e2e["runs"] == 3
    assert agg["mape"]["e2e"] == pytest.approx(10.0)
    assert agg["overload_disagreements"] == []


def _fifo(arrivals: np.ndarray, service_s: float) -> np.ndarray:
    """E2E of a single FIFO server with a constant service time."""
    free, out = 0.0, []
    for a in arrivals:
        free = max(free, a) + service_s
        out.append(free - a)
    return np.array(out)


def test_overload_verdict_growing_queue() -> None:
    arrivals = np.arange(600, dtype=float)  # 1 req/s for 10 minutes
    over = overload_verdict(arrivals, _fifo(arrivals, 1.2))  # serves 0.83 req/s
    assert over.overloaded and over.growing and not over.saturated
    assert over.slope == pytest.approx(0.2, rel=0.01)  # 1 - mu/lambda


def test_overload_verdict_stable_queue() -> None:
    arrivals = np.arange(600, dtype=float)
    rng = np.random.default_rng(1)
    stable = overload_verdict(arrivals, _fifo(arrivals, 0.8) + rng.exponential(0.1, 600))
    assert not stable.overloaded and not stable.growing
    assert abs(stable.slope) < 0.01
    # a late burst on a stable server does not count: the growth is small next to the latency
    e2e = _fifo(arrivals, 0.8)
    e2e[-20:] += np.linspace(0, 0.4, 20)
    assert not overload_verdict(arrivals, e2e).overloaded


def test_overload_verdict_saturated_closed_loop() -> None:
    # a client capping 256 in flight: flat but high latency, the system full
    arrivals = np.arange(6000) * 0.1
    e2e = np.full(6000, 25.6)
    assert in_system(arrivals, e2e, np.array([300.0]))[0] == pytest.approx(257)
    full = overload_verdict(arrivals, e2e, max_num_seqs=256)
    assert full.overloaded and full.saturated and not full.growing
    assert not overload_verdict(arrivals, e2e, max_num_seqs=None).overloaded
    assert not overload_verdict(arrivals, np.full(6000, 2.0), max_num_seqs=256).overloaded


def test_overload_verdict_too_few() -> None:
    v = overload_verdict(np.arange(5.0), np.ones(5))
    assert not v.overloaded and math.isnan(v.slope)
