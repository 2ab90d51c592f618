"""The streaming request summary (sim.metrics.streaming) against the exact summary of a run:
counts and SLO attainment exact, means to float rounding, percentiles within the sketch's
stated relative error of the exact value of the same rank (issue 18)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from sim import app
from sim.metrics import streaming
from sim.metrics.summary import QUANTILES
from sim.outcome import COMPLETED
from sim.runner import simulate, workload_for

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run() -> tuple[dict, dict, tuple[float, float], dict]:
    resolved = app.load(REPO / "scenarios" / "smoke.yaml", ["duration_s=120"],
                        strategies=("round_robin",))
    result = simulate(resolved, resolved.strategies[0], 0, workload_for(resolved, 0))
    sc = resolved.scenario
    return result.requests, result.summary, (sc.warmup_s, sc.duration_s), sc.slo.model_dump()


def _stats(requests: dict, window: tuple[float, float], slo: dict, size: int,
           order: np.ndarray | None = None) -> streaming.RequestStats:
    stats = streaming.RequestStats(window, slo)
    n = requests["arrival_s"].size
    rows = np.arange(n) if order is None else order
    for start in range(0, n, size):
        stats.add({k: v[rows[start:start + size]] for k, v in requests.items()})
    return stats


def test_quantile_keys_agree() -> None:
    assert streaming.QUANTILES == QUANTILES


@pytest.mark.parametrize("size", [1, 37, 10_000])
def test_matches_the_exact_summary(run: tuple, size: int) -> None:
    requests, exact, window, slo = run
    got = _stats(requests, window, slo, size).summary()
    assert got["requests"] == exact["requests"]
    assert got["cache"] == {k: v for k, v in exact["cache"].items() if k != "evicted_blocks"}
    assert got["preemptions"] == exact["preemptions"]
    for key, value in exact["slo"]["attainment"].items():
        assert got["slo"]["attainment"][key] == pytest.approx(value, rel=1e-12)
    for key in ("offered_rps", "completed_rps", "goodput_rps"):
        assert got["throughput"][key] == pytest.approx(exact["throughput"][key], rel=1e-12)
    assert got["littles_law"]["W_s"] == pytest.approx(exact["littles_law"]["W_s"], rel=1e-9)
    assert got["littles_law"]["lambda_rps"] == pytest.approx(exact["littles_law"]["lambda_rps"])
    a, b = window
    arrival = requests["arrival_s"]
    done = (arrival >= a) & (arrival < b) & (requests["status"] == COMPLETED)
    exact_values = {"ttft": requests["first_token_s"][done] - arrival[done],
                    "e2e": requests["finish_s"][done] - arrival[done],
                    "queueing": requests["first_scheduled_s"][done] - arrival[done]}
    alpha = 0.005
    for key, values in exact_values.items():
        xs = np.sort(values)
        dist = got["latency_s"][key]
        assert dist["max"] == exact["latency_s"][key]["max"]
        assert dist["mean"] == pytest.approx(exact["latency_s"][key]["mean"], rel=1e-9)
        for name, q in QUANTILES.items():
            rank = q * (xs.size - 1)
            lo, hi = xs[math.floor(rank)], xs[math.ceil(rank)]
            assert lo * (1 - alpha) <= dist[name] <= hi * (1 + alpha), (key, name)
            e = exact["latency_s"][key][name]
            assert lo <= e <= hi  # what summarize reports lies between the same two values


def test_merge_of_shards_equals_one_pass(run: tuple) -> None:
    requests, _, window, slo = run
    n = requests["arrival_s"].size
    order = np.random.default_rng(3).permutation(n)
    whole = _stats(requests, window, slo, 50)
    shards = [streaming.RequestStats(window, slo) for _ in range(3)]
    for i, part in enumerate(np.array_split(order, 3)):
        shards[i].add({k: v[part] for k, v in requests.items()})
    merged = shards[0]
    merged.merge(shards[1])
    merged.merge(shards[2])
    a, b = merged.summary(), whole.summary()
    assert a["requests"] == b["requests"] and a["slo"] == b["slo"]
    for key in streaming.LATENCIES:
        for name in QUANTILES:
            assert a["latency_s"][key][name] == b["latency_s"][key][name]
    with pytest.raises(ValueError):
        merged.merge(streaming.RequestStats((0.0, 1.0), slo))
