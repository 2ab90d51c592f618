"""Mechanism strategies: multi_model, hedged, retry and adaptive, by rule and in simulation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import simpy

from sim import app
from sim.errors import ScenarioError
from sim.metrics.recorder import Recorder
from sim.model.batcher import BatcherConfig
from sim.model.cluster import Cluster, NodeSpec
from sim.model.cost import cost_models
from sim.model.requests import COMPLETED, RequestTable
from sim.model.router import Router
from sim.outcome import CANCELLED, Outcome
from sim.policy.adaptive import load_cv
from sim.policy.base import ClusterView, NodeInfo, RequestInfo, Strategy, Telemetry, strategies
from sim.runner import simulate, workload_for
from sim.workload.base import unique_prompt_workload

from conftest import scenario_dict, write_scenario

LINEAR = cost_models.get("linear")


def view(inflight=(0, 0, 0), tokens=None, queued=None, running=None, kv_blocks=None,
         seqs=None, models=None, accepting=None, now=10.0, taken=9.5) -> ClusterView:
    n = len(inflight)
    nodes = tuple(NodeInfo(i, "g", "p", (seqs or (8,) * n)[i], 64,
                           (kv_blocks or (100,) * n)[i], 16, (models or ("",) * n)[i])
                  for i in range(n))
    telemetry = Telemetry(taken, tuple(queued or (0,) * n), tuple(running or (0,) * n),
                          (0,) * n)
    return ClusterView(now, nodes, tuple(accepting or (True,) * n), tuple(inflight),
                       tuple(tokens or (0,) * n), telemetry, lambda rid, bs, limit=None: [])


def request(rid: int = 0, arrival_s: float = 10.0) -> RequestInfo:
    return RequestInfo(rid, arrival_s, 100, 50, -1, -1)


def build(name: str, seed: int = 0, **params) -> Strategy:
    cls = strategies.get(name)
    return cls(cls.Params(**params), np.random.default_rng(seed))


def done(rid: int, node: int, arrival_s: float, e2e_s: float, status: int = COMPLETED):
    end = arrival_s + e2e_s
    return Outcome(rid, node, status, arrival_s, arrival_s + 0.1, end, 10, 0, 0, 0, 110)


# -- multi_model ---------------------------------------------------------------------------


def test_multi_model_picks_the_most_free_kv_tokens_among_the_accepting_replicas():
    """tokens: KV tokens minus outstanding tokens; a bigger cache wins despite more load."""
    v = view(tokens=(1000, 500, 0), kv_blocks=(200, 50, 400), accepting=(True, True, False))
    # free: 3200 - 1000 = 2200, 800 - 500 = 300; node 2 serves another model
    assert build("multi_model").choose(request(), v) == 0


def test_multi_model_can_count_batch_slots_instead():
    """requests: max_num_seqs minus requests in flight."""
    v = view(inflight=(10, 3, 0), seqs=(64, 8, 8), accepting=(True, True, False))
    assert build("multi_model", capacity="requests").choose(request(), v) == 0
    v = view(inflight=(60, 3, 0), seqs=(64, 8, 8))
    assert build("multi_model", capacity="requests").choose(request(), v) in (1, 2)


def spec(kv_tokens: int, model: str) -> NodeSpec:
    cost = LINEAR(LINEAR.Params(step_s=0.01, prefill_token_s=1e-5, decode_seq_s=1e-4))
    return NodeSpec("g", "linear", cost, kv_tokens // 16, 16, False,
                    BatcherConfig(64, 4096, True, None), model)


def run_models(strategy: Strategy, specs: list[NodeSpec], n: int = 600):
    rng = np.random.default_rng(5)
    wl = unique_prompt_workload(np.cumsum(rng.exponential(1 / 40, n)), rng.integers(100, 900, n),
                                rng.integers(50, 400, n))
    models = np.where(rng.random(n) < 0.7, "chat", "code")
    wl = dataclasses.replace(wl, extra={"model": models})
    env = simpy.Environment()
    table = RequestTable(wl)
    cluster = Cluster(env, specs, table, Recorder(len(specs), (0, 1e9)))
    router = Router(env, cluster, table, [strategy], 0.0)
    router.start()
    env.run(until=router.drained)
    return table, models


def test_multi_model_serves_each_model_on_its_replicas_in_proportion_to_capacity():
    """Requests reach only their model's nodes; the chat replica with 4x the KV cache takes
    more of the chat requests than the small one."""
    specs = [spec(40_000, "chat"), spec(10_000, "chat"), spec(20_000, "code")]
    table, models = run_models(build("multi_model"), specs)
    nodes = np.array(table.node)
    assert all(s == COMPLETED for s in table.status)
    assert set(nodes[models == "code"]) == {2}
    chat = nodes[models == "chat"]
    assert set(chat) == {0, 1} and (chat == 0).sum() > 2 * (chat == 1).sum()


def test_a_workload_model_no_node_serves_fails_at_load(tmp_path):
    """workload.models naming a model that no node group serves is a load-time error."""
    raw = scenario_dict()
    raw["cluster"]["node_groups"][0]["model"] = "chat"
    raw["workload"]["models"] = {"chat": 0.7, "code": 0.3}
    with pytest.raises(ScenarioError, match="code"):
        app.load(write_scenario(tmp_path, raw))


# -- hedged and retry ----------------------------------------------------------------------


def test_hedge_delay_is_fixed_or_a_learned_percentile_with_floor_and_warmup():
    """delay_s wins; else none before min_samples (or warmup_delay_s), then the percentile
    of recent end-to-end latencies, at least min_delay_s."""
    assert build("hedged", delay_s=2.0).hedge_after_s(request(), view()) == 2.0
    h = build("hedged", percentile=50, min_samples=5, min_delay_s=0.5, warmup_delay_s=9.0)
    assert h.hedge_after_s(request(), view()) == 9.0
    for rid, e2e in enumerate([1.0, 2.0, 3.0, 4.0, 5.0]):
        h.on_dispatch(request(rid, 0.0), 0, 0.0)
        h.on_finish(done(rid, 0, 0.0, e2e))
    assert h.hedge_after_s(request(), view()) == 3.0
    low = build("hedged", percentile=50, min_samples=1, min_delay_s=0.5)
    low.on_dispatch(request(0, 0.0), 0, 0.0)
    low.on_finish(done(0, 0, 0.0, 0.1))
    assert low.hedge_after_s(request(), view()) == 0.5


def test_withdrawn_attempts_teach_nothing_and_state_is_dropped_at_the_final_outcome():
    """A CANCELLED attempt neither adds a latency nor ends the request's state."""
    h = build("hedged", min_samples=1)
    h.on_dispatch(request(3, 0.0), 0, 0.0)
    h.on_finish(done(3, 1, 0.0, 7.0, status=CANCELLED))
    assert h.latency.count == 0 and 3 in h._arrival
    h.on_finish(done(3, 0, 0.0, 2.0))
    assert h.latency.count == 1 and not h._arrival


