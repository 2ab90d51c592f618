"""Runs in bounded memory (sim.runner_stream, issue 18): requests pulled chunk by chunk into a
paged table and released page by page give the same per-request records as a whole run over
the same requests, the same summary up to float summation order and the sketches' error, and
a resident table that does not grow with the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from sim import app
from sim.metrics.herding import HerdingStream, herding
from sim.model.paged import PagedColumn, ReleasedError
from sim.model.requests import RequestTable
from sim.model.requests_stream import StreamedRequestTable
from sim.outcome import COMPLETED, STATUS_NAMES
from sim.runner import active_per_node, simulate
from sim.runner_stream import ApiLatencyStream, StreamingError, simulate_streamed
from sim.workload.replay import node_limits
from sim.workload.stream import ChunkSource, collect, iter_chunks

REPO = Path(__file__).resolve().parents[1]
POISSON = "workload.arrivals={name: poisson, params: {rate_rps: %s}}"


# -- paged columns ------------------------------------------------------------------------------

def test_paged_column_reads_and_writes_across_pages() -> None:
    col = PagedColumn(bits=3)
    col.extend(list(range(5)))
    col.extend(list(range(5, 21)))
    assert len(col) == 21 and [col[i] for i in range(21)] == list(range(21))
    assert [col.entries(k) for k in range(4)] == [8, 8, 5, 0]
    col[9] = -1
    assert col[9] == -1 and col.page(1)[1] == -1


def test_typed_paged_column_grows_with_its_fill() -> None:
    col = PagedColumn("d", float("nan"), bits=2)
    col.grow(6)
    col[5] = 2.5
    assert np.isnan(col[0]) and col[5] == 2.5
    assert np.frombuffer(col.page(1), dtype=np.float64)[1] == 2.5


def test_released_pages_raise_instead_of_answering() -> None:
    col = PagedColumn(bits=2)
    col.extend(list(range(10)))
    col.release_below(9)  # pages 0 and 1 lie wholly below 9; page 2 does not
    with pytest.raises(ReleasedError, match="entry 5 was read"):
        col[5]
    with pytest.raises(ReleasedError, match="entry 1 was written"):
        col[1] = 0
    assert col[8] == 8 and col[9] == 9


# -- the streamed table -------------------------------------------------------------------------

def _chunks(resolved: app.ResolvedScenario, chunk_s: float = 10.0):  # type: ignore[name-defined]
    sc = resolved.scenario
    return iter_chunks(sc.workload, sc.duration_s, sc.seed, chunk_s=chunk_s,
                       limits=node_limits(resolved.node_specs))


def _load(name: str, rate: float, *extra: str, duration: float = 60.0):
    return app.load(REPO / "scenarios" / name,
                    [POISSON % rate, f"duration_s={duration}", "warmup_s=5", *extra],
                    limits=False)


def test_streamed_table_reads_as_the_whole_table() -> None:
    resolved = _load("smoke.yaml", 20)  # shared prefixes: multi-segment prompts
    whole = RequestTable(collect(_chunks(resolved)))
    streamed = StreamedRequestTable(ChunkSource(_chunks(resolved)), page_bits=5)
    while streamed.pull():
        pass
    assert streamed.n == whole.n > 500
    for rid in range(whole.n):
        for name in ("arrival_s", "prompt_tokens", "output_tokens", "max_output_tokens",
                     "prefix_group", "request_tokens", "model", "sheddable"):
            assert getattr(streamed, name)[rid] == getattr(whole, name)[rid]
        assert streamed.prompt_spans(rid, 16) == whole.prompt_spans(rid, 16)
        assert streamed.own_spans(rid, 16, 700) == whole.own_spans(rid, 16, 700)


def test_only_final_pages_are_released() -> None:
    resolved = _load("smoke.yaml", 20)
    table = StreamedRequestTable(ChunkSource(_chunks(resolved)), page_bits=4)
    table.pull()
    assert list(table.release_final()) == []  # nothing final yet
    for rid in range(20):
        table.status[rid] = COMPLETED
    pages = list(table.release_final())
    assert [p["request_id"].tolist() for p in pages] == [list(range(16))]
    assert table.released == 16
    with pytest.raises(ReleasedError):
        table.prompt_tokens[3]
    # a live attempt (a hedge's loser still running) holds its page back
    for rid in range(16, 32):
        table.status[rid] = COMPLETED
    assert list(table.release_final(lambda first, end: first <= 20 < end)) == []


# -- streamed runs against whole runs -----------------------------------------------------------

def _both(resolved, strategy: int = 0, tmp: Path | None = None, **kwargs):
    choice = resolved.strategies[strategy]
    whole = simulate(resolved, choice, 0, collect(_chunks(resolved)), fold_rows=500)
    path = None if tmp is None else tmp / "requests.parquet"
    source = ChunkSource(_chunks(resolved))
    streamed = simulate_streamed(resolved, choice, 0, source, requests_path=path,
                                 fold_rows=500, page_bits=6, **kwargs)
    return whole, streamed, path


def _same_records(whole: dict[str, np.ndarray], path: Path) -> None:
    got = pq.read_table(path).to_pydict()
    assert list(got) == list(whole)
    for name, expected in whole.items():
        if name == "status":
            expected = np.array([STATUS_NAMES[c] for c in expected])
            assert (np.array(got[name]) == expected).all()
        else:
            assert np.array_equal(np.array(got[name]), expected, equal_nan=True), name


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _latencies(req: dict[str, np.ndarray], window: tuple[float, float]) -> dict:
    """Each latency of the measured completed requests, sorted (the summary's definitions)."""
    a, b = window
    done = (req["arrival_s"] >= a) & (req["arrival_s"] < b) & (req["status"] == COMPLETED)
    arrival, out = req["arrival_s"][done], req["output_tokens"][done]
    first, finish = req["first_token_s"][done], req["finish_s"][done]
    multi = out > 1
    return {k: np.sort(v) for k, v in {
        "ttft": first - arrival, "e2e": finish - arrival,
        "queueing": req["first_scheduled_s"][done] - arrival,
        "tpot": (finish[multi] - first[multi]) / (out[multi] - 1)}.items()}


def _same_summary(whole, streamed, alpha: float = 0.005) -> None:
    """Counts, rates and means equal up to float summation order; each latency percentile
    within ``alpha`` of the exact order statistics around its rank."""
    a, b = _flat(whole.summary), _flat(streamed.summary)
    assert set(b) - set(a) == {"sketch.latency_relative_error", "sketch.note"}
    assert set(a) == set(b) - {"sketch.latency_relative_error", "sketch.note"}
    exact = _latencies(whole.requests, tuple(whole.summary["model"]["window_s"]))
    quantiles = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99, "p99.9": 0.999}
    for key, x in a.items():
        y = b[key]
        parts = key.split(".", 2)
        if parts[0] == "latency_s" and parts[1] != "itl" and parts[2] in quantiles \
                and x is not None:
            values = exact[parts[1]]
            rank = quantiles[parts[2]] * (values.size - 1)
            lo, hi = values[int(np.floor(rank))], values[int(np.ceil(rank))]
            assert lo * (1 - alpha) - 1e-12 <= y <= hi * (1 + alpha) + 1e-12, key
        elif isinstance(x, float):
            assert y == pytest.approx(x, rel=1e-9, abs=1e-12, nan_ok=True), key
        elif isinstance(x, list) and x and isinstance(x[0], float):
            assert np.allclose(y, x, rtol=1e-9, atol=1e-12, equal_nan=True), key
        else:
            assert y == x, key


