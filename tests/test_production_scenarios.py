"""The production routers' scenarios: cache hits on a Mooncake trace, herding on stale
telemetry, router replicas, load shedding (the figures of docs/production-routers.md)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from sim.app import load
from sim.build import ResolvedScenario
from sim.errors import ScenarioError
from sim.outcome import REJECTED
from sim.runner import RunResult, simulate, workload_for
from sim.workload.base import Workload
from sim.workload.trace_stats import prefix_reuse

REPO = Path(__file__).resolve().parents[1]
CACHE_AWARE = ("sglang_cache_aware", "dynamo_kv", "llm_d", "consistent_hash")


def scenario(name: str, *overrides: str, strategies: tuple[str, ...] = ()) -> ResolvedScenario:
    return load(REPO / "scenarios" / f"{name}.yaml", overrides, strategies=strategies)


def run_each(resolved: ResolvedScenario, workload: Workload | None = None) -> dict[str, RunResult]:
    """Every chosen strategy on replication 0 (one shared workload), by label."""
    workload = workload if workload is not None else workload_for(resolved, 0)
    return {c.label: simulate(resolved, c, 0, workload) for c in resolved.strategies}


def hit_rate(result: RunResult) -> float:
    return result.summary["cache"]["hit_rate"]


def ttft_p99(result: RunResult) -> float:
    return result.summary["latency_s"]["ttft"]["p99"]


def mean_max_waiting(result: RunResult, n_nodes: int, start_s: float, end_s: float) -> float:
    """Time average of the longest waiting queue over the nodes, sampled every 50 ms."""
    states = result.node_states
    t, node, waiting = (np.asarray(states[k]) for k in ("t_s", "node", "waiting"))
    grid = np.arange(start_s, end_s, 0.05)
    per_node = np.zeros((n_nodes, grid.size))
    for i in range(n_nodes):
        mine = node == i
        at = np.searchsorted(t[mine], grid, side="right") - 1
        per_node[i] = np.where(at >= 0, waiting[mine][np.maximum(at, 0)], 0)
    return float(per_node.max(axis=0).mean())


@pytest.mark.slow
@pytest.mark.shared
def test_cache_aware_routers_beat_round_robin_on_the_mooncake_trace(shared_dir):
    """On 1,200 requests of Mooncake's synthetic trace over 8 nodes, every cache-aware router
    hits the prefix cache at least 15 points more often than round robin; SGLang's gets
    within 10 % of the single-infinite-cache bound."""
    trace = shared_dir / "traces" / "synthetic_trace.jsonl"
    resolved = scenario("cache_aware", f"workload.trace.path={trace}",
                        "workload.trace.start_offset_s=600", "workload.trace.max_requests=1200",
                        strategies=("round_robin", *CACHE_AWARE))
    workload = workload_for(resolved, 0)
    bound = prefix_reuse(workload, block_tokens=16)
    assert bound is not None
    results = run_each(resolved, workload)
    baseline = hit_rate(results["round_robin"])
    for name in CACHE_AWARE:
        assert hit_rate(results[name]) > baseline + 0.15, name
    assert hit_rate(results["sglang_cache_aware"]) > 0.9 * bound.shared


def test_cache_aware_scenario_runs_on_its_fixture_trace():
    """The shipped scenario (the project's Mooncake-format fixture) runs every strategy,
    precise variants included, and the cache-aware ones beat round robin's hit rate."""
    results = run_each(scenario("cache_aware"))
    baseline = hit_rate(results["round_robin"])
    for label, result in results.items():
        assert result.summary["requests"]["unfinished"] == 0, label
        if label.startswith(("sglang", "dynamo", "llm_d", "consistent")):
            assert hit_rate(result) > baseline + 0.1, label


def test_precise_knowledge_without_kv_events_is_a_one_line_scenario_error():
    """A precise strategy in a scenario without router.kv_events_delay_s fails at its first
    decision, naming the missing key."""
    resolved = scenario("stale_telemetry", "router.strategies.0={name: dynamo_kv, params: "
                                           "{cache_knowledge: precise}}",
                        "duration_s=5", "warmup_s=0")
    with pytest.raises(ScenarioError, match=r"router\.kv_events_delay_s"):
        simulate(resolved, resolved.strategies[0], 0, workload_for(resolved, 0))


@pytest.mark.slow
def test_stale_telemetry_herds_least_loaded_but_not_power_of_two():
    """With 1 s old metrics, jsq and least_kv send each second's arrivals to one node: the
    longest queue is several times power of two's and p99 TTFT three times worse; SMG's
    dispatch credit (least_work) undoes the herding."""
    resolved = scenario("stale_telemetry",
                        strategies=("jsq", "least_kv", "least_work", "p2c_queue"))
    results = run_each(resolved)
    sc = resolved.scenario
    queue = {k: mean_max_waiting(r, sc.n_nodes, sc.warmup_s, sc.duration_s)
             for k, r in results.items()}
    p2c = results["p2c_queue"]
    for herding in ("jsq", "least_kv"):
        assert ttft_p99(results[herding]) > 3 * ttft_p99(p2c), herding
        assert queue[herding] > 3 * queue["p2c_queue"], herding
    assert ttft_p99(results["least_work"]) < ttft_p99(results["jsq"]) / 3


@pytest.mark.slow
def test_router_replicas_lose_cache_affinity_and_step_in_lockstep():
    """Four replicas instead of one: SGLang's per-replica trees send a prefix to several
    nodes (lower hit rate), and round robin replicas move in lockstep (worse p99 TTFT)."""
    names = ("round_robin", "sglang_cache_aware")
    one = run_each(scenario("router_replicas", "router.replicas=1", strategies=names))
    four = run_each(scenario("router_replicas", "router.replicas=4", strategies=names))
    assert hit_rate(one["sglang_cache_aware"]) > hit_rate(four["sglang_cache_aware"]) + 0.04
    assert ttft_p99(four["round_robin"]) > 1.5 * ttft_p99(one["round_robin"])


def test_shedding_trades_rejections_for_tail_latency_and_goodput():
    """Half the requests sheddable: saturation shedding rejects only those, cuts the p99
    TTFT of the others by more than half and raises goodput."""
    resolved = scenario("shedding", strategies=("least_loaded",))
    workload = workload_for(resolved, 0)
    sheddable = workload.extra["sheddable"]  # workload.sheddable_fraction: 0.5
    assert 0.45 < sheddable.mean() < 0.55
    shed = run_each(resolved, workload)["least_loaded"]
    kept = run_each(dataclasses.replace(resolved, admission=None), workload)["least_loaded"]
    rejected = shed.requests["status"] == REJECTED
    assert shed.summary["router"]["shed"] == rejected.sum() > 0
    assert sheddable[rejected].all()
    window = (workload.arrival_s >= resolved.scenario.warmup_s) & ~sheddable
    assert p99_ttft_of(shed, window) < 0.5 * p99_ttft_of(kept, window)
    assert shed.summary["throughput"]["goodput_rps"] > kept.summary["throughput"]["goodput_rps"]


def p99_ttft_of(result: RunResult, rows: np.ndarray) -> float:
    req = result.requests
    return float(np.nanpercentile((req["first_token_s"] - req["arrival_s"])[rows], 99))