def test_ttft_signal_sends_no_copy_once_the_first_token_came():
    """signal ttft: the copy goes to another node only while no token has come."""
    h = build("hedged", signal="ttft")
    v = view(inflight=(0, 5, 2))
    h.on_dispatch(request(1), 0, 10.0)
    assert h.choose_other(request(1), v, frozenset({0})) == 2
    h.on_first_token(1, 0, 10.2)
    assert h.choose_other(request(1), v, frozenset({0})) is None
    assert h.stats() == {"skipped_after_first_token": 1}


def test_retry_arms_at_most_max_retries_timers_per_request():
    """retry_after_s returns the deadline max_retries times, then None; state ends with the
    request's final outcome."""
    r = build("retry", max_s=3.0, max_retries=2)
    delays = [r.retry_after_s(request(4), view()) for _ in range(3)]
    assert delays == [3.0, 3.0, None]
    r.on_finish(done(4, 1, 10.0, 1.0, status=CANCELLED))
    assert r._armed == {4: 2}
    r.on_finish(done(4, 2, 10.0, 5.0))
    assert r._armed == {}


def test_an_unknown_inner_strategy_fails_at_load_naming_the_field(tmp_path):
    """A typo inside a wrapped strategy is one line naming the strategy's inner field."""
    raw = scenario_dict()
    raw["router"]["strategies"] = [{"name": "hedged", "params": {"inner": {"name": "least"}}}]
    with pytest.raises(ScenarioError) as err:
        app.load(write_scenario(tmp_path, raw))
    message = str(err.value)
    assert "router.strategies.0.params.inner" in message and "least_loaded" in message
    assert "\n" not in message


def slow_node_run(tmp_path, strategies_: list[dict]):
    """Four linear nodes, node 0 eight times slower from 20 s to 100 s."""
    raw = scenario_dict(duration_s=120.0, warmup_s=10.0)
    raw["cluster"]["node_groups"][0]["count"] = 4
    raw["cluster"]["slowdowns"] = [{"node": 0, "factor": 8.0, "start_s": 20.0, "end_s": 100.0}]
    raw["workload"]["arrivals"]["params"]["rate_rps"] = 16.0
    raw["workload"]["output_tokens"]["params"] = {"low_tokens": 60, "high_tokens": 140}
    raw["router"]["strategies"] = strategies_
    resolved = app.load(write_scenario(tmp_path, raw))
    workload = workload_for(resolved, 0)
    return {c.label: simulate(resolved, c, 0, workload).summary for c in resolved.strategies}


