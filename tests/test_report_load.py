"""Reading result directories: which folders are accepted, the tables, the measured window."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_report_build import smoke_results

from sim.errors import InputError
from sim.report.load import find_run_dirs, flatten, load_runs


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return smoke_results(tmp_path_factory)


def test_scenario_strategy_run_and_output_folders(results: Path) -> None:
    """A scenario folder holds 6 runs, a strategy folder 2, a run folder 1, its parent 6."""
    assert len(find_run_dirs(results)) == 6
    assert len(find_run_dirs(results / "least_loaded")) == 2
    assert find_run_dirs(results / "least_loaded" / "seed-2") == [
        results / "least_loaded" / "seed-2"]
    assert len(find_run_dirs(results.parent)) == 6


def test_summaries_one_row_per_run_in_scenario_order(results: Path) -> None:
    """Strategies keep the scenario's order; columns are dotted summary keys."""
    runs = load_runs([results])
    assert runs.strategies == ["round_robin", "least_loaded", "power_of_two"]
    assert runs.result_sets == ["smoke"]
    df = runs.summaries
    assert len(df) == 6 and sorted(set(df["seed"])) == [1, 2]
    assert {"latency_s.ttft.p99", "utilization.mfu.cv", "utilization.grade.grade",
            "throughput.offered_rps"} <= set(df.columns)
    assert list(df["strategy"][:2]) == ["round_robin", "round_robin"]


def test_requests_are_cut_to_the_measured_window(results: Path) -> None:
    """measured_only keeps arrivals in [warmup_s, duration_s); latencies are derived."""
    runs = load_runs([results / "round_robin"])
    every = runs.requests(seed=1, measured_only=False)
    measured = runs.requests(seed=1)
    assert len(measured) < len(every)
    assert measured["arrival_s"].min() >= 5.0 and measured["arrival_s"].max() < 30.0
    done = measured[measured["status"] == "completed"]
    assert (done["ttft_s"] > 0).all() and (done["e2e_s"] >= done["ttft_s"]).all()
    assert set(measured["strategy"]) == {"round_robin"} and set(measured["seed"]) == {1}


def test_timeline_and_nodes_are_tagged(results: Path) -> None:
    """Time series carry strategy and seed columns."""
    runs = load_runs([results])
    tl = runs.timeline(strategy="power_of_two", seed=2)
    assert set(tl["strategy"]) == {"power_of_two"} and set(tl["node"]) == {0, 1}
    assert {"t_s", "kv_occupancy", "batch_occupancy", "waiting"} <= set(tl.columns)
    assert {"t_s", "node", "waiting", "running", "kv_used_blocks"} <= set(
        runs.nodes(seed=1).columns)


def test_the_same_run_through_two_paths_loads_once(results: Path) -> None:
    """Overlapping paths do not duplicate runs."""
    assert len(load_runs([results, results / "round_robin"])) == 6


def test_flatten_drops_lists_and_maps_none_to_nan() -> None:
    """Per-node lists are left out; None becomes NaN."""
    flat = flatten({"a": {"b": 1, "per_node": [1, 2]}, "c": None})
    assert flat["a.b"] == 1 and "a.per_node" not in flat and flat["c"] != flat["c"]


def test_missing_resolved_scenario_is_an_input_error(tmp_path: Path, results: Path) -> None:
    """A run folder without scenario.resolved.yaml is reported by path."""
    run = tmp_path / "seed-1"
    run.mkdir()
    (run / "summary.json").write_bytes((results / "round_robin" / "seed-1" /
                                        "summary.json").read_bytes())
    with pytest.raises(InputError, match=r"scenario\.resolved\.yaml"):
        load_runs([run])