def test_streamed_run_equals_whole_run(tmp_path: Path) -> None:
    resolved = _load("smoke.yaml", 15)
    whole, streamed, path = _both(resolved, tmp=tmp_path)
    assert path is not None
    _same_records(whole.requests, path)
    _same_summary(whole, streamed)
    assert streamed.requests == {}
    assert streamed.summary["input"]["replayed"] == whole.requests["arrival_s"].size
    np.testing.assert_allclose(streamed.timeline["busy"], whole.timeline["busy"], atol=1e-9)


@pytest.mark.parametrize("strategy", [2, 3, 5])  # hedged, retry, adaptive (rebalancing)
def test_streamed_run_with_hedges_retries_and_moves(tmp_path: Path, strategy: int) -> None:
    resolved = _load("slow_node.yaml", 25, "cluster.node_groups.0.count=4", duration=80)
    whole, streamed, path = _both(resolved, strategy, tmp_path)
    assert path is not None
    _same_records(whole.requests, path)
    _same_summary(whole, streamed)


def test_streamed_run_with_api_latency_and_client_cap(tmp_path: Path) -> None:
    # an aic profile (API latency grows with the requests a node holds) and the client's
    # concurrency cap (which moves held requests' send times)
    resolved = _load("capacity_h100.yaml", 70, "router.max_in_flight=40")
    whole, streamed, path = _both(resolved, tmp=tmp_path)
    assert path is not None
    assert np.nanmax(whole.requests["client_wait_s"]) > 0
    _same_records(whole.requests, path)
    _same_summary(whole, streamed)


