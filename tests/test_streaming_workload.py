"""Chunked generation of synthetic workloads (sim.workload.stream, issue 18): windows in
order with consecutive ids, reproducible per chunk, the same distributions as a whole draw,
and memory bounded by one chunk."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from sim.workload.spec import WorkloadSpec, build_workload
from sim.workload.stream import ChunkSource, collect, iter_chunks


def _spec(arrivals: dict, **extra: object) -> WorkloadSpec:
    return WorkloadSpec.model_validate({
        "arrivals": arrivals,
        "prompt_tokens": {"name": "lognormal",
                          "params": {"median_tokens": 1000, "sigma": 0.6, "max_tokens": 4000}},
        "output_tokens": {"name": "lognormal",
                          "params": {"median_tokens": 250, "sigma": 0.7, "max_tokens": 1000}},
        "prefixes": {"name": "shared_prefix",
                     "params": {"groups": 16, "zipf_s": 1.0, "prefix_tokens": 512,
                                "fraction": 0.5}},
        **extra})


POISSON = {"name": "poisson", "params": {"rate_rps": 50}}
DIURNAL = {"name": "piecewise", "params": {"rates_rps": [10, 40, 100, 20], "period_s": 400}}


@pytest.mark.parametrize("arrivals", [POISSON, DIURNAL])
def test_windows_ids_and_validity(arrivals: dict) -> None:
    chunks = list(iter_chunks(_spec(arrivals), 1000.0, 3, chunk_s=70.0))
    assert [c.index for c in chunks] == list(range(math.ceil(1000 / 70)))
    first = 0
    for c in chunks:
        w = c.workload
        assert c.first_id == first
        first += len(w)
        if len(w):
            assert c.start_s <= w.arrival_s[0] and w.arrival_s[-1] < c.end_s
    assert chunks[-1].end_s == 1000.0
    whole = collect(iter(chunks))
    assert len(whole) == first and np.all(np.diff(whole.arrival_s) >= 0)


def test_reproducible_and_independent_of_earlier_chunks() -> None:
    spec = _spec(POISSON, models={"a": 1.0, "b": 3.0}, sheddable_fraction=0.25)
    a = list(iter_chunks(spec, 500.0, 11, chunk_s=100.0))
    b = list(iter_chunks(spec, 500.0, 11, chunk_s=100.0))
    assert [c.workload.fingerprint() for c in a] == [c.workload.fingerprint() for c in b]
    # chunk 3 of a 500 s run is chunk 3 of a 1000 s run: it depends on its window only
    longer = list(iter_chunks(spec, 1000.0, 11, chunk_s=100.0))
    assert longer[3].workload.fingerprint() == a[3].workload.fingerprint()
    assert set(a[0].workload.extra) == {"model", "sheddable"}
    other = list(iter_chunks(spec, 500.0, 12, chunk_s=100.0))
    assert other[0].workload.fingerprint() != a[0].workload.fingerprint()


@pytest.mark.parametrize("arrivals", [POISSON, DIURNAL])
def test_same_distributions_as_the_whole_draw(arrivals: dict) -> None:
    spec = _spec(arrivals)
    duration = 4000.0
    chunked = collect(iter_chunks(spec, duration, 5, chunk_s=300.0))
    whole = build_workload(spec, duration, 5)
    n, m = len(chunked), len(whole)
    expected = whole.expected_rate_rps * duration
    assert abs(n - expected) < 5 * math.sqrt(expected)
    assert abs(m - expected) < 5 * math.sqrt(expected)
    for name in ("prompt_tokens", "output_tokens"):
        x, y = getattr(chunked, name), getattr(whole, name)
        se = math.sqrt(x.var() / n + y.var() / m)
        assert abs(x.mean() - y.mean()) < 5 * se, name
    assert abs((chunked.prefix_group >= 0).mean() - 0.5) < 0.02
    # arrivals per piece of the diurnal cycle follow the rates
    if arrivals is DIURNAL:
        piece = (chunked.arrival_s % 400 // 100).astype(int)
        counts = np.bincount(piece, minlength=4)
        want = np.array([10, 40, 100, 20]) * 100 * 10
        assert np.all(np.abs(counts - want) < 5 * np.sqrt(want))


def test_chunk_source_skips_empty_windows() -> None:
    spec = _spec({"name": "piecewise", "params": {"rates_rps": [0, 5], "durations_s": [50, 50]}})
    source = ChunkSource(iter_chunks(spec, 300.0, 1, chunk_s=25.0))
    got = []
    while (chunk := source.next_chunk()) is not None:
        got.append(chunk)
    assert got and all(len(c) for c in got)
    assert all(c.start_s % 100 >= 50 for c in got)
    assert source.requests == sum(len(c) for c in got)


def test_refuses_what_it_cannot_stream() -> None:
    with pytest.raises(ValueError, match="mmpp2"):
        next(iter_chunks(_spec({"name": "mmpp2", "params": {
            "low_rps": 1, "high_rps": 5, "mean_low_s": 10, "mean_high_s": 5}}), 10.0, 1))
    with pytest.raises(ValueError, match="sessions"):
        next(iter_chunks(_spec(POISSON, sessions={"name": "multi_turn", "params": {}}),
                         10.0, 1))


def test_memory_bounded_by_one_chunk() -> None:
    """Drawing 1M requests in 10k-request chunks holds about one chunk at a time."""
    spec = _spec({"name": "poisson", "params": {"rate_rps": 1000}})
    tracemalloc.start()
    n = 0
    for chunk in iter_chunks(spec, 1000.0, 2, chunk_s=10.0):
        n += len(chunk)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n > 990_000
    assert peak < 20e6, f"{peak / 1e6:.1f} MB"  # a whole draw holds ~100 bytes per request
