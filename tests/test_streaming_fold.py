"""Folding the run log and state series chunk by chunk (sim.metrics.fold) gives the figures
summarize and timeline compute from the whole run, up to float summation order (issue 18)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import sim.runner as runner
from sim import app
from sim.metrics.fold import RunLogFolder
from sim.metrics.recorder import Recorder

REPO = Path(__file__).resolve().parents[1]


def _run(grade_on: str) -> tuple:
    captured: list[Recorder] = []

    class Capturing(Recorder):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            captured.append(self)

    resolved = app.load(REPO / "scenarios" / "smoke.yaml",
                        ["duration_s=90", f"metrics.grade_on={grade_on}",
                         "metrics.bucket_s=2", "metrics.monitor_interval_s=5"],
                        strategies=("least_loaded",))
    original = runner.Recorder
    runner.Recorder = Capturing  # type: ignore[misc]
    try:
        result = runner.simulate(resolved, resolved.strategies[0], 0,
                                 runner.workload_for(resolved, 0))
    finally:
        runner.Recorder = original  # type: ignore[misc]
    return resolved, result, captured[0]


@pytest.mark.parametrize("grade_on", ["batch_occupancy", "busy", "token_share"])
@pytest.mark.parametrize("rows", [7, 1000])
def test_folded_equals_whole_run(grade_on: str, rows: int) -> None:
    resolved, result, recorder = _run(grade_on)
    sc = resolved.scenario
    specs = resolved.node_specs
    folder = RunLogFolder(
        len(specs), (sc.warmup_s, sc.duration_s), sc.duration_s + sc.drain_timeout_s,
        sc.metrics.bucket_s, sc.metrics.monitor_interval_s, grade_on,
        np.array([s.kv_total_blocks for s in specs], dtype=float),
        np.array([s.batcher.max_num_seqs for s in specs], dtype=float),
        np.array([s.cost.peak_flops for s in specs], dtype=float),
        lambda chunk: runner._derive_run_columns(chunk, specs))
    runs, states = recorder.run_frame(), recorder.state_frame()
    n_runs, n_states = runs["start_s"].size, states["t_s"].size
    chunks = max(n_runs, n_states) // rows + 1
    for k in range(chunks):
        folder.fold({c: v[k * rows:(k + 1) * rows] for c, v in runs.items()},
                    {c: v[k * rows:(k + 1) * rows] for c, v in states.items()})
    end_s = result.summary["model"]["end_s"]
    folded = folder.finish(end_s)
    s = result.summary
    assert folded.extrapolated_steps == s["model"]["extrapolated_steps"]
    length = sc.duration_s - sc.warmup_s
    assert (folded.decode_in_window + 0) / length == pytest.approx(
        s["throughput"]["output_tokens_per_s"] - _first_tokens(result, sc) / length, rel=1e-9)
    assert folded.prefill_in_window / length == pytest.approx(
        s["throughput"]["prefill_tokens_per_s"], rel=1e-9)
    u = s["utilization"]
    assert folded.util["busy"] == pytest.approx(u["busy"]["per_node"], rel=1e-9)
    assert folded.util["kv"] / np.array([x.kv_total_blocks for x in specs]) == pytest.approx(
        u["kv_occupancy"]["per_node"], rel=1e-9)
    assert folded.util["running"] / np.array([x.batcher.max_num_seqs for x in specs]) == \
        pytest.approx(u["batch_occupancy"]["per_node"], rel=1e-9)
    itl = s["latency_s"]["itl"]
    if s["preemptions"]["total"] == 0:  # else the runner adds the batchers' preemption gaps
        assert folded.itl.total == itl["samples"]
        qs = [0.5, 0.9, 0.95, 0.99, 0.999]
        assert folded.itl.quantiles(qs) == [itl[k] for k in ("p50", "p90", "p95", "p99",
                                                             "p99.9")]
    bot = s["balance_over_time"]
    load = folded.sense
    mean = load.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cv = np.where(mean > 0, load.std(axis=0) / np.where(mean > 0, mean, 1), 0.0)
    assert folded.monitor_edges[:-1].tolist() == bot["t_s"]
    assert cv == pytest.approx(bot["cv"], rel=1e-7, abs=1e-9)


def _first_tokens(result: object, sc: object) -> float:
    req = result.requests  # type: ignore[attr-defined]
    a, b = sc.warmup_s, sc.duration_s  # type: ignore[attr-defined]
    ft = req["first_token_s"]
    return float((np.isfinite(ft) & (ft >= a) & (ft < b)).sum())



def _close(a: object, b: object, path: str = "") -> None:
    """Equal structure; floats equal up to summation order."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for key in a:
            _close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12, nan_ok=True), path
    else:
        assert a == b, path


@pytest.mark.parametrize("scenario", ["smoke.yaml", "bursty.yaml"])
def test_simulate_folding_as_it_goes(scenario: str) -> None:
    """simulate(fold_rows=...) folds during the run: the same requests bit for bit, the same
    summary and timeline up to summation order, no node change-point series kept."""
    resolved = app.load(REPO / "scenarios" / scenario, ["duration_s=80", "warmup_s=10"],
                        strategies=("least_loaded",))
    workload = runner.workload_for(resolved, 0)
    whole = runner.simulate(resolved, resolved.strategies[0], 0, workload)
    folded = runner.simulate(resolved, resolved.strategies[0], 0, workload, fold_rows=50)
    for key, col in whole.requests.items():
        assert np.array_equal(col, folded.requests[key], equal_nan=True), key
    _close(folded.summary, whole.summary)
    assert list(folded.timeline) == list(whole.timeline)
    for key, col in whole.timeline.items():
        assert folded.timeline[key] == pytest.approx(col, rel=1e-9, abs=1e-9), key
    assert folded.node_states["t_s"].size == 0
