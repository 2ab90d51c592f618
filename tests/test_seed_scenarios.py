"""The seed strategies in simulation: their ledgers stay exact, and each shows its effect on its
scenario (fixed seeds, the figures of docs/strategies.md, asserted with clear margins)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import simpy

import sim.policy  # noqa: F401
from sim import app
from sim.metrics.recorder import Recorder
from sim.model.batcher import BatcherConfig
from sim.model.cluster import Cluster, NodeSpec
from sim.model.cost import cost_models
from sim.model.requests import COMPLETED, RequestTable
from sim.model.router import Router
from sim.policy.base import ClusterView, RequestInfo, Strategy
from sim.policy.predictive import Predictive
from sim.policy.token_aware import TokenAware
from sim.runner import simulate, workload_for
from sim.workload.base import unique_prompt_workload

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
LINEAR = cost_models.get("linear")


def run_router(strategy: Strategy, n: int = 400, n_nodes: int = 3) -> RequestTable:
    """Route ``n`` Poisson requests over linear-cost nodes with ``strategy``, to the end."""
    rng = np.random.default_rng(4)
    wl = unique_prompt_workload(np.cumsum(rng.exponential(1 / 40, n)),
                                rng.integers(50, 600, n), rng.integers(10, 200, n))
    cost = LINEAR(LINEAR.Params(step_s=0.01, prefill_token_s=2e-5, decode_seq_s=2e-4))
    spec = NodeSpec("g", "linear", cost, 20_000, 16, True, BatcherConfig(32, 2048, True, None))
    env = simpy.Environment()
    table = RequestTable(wl)
    cluster = Cluster(env, [spec] * n_nodes, table, Recorder(n_nodes, (0, 1e9)))
    router = Router(env, cluster, table, [strategy], 0.0)
    router.start()
    env.run(until=router.drained)
    return table


class CheckedTokenAware(TokenAware):
    """token_aware that checks, at every decision, its ledger against the router's counts."""

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        self._grow(view.n_nodes)
        if self.params.release_prompt_at_first_token:
            assert all(0 <= a <= b for a, b in zip(self.outstanding_tokens,
                                                    view.inflight_tokens, strict=True))
        else:
            assert self.outstanding_tokens == list(view.inflight_tokens)
        return super().choose(request, view)


def test_token_aware_ledger_matches_the_router_and_ends_empty():
    """Without the first-token release the ledger equals the router's in-flight tokens at
    every decision; with it, it never exceeds them; both end at zero with no entries."""
    for release in (False, True):
        s = CheckedTokenAware(TokenAware.Params(release_prompt_at_first_token=release),
                              np.random.default_rng(0))
        table = run_router(s)
        assert all(status == COMPLETED for status in table.status)
        assert s.outstanding_tokens == [0, 0, 0]
        assert s._ledger == {}


def test_predictive_releases_its_pending_work_and_learns_every_completion():
    """After a run the pending work is zero (to rounding) and every completion is in the
    history, service times positive."""
    s = Predictive(Predictive.Params(), np.random.default_rng(0))
    run_router(s)
    assert s._ledger == {}
    assert np.allclose(s._pending_prompt + s._pending_output, 0.0, atol=1e-6)
    assert len(s._history) == 400
    assert all(sample[2] > 0 for sample in s._history)


def summaries(name: str, overrides: tuple[str, ...] = (),
              only: tuple[str, ...] = ()) -> dict[str, dict]:
    """Simulate a shipped scenario's strategies (or ``only`` those) on its first replication."""
    resolved = app.load(SCENARIOS / f"{name}.yaml", overrides, strategies=only)
    workload = workload_for(resolved, 0)
    return {c.label: simulate(resolved, c, 0, workload).summary for c in resolved.strategies}


def test_cache_locality_raises_the_hit_rate_on_prefix_heavy():
    """prefix_heavy: cache_locality hits 95 % of prompt tokens, round robin 73.5 %."""
    runs = summaries("prefix_heavy", only=("round_robin", "cache_locality"))
    hit = {k: v["cache"]["hit_rate"] for k, v in runs.items()}
    assert hit["cache_locality"] > 0.9
    assert hit["cache_locality"] > hit["round_robin"] + 0.15


def test_weighted_round_robin_beats_round_robin_on_heterogeneous():
    """heterogeneous: smooth WRR by profile throughput cuts p99 TTFT over 10x (7.7 s to
    0.5 s) and lifts goodput from 35 to 59 req/s."""
    runs = summaries("heterogeneous", only=("round_robin", "weighted_round_robin"))
    rr, wrr = runs["round_robin"], runs["weighted_round_robin"]
    assert wrr["latency_s"]["ttft"]["p99"] * 5 < rr["latency_s"]["ttft"]["p99"]
    assert wrr["latency_s"]["e2e"]["p99"] < 0.7 * rr["latency_s"]["e2e"]["p99"]
    assert wrr["throughput"]["goodput_rps"] > rr["throughput"]["goodput_rps"] + 15


def test_session_affinity_raises_the_hit_rate_on_sessions():
    """sessions: session_affinity hits 81 % of prompt tokens, round robin 27 %."""
    runs = summaries("sessions", only=("round_robin", "session_affinity"))
    hit = {k: v["cache"]["hit_rate"] for k, v in runs.items()}
    assert hit["session_affinity"] > hit["round_robin"] + 0.4
    assert runs["session_affinity"]["strategy"]["session_migrations"] > 0


def test_dynamic_herds_on_stale_telemetry_where_power_of_two_does_not():
    """heterogeneous with 5 s telemetry: dynamic sends ~95 % of each interval's requests to
    one node and its p99 TTFT explodes; power_of_two on the same stale queues does not."""
    overrides = ("router.telemetry_interval_s=5",
                 "router.strategies=[{name: dynamic}, "
                 "{name: power_of_two, params: {load: queue}}]")
    resolved = app.load(SCENARIOS / "heterogeneous.yaml", overrides)
    workload = workload_for(resolved, 0)
    herd, ttft = {}, {}
    for choice in resolved.strategies:
        result = simulate(resolved, choice, 0, workload)
        window = np.floor(result.requests["arrival_s"] / 5).astype(np.int64)
        nodes = result.requests["node"]
        shares = [np.bincount(nodes[window == w]).max() / np.sum(window == w)
                  for w in np.unique(window)]
        herd[choice.label] = float(np.mean(shares))
        ttft[choice.label] = result.summary["latency_s"]["ttft"]["p99"]
    assert herd["dynamic"] > 0.8 > 0.4 > herd["power_of_two"]
    assert ttft["dynamic"] > 5 * ttft["power_of_two"]