def test_hedging_cuts_p99_e2e_under_a_slow_node_at_a_counted_cost(tmp_path):
    """hedged (inner least_loaded) beats least_loaded's p99 end-to-end latency by a margin;
    the copies it withdrew are counted as a few percent of the work."""
    runs = slow_node_run(tmp_path, [{"name": "least_loaded"}, {"name": "hedged"},
                                    {"name": "retry"}])
    base, hedged, retry = runs["least_loaded"], runs["hedged"], runs["retry"]
    assert hedged["latency_s"]["e2e"]["p99"] < 0.8 * base["latency_s"]["e2e"]["p99"]
    router = hedged["router"]
    assert router["hedges"] > 0 and router["cancelled_attempts"] > 0
    assert 0.005 < router["wasted_token_share"] < 0.15
    assert hedged["requests"]["completed"] == base["requests"]["completed"]
    assert retry["router"]["retries"] > 0 and retry["router"]["wasted_tokens"] > 0
    assert retry["requests"]["completed"] == base["requests"]["completed"]


# -- adaptive ------------------------------------------------------------------------------


def test_load_cv_is_the_population_cv_and_zero_when_idle():
    """CV = population standard deviation over mean."""
    assert load_cv([0, 0, 0]) == 0.0
    assert load_cv([2, 4, 6]) == pytest.approx(math.sqrt(8 / 3) / 4)


def feed(s: Strategy, queued: tuple[int, ...], start_s: float, end_s: float) -> None:
    """Route one request per telemetry sample (every second) seeing ``queued`` per node."""
    t = start_s
    while t < end_s:
        s.choose(request(), view(inflight=(0,) * len(queued), queued=queued, now=t, taken=t))
        t += 1.0


def test_adaptive_switches_after_patience_unbalanced_checks_and_stays_on_the_last():
    """CV above 0.3 in `patience` consecutive checks moves to the next strategy; a balanced
    check resets the count; the last strategy is kept."""
    s = build("adaptive", patience=2, check_interval_s=10.0)
    unbalanced, balanced = (8, 1, 1), (3, 3, 4)
    feed(s, unbalanced, 0.0, 10.0)
    feed(s, balanced, 10.0, 20.0)
    feed(s, unbalanced, 20.0, 30.0)
    feed(s, balanced, 30.0, 41.0)        # checks at 10, 20, 30, 40: above, below, above, below
    assert (s.active, s.switches, s.checks_above) == (0, 0, 2)
    feed(s, unbalanced, 41.0, 60.0)      # the check at 50 finds [40, 50) unbalanced
    assert (s.active, s.switches) == (0, 0)
    feed(s, unbalanced, 60.0, 62.0)      # the check at 60 ([50, 60)) is the second in a row
    assert (s.active, s.switches) == (1, 1)
    feed(s, unbalanced, 62.0, 200.0)
    assert s.active == 1 and s.stats()["switches"] == 1


def test_adaptive_averages_load_over_the_interval_not_one_snapshot():
    """Nodes that alternate being busy are balanced on average: no unbalanced check."""
    s = build("adaptive", patience=1)
    for t in range(30):
        q = (6, 0) if t % 2 else (0, 6)
        s.choose(request(), view(inflight=(0, 0), queued=q, now=float(t), taken=float(t)))
    assert s.checks == 2 and s.checks_above == 0


def test_adaptive_rebalances_from_the_most_to_the_least_loaded_replica_of_a_model():
    """Half the load gap moves (at most the queue), only between nodes of the same model."""
    s = build("adaptive")
    v = view(inflight=(0, 0, 0, 0), queued=(9, 1, 0, 20), running=(4, 4, 4, 0),
             models=("a", "a", "a", "b"))
    assert s.rebalance(v) == [(0, 2, 4)]       # loads 13, 5, 4: gap 9 -> 4
    assert s.rebalance(view(queued=(1, 0, 0), running=(2, 2, 2))) == []   # gap 1 < min_gap


def test_adaptive_switches_away_from_round_robin_and_moves_queued_requests(tmp_path):
    """Under a slow node, round robin's queues diverge: adaptive switches to least_loaded
    and the router moves queued requests off the slow node."""
    raw = scenario_dict(duration_s=80.0, warmup_s=5.0)
    group = raw["cluster"]["node_groups"][0]
    group["count"] = 3
    group["batcher"] = {"name": "continuous", "params": {"max_num_seqs": 4}}
    raw["cluster"]["slowdowns"] = [{"node": 0, "factor": 6.0, "start_s": 0.0, "end_s": 80.0}]
    raw["workload"]["arrivals"]["params"]["rate_rps"] = 5.0
    raw["router"]["strategies"] = [
        {"name": "adaptive", "params": {"patience": 2, "check_interval_s": 5.0}}]
    resolved = app.load(write_scenario(tmp_path, raw))
    summary = simulate(resolved, resolved.strategies[0], 0, workload_for(resolved, 0)).summary
    assert summary["strategy"]["switches"] == 1
    assert summary["router"]["moves"] > 0
    counts = summary["requests"]
    assert counts["arrived"] == counts["completed"]