def test_streamed_run_is_deterministic(tmp_path: Path) -> None:
    resolved = _load("smoke.yaml", 15)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    runs = [simulate_streamed(resolved, resolved.strategies[0], 0,
                              ChunkSource(_chunks(resolved)), page_bits=6,
                              requests_path=tmp_path / d / "r.parquet") for d in "ab"]
    assert runs[0].summary == runs[1].summary
    assert pq.read_table(tmp_path / "a" / "r.parquet").equals(
        pq.read_table(tmp_path / "b" / "r.parquet"))


def _peak_resident(resolved, monkeypatch: pytest.MonkeyPatch) -> int:
    """The most requests the table held (loaded, not released) whenever it pulled a chunk."""
    seen: list[int] = []
    original = StreamedRequestTable.pull

    def pull(self: StreamedRequestTable) -> bool:
        seen.append(self.n - self.released)
        return original(self)

    monkeypatch.setattr(StreamedRequestTable, "pull", pull)
    simulate_streamed(resolved, resolved.strategies[0], 0, ChunkSource(_chunks(resolved)),
                      page_bits=5)
    monkeypatch.undo()
    return max(seen)


def test_resident_requests_do_not_grow_with_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    short, long = (_load("smoke.yaml", 10, duration=d) for d in (60.0, 240.0))
    peaks = [_peak_resident(r, monkeypatch) for r in (short, long)]
    # four times the requests, about the same resident table (a chunk and a page or two)
    assert peaks[1] < 1.5 * peaks[0] + 64


def test_prefill_decode_roles_are_refused() -> None:
    resolved = app.load(REPO / "scenarios" / "disagg_long.yaml", [], limits=False)
    with pytest.raises(StreamingError, match="roles"):
        simulate_streamed(resolved, resolved.strategies[0], 0, ChunkSource(iter([])))


@pytest.mark.parametrize("scenario, extra", [
    ("node_failure.yaml", ()),  # a crash: lost attempts retried elsewhere
    # a hang: clients give up on requests the frozen engine keeps until it restarts, so their
    # pages must wait (released early, a read of them raises)
    ("node_failure.yaml", ("faults.scheduled.0.mode=hang", "router.retries.stall_timeout_s=20")),
    ("autoscaling.yaml", ("duration_s=600",)),
])
def test_streamed_run_with_faults_and_autoscaling(tmp_path: Path, scenario: str,
                                                  extra: tuple[str, ...]) -> None:
    resolved = app.load(REPO / "scenarios" / scenario, ["warmup_s=5", *extra], limits=False,
                        strategies=("least_loaded",))
    choice = next(c for c in resolved.strategies if c.label == "least_loaded")
    whole = simulate(resolved, choice, 0, collect(_chunks(resolved)), fold_rows=500)
    path = tmp_path / "requests.parquet"
    streamed = simulate_streamed(resolved, choice, 0, ChunkSource(_chunks(resolved)),
                                 requests_path=path, fold_rows=500, page_bits=7)
    _same_records(whole.requests, path)
    _same_summary(whole, streamed)
    block = whole.summary["elasticity"]
    assert block["events"] or block["node_count"]["t_s"][1:]  # something failed or scaled


# -- the streaming pieces against their whole-run versions --------------------------------------

def _pages(n: int, size: int):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


@pytest.mark.parametrize("size", [1, 7, 250, 5000])
def test_herding_stream_equals_herding(size: int) -> None:
    rng = np.random.default_rng(3)
    # bursts of near-simultaneous arrivals and quiet gaps; pages cut through both
    t = np.sort(np.concatenate([rng.uniform(0, 60, 1500),
                                np.repeat(rng.uniform(0, 60, 40), 12)
                                + rng.uniform(0, 0.004, 480)]))
    node = rng.integers(-1, 8, t.size)  # -1: never dispatched
    stream = HerdingStream(8)
    for s in _pages(t.size, size):
        stream.add(t[s], node[s])
    whole, got = herding(t, node, 8), stream.figures()
    assert got.keys() == whole.keys()
    for key, value in whole.items():
        assert got[key] == (pytest.approx(value, abs=1e-12) if isinstance(value, float)
                            else value), key


@pytest.mark.parametrize("size", [1, 13, 400])
def test_api_latency_stream_equals_whole_run_counts(size: int) -> None:
    rng = np.random.default_rng(5)
    n = 3000
    arrival = np.sort(rng.uniform(0, 100, n))
    finish = arrival + rng.exponential(4.0, n)
    finish[rng.random(n) < 0.02] = np.nan  # never finished
    node = rng.integers(-1, 6, n)
    stream = ApiLatencyStream(6)
    got = np.concatenate([stream.active(node[s], arrival[s], finish[s])
                          for s in _pages(n, size)])
    np.testing.assert_array_equal(got, active_per_node(node, arrival, finish, 6))
