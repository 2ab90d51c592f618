"""Whole runs: fast-forward equals stepping, conservation, determinism, common random numbers."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from sim import app
from sim.runner import simulate, workload_for

from conftest import scenario_dict, write_scenario

STRATEGIES = [{"name": n} for n in ("round_robin", "random", "least_loaded", "jsq",
                                    "power_of_two", "token_aware")]


def pressure_scenario() -> dict:
    """Small KV, chunked prefill, shared prefixes, sessions and a straggler: every mechanism
    of the node fires."""
    raw = scenario_dict(duration_s=40.0)
    raw["cluster"]["slowdowns"] = [{"node": 1, "factor": 3.0, "start_s": 10.0, "end_s": 25.5}]
    group = raw["cluster"]["node_groups"][0]
    group["count"] = 3
    group["kv_capacity_tokens"] = 6000
    group["batcher"] = {"name": "continuous",
                        "params": {"max_num_seqs": 24, "max_num_batched_tokens": 384}}
    raw["workload"] = {
        "arrivals": {"name": "mmpp2", "params": {"low_rps": 3, "high_rps": 25,
                                                 "mean_low_s": 6, "mean_high_s": 3}},
        "prompt_tokens": {"name": "lognormal", "params": {"median_tokens": 250, "sigma": 1.0,
                                                          "max_tokens": 2000}},
        "output_tokens": {"name": "lognormal", "params": {"median_tokens": 120, "sigma": 1.0,
                                                          "max_tokens": 1200}},
        "prefixes": {"name": "shared_prefix", "params": {"groups": 5, "zipf_s": 1.0,
                                                         "prefix_tokens": 300, "fraction": 0.7}},
        "sessions": {"name": "multi_turn", "params": {
            "turns": {"name": "uniform", "params": {"low_tokens": 1, "high_tokens": 3}},
            "think_time_s": 8.0}},
    }
    raw["router"]["strategies"] = copy.deepcopy(STRATEGIES)
    return raw


def run_both(tmp_path, raw):
    path = write_scenario(tmp_path, raw)
    ff = app.load(path, ["cluster.fast_forward=true"])
    step = app.load(path, ["cluster.fast_forward=false"])
    workload = workload_for(ff, 0)
    for c_ff, c_step in zip(ff.strategies, step.strategies, strict=True):
        yield c_ff.label, simulate(ff, c_ff, 0, workload), simulate(step, c_step, 0, workload)


def test_fast_forward_gives_the_same_per_request_timings_as_stepping(tmp_path):
    """Closed-form decode runs reproduce iteration-by-iteration stepping for every strategy,
    including preemptions, chunked prefill and prefix hits."""
    preempted = 0
    for label, a, b in run_both(tmp_path, pressure_scenario()):
        ra, rb = a.requests, b.requests
        for col in ("node", "status", "preemptions", "cached_tokens", "generated_tokens",
                    "recomputed_tokens"):
            assert np.array_equal(ra[col], rb[col]), (label, col)
        for col in ("first_scheduled_s", "first_token_s", "finish_s"):
            np.testing.assert_allclose(ra[col], rb[col], rtol=1e-9, atol=1e-9,
                                       err_msg=f"{label} {col}")
        assert a.events < b.events / 2, "fast-forward should save most events"
        preempted += int(ra["preemptions"].sum())
    assert preempted > 0, "the scenario must exercise preemption"


def test_every_request_is_accounted_for(tmp_path):
    """arrived = completed + rejected + failed + unfinished, in total and in the window."""
    raw = pressure_scenario()
    raw["drain_timeout_s"] = 5.0            # leave some requests unfinished
    path = write_scenario(tmp_path, raw)
    resolved = app.load(path)
    workload = workload_for(resolved, 0)
    for choice in resolved.strategies:
        s = simulate(resolved, choice, 0, workload).summary["requests"]
        for counts in (s, s["measured"]):
            assert counts["arrived"] == (counts["completed"] + counts["rejected"]
                                         + counts["failed"] + counts["unfinished"])
        assert s["arrived"] == len(workload)
    assert s["unfinished"] > 0


def test_tokens_are_conserved(tmp_path):
    """Completed requests generated exactly their output tokens; others no more than that."""
    path = write_scenario(tmp_path, pressure_scenario())
    resolved = app.load(path, ["drain_timeout_s=3"])
    result = simulate(resolved, resolved.strategies[0], 0, workload_for(resolved, 0))
    r = result.requests
    done = r["status"] == 1
    assert np.array_equal(r["generated_tokens"][done], r["output_tokens"][done])
    assert np.all(r["generated_tokens"] <= r["output_tokens"])
    assert np.all(r["cached_tokens"] < r["prompt_tokens"])


def test_same_seed_gives_byte_identical_summary(tmp_path):
    """Two runs of one seed write identical summary.json files; another seed differs."""
    path = write_scenario(tmp_path, pressure_scenario())
    texts = []
    for out, seed in (("a", 7), ("b", 7), ("c", 8)):
        resolved = app.load(path, seed=seed, strategies=("power_of_two",))
        app.run_all(resolved, tmp_path / out)
        texts.append((tmp_path / out / "test" / "power_of_two" / f"seed-{seed}" /
                      "summary.json").read_bytes())
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]


def test_strategy_does_not_change_the_request_stream(tmp_path):
    """Every strategy of a replication sees the same arrivals and token counts."""
    path = write_scenario(tmp_path, pressure_scenario())
    resolved = app.load(path)
    results = app.run_all(resolved, tmp_path / "out")
    first = results[0].requests
    for result in results[1:]:
        for col in ("arrival_s", "prompt_tokens", "output_tokens", "max_output_tokens",
                    "session_id", "prefix_group"):
            assert np.array_equal(first[col], result.requests[col]), (result.label, col)
    assert len({tuple(r.requests["node"][:50]) for r in results}) > 1


def test_sessions_reuse_their_previous_turns(tmp_path):
    """Later session turns hit the KV blocks of the turns before them."""
    raw = pressure_scenario()
    raw["workload"].pop("prefixes")
    raw["cluster"].pop("slowdowns")
    raw["router"]["strategies"] = [{"name": "round_robin"}]
    raw["cluster"]["node_groups"][0].update(count=1, kv_capacity_tokens=200_000)
    path = write_scenario(tmp_path, raw)
    resolved = app.load(path)
    r = simulate(resolved, resolved.strategies[0], 0, workload_for(resolved, 0)).requests
    first_turn = np.zeros(len(r["session_id"]), dtype=bool)
    _, idx = np.unique(r["session_id"], return_index=True)
    first_turn[idx] = True
    assert r["cached_tokens"][first_turn].sum() == 0
    later = ~first_turn & (r["status"] == 1)
    assert r["cached_tokens"][later].sum() > 0.5 * r["prompt_tokens"][later].sum()


@pytest.mark.parametrize("interval", [0.0, 0.5])
def test_littles_law_holds(tmp_path, interval):
    """Time-average number in system equals arrival rate times mean time in system."""
    raw = scenario_dict(duration_s=400.0, warmup_s=40.0)
    raw["router"]["telemetry_interval_s"] = interval
    raw["router"]["strategies"] = [{"name": "jsq"}]
    path = write_scenario(tmp_path, raw)
    resolved = app.load(path)
    s = simulate(resolved, resolved.strategies[0], 0, workload_for(resolved, 0)).summary
    assert s["littles_law"]["ratio"] == pytest.approx(1.0, abs=0.03)


def test_fast_forward_equals_stepping_with_a_real_profile():
    """The same holds on a shipped GPU profile (piecewise-linear tables, attention terms)."""
    from conftest import REPO

    path = REPO / "scenarios" / "smoke.yaml"
    ff = app.load(path, ["cluster.fast_forward=true"], strategies=("least_loaded",))
    step = app.load(path, ["cluster.fast_forward=false"], strategies=("least_loaded",))
    workload = workload_for(ff, 0)
    a = simulate(ff, ff.strategies[0], 0, workload).requests
    b = simulate(step, step.strategies[0], 0, workload).requests
    assert np.array_equal(a["node"], b["node"])
    for col in ("first_token_s", "finish_s"):
        np.testing.assert_allclose(a[col], b[col], rtol=1e-9, atol=1e-9)


def test_slowdown_makes_the_straggler_slower_only_while_it_lasts(tmp_path):
    """Requests served by a node while it is slowed take longer than the same node's others."""
    raw = scenario_dict(duration_s=120.0, warmup_s=0.0)
    raw["cluster"]["slowdowns"] = [{"node": 0, "factor": 4.0, "start_s": 40.0, "end_s": 80.0}]
    path = write_scenario(tmp_path, raw)
    resolved = app.load(path)
    r = simulate(resolved, resolved.strategies[0], 0, workload_for(resolved, 0)).requests
    e2e = r["finish_s"] - r["arrival_s"]
    per_token = e2e / r["output_tokens"]
    node0 = r["node"] == 0
    during = (r["arrival_s"] > 45) & (r["finish_s"] < 80)
    outside = (r["finish_s"] < 40) | (r["arrival_s"] > 90)
    assert per_token[node0 & during].mean() > 2.5 * per_token[node0 & outside].mean()
    assert per_token[~node0 & during].mean() < 1.5 * per_token[~node0 & outside].mean()


def test_router_replicas_and_kv_events_run_and_conserve(tmp_path):
    """Several router replicas and KV-event publishing change decisions, not accounting."""
    raw = pressure_scenario()
    raw["router"].update(replicas=3, kv_events_delay_s=0.2)
    path = write_scenario(tmp_path, raw)
    resolved = app.load(path, strategies=("least_loaded",))
    s = simulate(resolved, resolved.strategies[0], 0, workload_for(resolved, 0)).summary
    counts = s["requests"]
    assert counts["arrived"] == counts["completed"] + counts["rejected"] + counts["unfinished"]
    assert s["router"]["shed"] == 0
