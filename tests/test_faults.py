"""Faults and elasticity: failures, detection, retries, autoscaling, conservation, bad input."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import app
from sim.cli import main
from sim.outcome import CANCELLED, COMPLETED, FAILED, REJECTED, UNFINISHED
from sim.policy.radix import PrefixIndex
from sim.runner import simulate, workload_for

from conftest import expect_error, scenario_dict, write_scenario


def faulty(count: int = 3, rate_rps: float = 20.0, duration_s: float = 30.0,
           **top: Any) -> dict[str, Any]:
    """A small scenario with ``count`` linear nodes in group ``g`` and the given blocks."""
    raw = scenario_dict(duration_s=duration_s, warmup_s=0.0, drain_timeout_s=120.0)
    group = raw["cluster"]["node_groups"][0]
    group["name"], group["count"] = "g", count
    raw["workload"]["arrivals"]["params"]["rate_rps"] = rate_rps
    raw.update(top)
    return raw


def run_one(tmp_path: Path, raw: dict[str, Any], strategy: str = "round_robin"):
    raw = copy.deepcopy(raw)
    raw["router"]["strategies"] = [{"name": strategy}]
    tmp_path.mkdir(parents=True, exist_ok=True)
    resolved = app.load(write_scenario(tmp_path, raw))
    return simulate(resolved, resolved.strategies[0], 0, workload_for(resolved, 0))


def crash(node: int | None, at_s: float, duration_s: float, mode: str = "crash") -> dict:
    return {"group": "g", "node": node, "at_s": at_s, "duration_s": duration_s, "mode": mode}


def check_books(result, copies: bool = False) -> dict[str, Any]:
    """Every request has one final status; every failure led to one retry or one failure
    (at most one when a strategy runs several copies of a request: losing one of them while
    another runs needs no decision)."""
    req, summary = result.requests, result.summary
    status = req["status"]
    assert not (status == CANCELLED).any()
    counts = summary["requests"]
    assert counts["arrived"] == (counts["completed"] + counts["rejected"] + counts["failed"]
                                 + counts["unfinished"]) == status.size
    done = status == COMPLETED
    assert np.isfinite(req["finish_s"][done]).all()
    assert (req["generated_tokens"][done] == req["output_tokens"][done]).all()
    assert np.isfinite(req["finish_s"][status == FAILED]).all()
    el = summary["elasticity"]["requests"]
    # each lost attempt or unroutable request was either retried or failed, exactly once
    decisions, failures = el["retries"] + el["failed_total"], el["failed_attempts"] + el[
        "unroutable"]
    assert decisions <= failures if copies else decisions == failures
    return el


def test_no_faults_builds_no_elasticity(tmp_path: Path) -> None:
    result = run_one(tmp_path, faulty())
    assert "elasticity" not in result.summary


def test_crash_loses_in_flight_requests_and_comes_back_cold(tmp_path: Path) -> None:
    raw = faulty(faults={"model_load_s": 5.0, "scheduled": [crash(1, 10.0, 5.0)]})
    raw["router"]["health"] = {"ejection_s": 3.0}
    result = run_one(tmp_path, raw)
    el = check_books(result)
    event = result.summary["elasticity"]["events"][0]
    assert event["restart_s"] == 15.0 and event["ready_s"] == 20.0
    assert event["lost_requests"] == el["attempts_reset"] > 0
    # round robin keeps sending to the dead node until passive ejection: refused attempts
    assert el["failed_total"] == el["failed_attempts"] > 0
    assert result.summary["elasticity"]["detection"]["detected"] == 1
    assert result.summary["router"]["wasted_tokens"] == el["lost_tokens"]
    # node 1 serves again once it is ready and its ejection has ended
    req = result.requests
    assert ((req["node"] == 1) & (req["arrival_s"] > 24.0) & (req["status"] == COMPLETED)).any()


def test_retries_move_lost_requests_to_live_nodes(tmp_path: Path) -> None:
    raw = faulty(faults={"scheduled": [crash(0, 10.0, 5.0)]})
    raw["router"]["retries"] = {"max_retries": 3}
    result = run_one(tmp_path, raw)
    el = check_books(result)
    assert el["retries"] > 0 and el["failed_total"] == 0
    assert result.summary["requests"]["completed"] == result.summary["requests"]["arrived"]


def test_hang_detected_by_health_checks_and_stalls_time_out(tmp_path: Path) -> None:
    """A hung node fails checks after their timeout: with interval 2 s, timeout 0.5 s and
    threshold 2, a hang at 10 s is noticed at 12.5 s; its requests fail at the stall
    timeout and are retried elsewhere."""
    raw = faulty(faults={"scheduled": [crash(2, 10.0, 20.0, "hang")]})
    raw["router"]["health"] = {"interval_s": 2.0, "timeout_s": 0.5, "unhealthy_threshold": 2,
                               "consecutive_errors": None}
    raw["router"]["retries"] = {"max_retries": 2, "stall_timeout_s": 3.0}
    result = run_one(tmp_path, raw)
    el = check_books(result)
    event = result.summary["elasticity"]["events"][0]
    assert event["detected_by"] == "health_check"
    assert event["detect_delay_s"] == pytest.approx(2.5)
    assert el["attempts_timed_out"] > 0 and el["failed_total"] == 0
    assert result.summary["elasticity"]["availability"] == 1.0


def test_drain_loses_nothing(tmp_path: Path) -> None:
    raw = faulty(faults={"scheduled": [crash(0, 10.0, 5.0, "drain")]})
    result = run_one(tmp_path, raw, "least_loaded")
    el = check_books(result)
    assert el["failed_attempts"] == 0
    assert result.summary["elasticity"]["events"][0]["detected_by"] == "control_plane"


def test_whole_group_down_fails_unroutable_requests(tmp_path: Path) -> None:
    raw = faulty(faults={"model_load_s": 1.0, "scheduled": [crash(None, 10.0, 5.0)]})
    raw["router"]["health"] = {"consecutive_errors": 1}
    result = run_one(tmp_path, raw, "least_loaded")
    el = check_books(result)
    assert el["unroutable"] > 0


def test_autoscaler_scales_with_load_and_costs_less(tmp_path: Path) -> None:
    """Traffic far below four nodes' capacity: the autoscaler scales in to its minimum
    (after the scale-down window) and the run costs fewer GPU-hours than a static one."""
    auto = {"group": "g", "metric": "concurrency", "target": 4.0, "min_nodes": 1,
            "initial_nodes": 4, "interval_s": 5.0, "scale_down_window_s": 10.0,
            "cold_start_s": 5.0}
    raw = faulty(count=4, rate_rps=5.0, duration_s=60.0, autoscaling=[auto])
    result = run_one(tmp_path, raw, "least_loaded")
    check_books(result)
    el = result.summary["elasticity"]
    assert el["node_count"]["provisioned"][-1] < 4
    assert el["gpu_hours"] < 4 * 60 / 3600
    assert result.summary["requests"]["completed"] == result.summary["requests"]["arrived"]


def test_autoscaler_scales_up_under_load(tmp_path: Path) -> None:
    auto = {"group": "g", "metric": "concurrency", "target": 2.0, "min_nodes": 1,
            "interval_s": 2.0, "cold_start_s": 3.0}
    raw = faulty(count=4, rate_rps=40.0, duration_s=30.0, autoscaling=[auto])
    result = run_one(tmp_path, raw, "least_loaded")
    check_books(result)
    assert max(result.summary["elasticity"]["node_count"]["provisioned"]) > 1
    used = set(result.requests["node"][result.requests["status"] == COMPLETED].tolist())
    assert len(used) > 1


def test_prefix_index_forgets_a_tenant() -> None:
    index = PrefixIndex(2)
    index.insert(0, [1, 2, 3], 0.0)
    index.insert(1, [1, 2], 0.0)
    assert index.drop_tenant(0) == 3
    assert index.match([1, 2, 3]) == [0, 2]
    index.check()


def test_cache_aware_router_loses_the_dead_nodes_entries(tmp_path: Path) -> None:
    raw = faulty(faults={"model_load_s": 2.0, "scheduled": [crash(0, 10.0, 3.0)]})
    raw["workload"]["prefixes"] = {"name": "shared_prefix", "params": {
        "groups": 2, "zipf_s": 1.0, "prefix_tokens": 256, "fraction": 1.0}}
    result = run_one(tmp_path, raw, "sglang_cache_aware")
    check_books(result)


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(events=st.lists(st.tuples(st.integers(0, 2), st.floats(0.0, 19.9), st.floats(0.1, 8.0),
                                 st.sampled_from(["crash", "hang", "drain"]),
                                 st.booleans()), max_size=5),
       retries=st.integers(0, 2), strategy=st.sampled_from(["round_robin", "least_loaded",
                                                            "sglang_cache_aware", "retry",
                                                            "hedged"]),
       stall=st.sampled_from([None, 1.0, 4.0]))
def test_nothing_is_lost_under_random_failure_schedules(tmp_path_factory, events, retries,
                                                        strategy, stall) -> None:
    """Random schedules (single nodes or the whole group, any mode), with or without
    retries and stall timeouts, on strategies with and without their own retry timers."""
    scheduled = [crash(None if whole else node, at, dur, mode)
                 for node, at, dur, mode, whole in events]
    raw = faulty(duration_s=20.0, rate_rps=15.0,
                 faults={"model_load_s": 1.0, "scheduled": scheduled})
    raw["drain_timeout_s"] = 30.0
    raw["router"]["retries"] = {"max_retries": retries, "stall_timeout_s": stall}
    result = run_one(tmp_path_factory.mktemp("f"), raw, strategy)
    check_books(result, copies=strategy in ("hedged", "retry"))
    status = result.requests["status"]
    assert set(np.unique(status).tolist()) <= {COMPLETED, REJECTED, FAILED, UNFINISHED}


@pytest.mark.parametrize(("change", "needle"), [
    ({"faults": {"scheduled": [{"group": "nope", "at_s": 1, "duration_s": 1}]}},
     "faults.scheduled.0.group: expected one of the cluster's groups (g), got 'nope'"),
    ({"faults": {"scheduled": [{"group": "g", "at_s": 99, "duration_s": 1}]}},
     "faults.scheduled.0.at_s: expected a time inside the run [0, 30), got 99"),
    ({"faults": {"scheduled": [{"group": "g", "at_s": 1, "duration_s": -5}]}},
     "faults.scheduled.0.duration_s: Input should be greater than 0"),
    ({"faults": {"scheduled": [{"group": "g", "node": 7, "at_s": 1, "duration_s": 1}]}},
     "faults.scheduled.0.node: expected a node index below 3"),
    ({"autoscaling": [{"group": "g", "metric": "queue", "target": 1, "min_nodes": 3,
                       "max_nodes": 2}]},
     "autoscaling.0.max_nodes: expected at least min_nodes (3), got 2"),
    ({"autoscaling": [{"group": "g", "metric": "queue", "target": 1, "min_nodes": 5}]},
     "autoscaling.0.min_nodes: expected at most max_nodes (3), got 5"),
    ({"faults": {"random": [{"group": "g", "time_between_s": {"mean_s": -1},
                             "repair_s": {"mean_s": 1}}]}},
     "faults.random.0.time_between_s.mean_s: Input should be greater than 0"),
], ids=["unknown-group", "time-outside-run", "negative-duration", "node-outside-group",
        "min-above-max", "min-above-count", "negative-mean"])
def test_bad_elasticity_input_is_one_line_naming_the_field(tmp_path: Path, change: dict,
                                                           needle: str) -> None:
    path = write_scenario(tmp_path, faulty(**change))
    result = CliRunner().invoke(main, ["validate", str(path)], prog_name="simlb")
    expect_error(result, needle)


def test_random_failures_are_drawn_per_node_and_reproducible(tmp_path: Path) -> None:
    """Random crashes (exponential time between failures, constant repair) happen on every
    node of the group, the same ones in two runs with the same seed."""
    rule = {"group": "g", "time_between_s": {"mean_s": 8.0},
            "repair_s": {"distribution": "constant", "mean_s": 1.0}}
    raw = faulty(faults={"model_load_s": 1.0, "random": [rule]})
    raw["router"]["retries"] = {"max_retries": 2}
    first = run_one(tmp_path / "a", raw, "least_loaded")
    second = run_one(tmp_path / "b", raw, "least_loaded")
    check_books(first)
    events = first.summary["elasticity"]["events"]
    assert {e["node"] for e in events} == {0, 1, 2}
    assert all(e["restart_s"] - e["start_s"] == pytest.approx(1.0) for e in events
               if e["restart_s"] is not None)  # None: the run ended first
    assert events == second.summary["elasticity"]["events"]
    assert (first.requests["status"] == second.requests["status"]).all()


@pytest.mark.parametrize("name", ["hedged", "retry", "adaptive"])
def test_wrappers_tell_their_inner_strategies_a_node_is_down(name: str) -> None:
    from sim.policy.base import Strategy, strategies

    cls = strategies.get(name)
    outer = cls(cls.Params(), np.random.default_rng(0))
    inners = [v for v in vars(outer).values() if isinstance(v, Strategy)]
    inners += [s for v in vars(outer).values() if isinstance(v, (list, dict))
               for s in (v.values() if isinstance(v, dict) else v) if isinstance(s, Strategy)]
    assert inners
    seen: list[int] = []
    for inner in inners:
        inner.on_node_down = seen.append  # type: ignore[method-assign]
    outer.on_node_down(3)
    assert seen == [3] * len(inners)


@pytest.mark.parametrize("strategy", ["least_loaded", "sglang_cache_aware"])
def test_autoscaling_with_random_failures_keeps_the_books(tmp_path: Path, strategy: str) -> None:
    """Scale-ups, drains on scale-down and random crashes and hangs together."""
    auto = {"group": "g", "metric": "concurrency", "target": 3.0, "min_nodes": 1,
            "interval_s": 2.0, "scale_down_window_s": 4.0, "cold_start_s": 2.0}
    rules = [{"group": "g", "mode": mode, "time_between_s": {"mean_s": 6.0},
              "repair_s": {"mean_s": 1.0}} for mode in ("crash", "hang")]
    raw = faulty(count=4, rate_rps=25.0, duration_s=30.0, autoscaling=[auto],
                 faults={"model_load_s": 1.0, "random": rules})
    raw["router"]["retries"] = {"max_retries": 1, "stall_timeout_s": 2.0}
    raw["router"]["health"] = {"interval_s": 1.0}
    result = run_one(tmp_path, raw, strategy)
    el = check_books(result)
    assert el["failed_attempts"] > 0
    counts = result.summary["elasticity"]["node_count"]["provisioned"]
    assert min(counts) >= 1 and max(counts) <= 4
