"""Production routers' decision rules on hand-built views, with exact expected choices.

least_kv, least_work (SMG least_load), sglang_cache_aware, dynamo_kv, llm_d, consistent_hash
and the saturation_shedding admission component (``anchors/routing.md`` §1-§3, §8).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import sim.policy  # noqa: F401
from sim.errors import ScenarioError
from sim.outcome import COMPLETED, Outcome
from sim.policy.admission import admissions
from sim.policy.base import ClusterView, NodeInfo, RequestInfo, Telemetry, strategies
from sim.spec import ComponentSpec, build_params

TEN = list(range(1, 11))  # ten chained block ids: a 160-token prompt's full blocks


def make_view(n=3, *, inflight=None, queued=None, kv=None, queued_tokens=None, dispatched=None,
              accepting=None, blocks=None, cached=None, now=10.0, taken=9.95,
              prefill_tps=0.0) -> ClusterView:
    """A view of ``n`` nodes with 100 KV blocks of 16 tokens each; ``blocks``: request id ->
    its prompt block ids; ``cached``: per-node reported prefix blocks (KV events) or None."""
    nodes = tuple(NodeInfo(i, "g", "p", 8, 64, 100, 16, prefill_tokens_per_s=prefill_tps)
                  for i in range(n))
    zeros = (0,) * n
    telemetry = Telemetry(taken, tuple(queued or zeros), zeros, tuple(kv or zeros),
                          tuple(queued_tokens) if queued_tokens is not None else ())
    table = blocks or {}
    reported = None if cached is None else (lambda node, rid: cached[node])
    return ClusterView(now, nodes, tuple(accepting or (True,) * n), tuple(inflight or zeros),
                       zeros, telemetry, lambda rid, bs: list(table.get(rid, [])),
                       tuple(dispatched or zeros), reported)


def req(rid=0, prompt=160, session=-1, sheddable=False) -> RequestInfo:
    return RequestInfo(rid, 10.0, prompt, 50, session, -1, "", sheddable)


def build(name, seed=0, **params):
    cls = strategies.get(name)
    return cls(cls.Params(**params), np.random.default_rng(seed))


def only(n, node):
    """Accepting flags with just ``node`` accepting (to steer a strategy's history)."""
    return tuple(i == node for i in range(n))


def finish(rid, node):
    return Outcome(rid, node, COMPLETED, 10.0, 10.1, 11.0, 50, 0, 0, 0, 200)


# -- least_kv, least_work -------------------------------------------------------------------------

def test_least_kv_picks_lowest_reported_kv_usage_among_accepting():
    """least_kv: smallest kv_used/kv_total; a non-accepting node is skipped; ties random."""
    assert build("least_kv").choose(req(), make_view(kv=(30, 10, 50))) == 1
    view = make_view(kv=(30, 10, 50), accepting=(True, False, True))
    assert build("least_kv").choose(req(), view) == 0
    tied = make_view(kv=(10, 10, 50))
    assert {build("least_kv", seed=s).choose(req(), tied) for s in range(20)} == {0, 1}


def test_least_work_scores_drain_time_plus_kv_barrier():
    """score = (queued + dispatched since poll) / 2000 tok/s + 0.15 k/(1-k)."""
    view = make_view(queued_tokens=(4000, 1000, 0), dispatched=(0, 0, 3000), kv=(0, 90, 0))
    s = build("least_work")
    assert s.scores(view) == pytest.approx([2.0, 0.5 + 0.15 * 9, 1.5])
    assert s.choose(req(), view) == 2
    assert build("least_work", credit_dispatched=False).choose(req(), view) == 2
    no_barrier = build("least_work", kv_barrier_s=0.0)
    assert no_barrier.choose(req(), view) == 1


def test_least_work_dispatch_credit_and_profile_throughput():
    """The dispatch credit breaks a stale tie; profile throughput uses prefill tokens/s;
    without token counts the queue length counts 1024 tokens per request (SMG's p̄)."""
    view = make_view(queued_tokens=(0, 0, 0), dispatched=(500, 0, 800))
    assert build("least_work").choose(req(), view) == 1
    fast = make_view(queued_tokens=(8000, 0, 0), prefill_tps=16000.0)
    assert build("least_work", throughput="profile").scores(fast)[0] == pytest.approx(0.5)
    counts = make_view(queued=(2, 0, 1), queued_tokens=None)
    assert build("least_work").scores(counts) == pytest.approx([1.024, 0.0, 0.512])


# -- sglang_cache_aware ---------------------------------------------------------------------------

def primed(name="sglang_cache_aware", node=0, ids=TEN, **params):
    """A strategy whose history sent a request with ``ids`` to ``node``."""
    s = build(name, **params)
    s.choose(req(0), make_view(accepting=only(3, node), blocks={0: ids}))
    return s


def test_sglang_routes_to_the_deepest_match_unless_imbalanced():
    """Balanced: the node that got the prefix before wins even with more in flight;
    imbalanced (max - min > 64 and max > 1.5 min): the least loaded, whatever the cache."""
    s = primed()
    assert s.choose(req(1), make_view(inflight=(30, 0, 5), blocks={1: TEN})) == 0
    assert s.choose(req(2), make_view(inflight=(100, 10, 50), blocks={2: TEN})) == 1
    assert s.stats() == {"cache_routed": 1.0, "miss_routed": 1.0, "balance_routed": 1.0}


def test_sglang_cache_threshold_python_and_rust_defaults():
    """Match rate must exceed 0.3 (python) or 0.5 (rust): 3 of 10 blocks misses, 4 hits
    under python; under rust 4 blocks still misses (least loaded)."""
    view = make_view(inflight=(5, 0, 3), blocks={1: TEN[:3], 2: TEN[:4]})
    s = primed()
    assert s.choose(req(1), view) == 1
    assert s.choose(req(2), view) == 0
    assert primed(defaults="rust").choose(req(2), view) == 1


def test_sglang_rust_balance_thresholds_trip_earlier():
    """In-flight (40, 0, 0): python (64, 1.5) keeps cache affinity, rust (32, 1.1) balances."""
    view = make_view(inflight=(40, 0, 0), blocks={1: TEN})
    assert primed().choose(req(1), view) == 0
    assert primed(defaults="rust").choose(req(1), view) in {1, 2}
    assert primed(defaults="rust", balance_abs_threshold=64).choose(req(1), view) == 0


def test_sglang_smallest_tree_miss_policy():
    """On a miss, min_load takes the least loaded node; smallest_tree the smallest tree."""
    view = make_view(inflight=(0, 0, 9), blocks={3: [30]})
    for policy, expected in (("min_load", {0, 1}), ("smallest_tree", {2})):
        s = primed(miss_policy=policy)
        s.choose(req(1), make_view(accepting=only(3, 1), blocks={1: [20, 21]}))
        assert {s.choose(req(3), view)} <= expected


def test_sglang_precise_reads_kv_events_and_needs_them():
    """Precise knowledge takes the matches the KV events report; without events it fails
    with one line naming router.kv_events_delay_s."""
    s = build("sglang_cache_aware", cache_knowledge="precise")
    assert s.choose(req(), make_view(inflight=(0, 3, 0), cached=(0, 8, 2))) == 1
    with pytest.raises(ScenarioError, match=r"router\.kv_events_delay_s") as err:
        s.choose(req(), make_view())
    assert "\n" not in str(err.value)


def test_sglang_periodic_eviction_prunes_trees_to_the_budget():
    """Every eviction_interval_s each node's tree is cut to max_tree_blocks LRU-first."""
    s = primed(max_tree_blocks=3, eviction_interval_s=1.0)
    assert s.index is not None and s.index.size(0) == 10
    s.choose(req(1), make_view(now=10.5, accepting=only(3, 1), blocks={1: [40]}))
    assert s.index.size(0) == 10
    s.choose(req(2), make_view(now=11.2, accepting=only(3, 1), blocks={2: [41]}))
    assert s.index.size(0) == 3
    assert s.index.match(TEN)[0] == 3


# -- dynamo_kv ------------------------------------------------------------------------------------

def test_dynamo_cost_is_uncached_prefill_blocks_plus_decode_blocks():
    """Empty cluster, 10-block prompt, 6 blocks cached on node 1: costs 20 and 14."""
    s = build("dynamo_kv", cache_knowledge="precise")
    view = make_view(2, blocks={0: TEN}, cached=(0, 6))
    assert s.costs(req(), view, TEN, [0, 6]) == [20.0, 14.0]
    assert s.choose(req(), view) == 1


def test_dynamo_charges_at_dispatch_and_releases_at_first_token_and_finish():
    """Uncached prompt tokens are active prefill until the first token; the blocks are
    active decode until the request finishes."""
    s = build("dynamo_kv", cache_knowledge="precise")
    view = make_view(2, blocks={0: TEN}, cached=(0, 6))
    node = s.choose(req(), view)
    s.on_dispatch(req(), node, 10.0)
    assert (s.prefill_tokens, s.decode_blocks) == ([0, 160 - 96], [0, 10])
    s.on_first_token(0, node, 10.1)
    assert (s.prefill_tokens, s.decode_blocks) == ([0, 0], [0, 10])
    s.on_finish(finish(0, node))
    assert (s.prefill_tokens, s.decode_blocks) == ([0, 0], [0, 0])
    s.on_finish(finish(99, 0))  # unknown request: nothing to release


def test_dynamo_dedups_blocks_already_active_and_weights_requests():
    """A second request with the same blocks adds none to node 1's decode blocks
    (assume_kv_reuse); without reuse it adds all ten; a=1 adds the in-flight count."""
    view = make_view(2, inflight=(5, 1), blocks={0: TEN, 1: TEN}, cached=(0, 6))
    for reuse, expected in ((True, [20.0, 18.0]), (False, [20.0, 28.0])):
        s = build("dynamo_kv", cache_knowledge="precise", assume_kv_reuse=reuse)
        s.on_dispatch(req(0), s.choose(req(0), view), 10.0)
        assert s.costs(req(1), view, TEN, [0, 6]) == expected
    weighted = build("dynamo_kv", cache_knowledge="precise", decode_active_request_weight=1.0)
    assert weighted.costs(req(1), view, TEN, [0, 6]) == [25.0, 15.0]


def test_dynamo_credit_decay_shrinks_credit_of_busier_prefill():
    """decay = 1/(1 + d ((P_i - P_min)/B) / request_blocks): 64 tokens ahead -> 1/1.4."""
    s = build("dynamo_kv", cache_knowledge="precise", overlap_score_credit_decay=1.0)
    view = make_view(2, blocks={0: TEN}, cached=(0, 6))
    s.on_dispatch(req(0), s.choose(req(0), view), 10.0)
    expected = (64 + 160) / 16 - 6 / 1.4 + 10 + 10 - 10
    assert s.costs(req(1), view, TEN, [0, 6])[1] == pytest.approx(expected)


def test_dynamo_temperature_samples_a_softmax_over_normalised_costs():
    """T = 1 over costs (20, 14): P(node 0) = e^-1 / (1 + e^-1); T = 0 always node 1."""
    view = make_view(2, blocks={0: TEN}, cached=(0, 6))
    s = build("dynamo_kv", seed=4, cache_knowledge="precise", temperature=1.0)
    picks = np.array([s.choose(req(), view) for _ in range(4000)])
    p0 = math.exp(-1) / (1 + math.exp(-1))
    assert abs((picks == 0).mean() - p0) < 4 * math.sqrt(p0 * (1 - p0) / 4000)
    cold = build("dynamo_kv", cache_knowledge="precise")
    assert {cold.choose(req(), view) for _ in range(50)} == {1}


def test_dynamo_approximate_overlap_comes_from_its_own_routing():
    """Approximate: the node that got the prefix gets the credit next time; ties random;
    choosing a node with less overlap is counted as regret."""
    s = build("dynamo_kv", seed=1)
    first = s.choose(req(0), make_view(2, blocks={0: TEN}))
    assert s.choose(req(1), make_view(2, blocks={1: TEN})) == first
    assert {build("dynamo_kv", seed=k).choose(req(0), make_view(2)) for k in range(20)} == {0, 1}
    busy = make_view(2, accepting=only(2, 1 - first), blocks={2: TEN})
    s.choose(req(2), busy)
    assert s.stats() == {"non_max_overlap_selections": 0.0, "overlap_blocks_lost": 0.0}
    s.on_dispatch(req(3), first, 10.0)  # charges without a matching choose: no blocks known
    assert s.decode_blocks[first] == 10


def test_dynamo_counts_decisions_that_give_up_the_deepest_overlap():
    """When load outweighs the cache credit the cheaper node wins, and the lost overlap is
    counted (Dynamo's proposed regret counters)."""
    s = build("dynamo_kv", cache_knowledge="precise")
    view = make_view(2, blocks=dict.fromkeys(range(4), TEN), cached=(0, 6))
    for k in range(3):
        s.on_dispatch(req(k), 1, 10.0)  # three requests already active on node 1
    assert s.choose(req(3), view) == 0
    assert s.stats() == {"non_max_overlap_selections": 1.0, "overlap_blocks_lost": 6.0}


# -- llm_d ----------------------------------------------------------------------------------------

def test_llm_d_weighted_queue_and_kv_scores():
    """total = 2 (Qmax - Q)/(Qmax - Qmin) + 2 (1 - k) + 3 prefix: (4, 2, 2) -> node 0."""
    s = build("llm_d")
    view = make_view(queued=(0, 5, 10), kv=(0, 50, 0))
    assert s.scores(req(), view) == pytest.approx([4.0, 2.0, 2.0])
    assert s.choose(req(), view) == 0
    equal = make_view(queued=(3, 3, 3))
    assert s.scores(req(), equal) == pytest.approx([4.0, 4.0, 4.0])
    assert {build("llm_d", seed=k).choose(req(), equal) for k in range(30)} == {0, 1, 2}


def test_llm_d_prefix_score_is_the_matched_share_of_prompt_blocks():
    """A full match (3 x 1) beats an empty queue (node 2: 5 vs 4); a half match does not."""
    s = build("llm_d")
    s.choose(req(0), make_view(accepting=only(3, 2), blocks={0: TEN}))
    half = [*TEN[:5], 91, 92, 93, 94, 95]
    view = make_view(queued=(0, 5, 10), blocks={1: TEN, 2: half})
    assert s.scores(req(1), view) == pytest.approx([4.0, 3.0, 5.0])
    assert s.choose(req(1), view) == 2
    assert s.scores(req(2), view)[2] == pytest.approx(3.5)
    precise = build("llm_d", cache_knowledge="precise")
    assert precise.scores(req(), make_view(cached=(0, 0, 5))) == pytest.approx([4, 4, 5.5])


def test_llm_d_session_affinity_scorer():
    """With a session weight the session's previous node wins despite the worst queue."""
    view = make_view(queued=(0, 0, 10))
    for weight, expected in ((5.0, {2}), (0.0, {0, 1})):
        s = build("llm_d", session_weight=weight)
        s.choose(req(0, session=7), make_view(accepting=only(3, 2)))
        assert {s.choose(req(1, session=7), view)} <= expected


def test_llm_d_matches_at_most_max_prefix_blocks():
    """Only the first max_prefix_blocks count: 4 matched of a 4-block cap scores 1."""
    s = build("llm_d", max_prefix_blocks=4)
    s.choose(req(0), make_view(accepting=only(3, 1), blocks={0: TEN}))
    assert s.scores(req(1), make_view(blocks={1: TEN}))[1] == pytest.approx(7.0)


# -- consistent_hash ------------------------------------------------------------------------------

def test_consistent_hash_same_prefix_same_node_and_spread_over_prefixes():
    """Equal prefixes (first 16 blocks) map to one node; 400 prefixes use every node."""
    s = build("consistent_hash")
    views = [make_view(8, blocks={0: [k * 100 + j for j in range(20)],
                                  1: [k * 100 + j for j in range(16)] + [99, 98]})
             for k in range(400)]
    firsts = [s.choose(req(0), v) for v in views]
    assert [s.choose(req(1), v) for v in views] == firsts
    assert set(firsts) == set(range(8))
    assert build("consistent_hash", seed=9).choose(req(0), views[0]) == firsts[0]


def test_consistent_hash_bounded_load_overflow():
    """An owner above 1.25 x mean in-flight gives way: to the least loaded node within the
    bound (SMG), or to the next node on the ring within it (ring_walk)."""
    s = build("consistent_hash")
    owner = s.choose(req(), make_view(4, blocks={0: TEN}))
    loads = [2] * 4
    loads[owner] = 10
    loads[(owner + 1) % 4] = 0
    view = make_view(4, inflight=loads, blocks={0: TEN})  # bound 1.25 * 17 / 4 = 5.3
    assert s.choose(req(), view) == (owner + 1) % 4
    walker = build("consistent_hash", overflow="ring_walk")
    picked = walker.choose(req(), view)
    order = list(walker._walk(walker.key(req(), view), view.accepting))
    assert order[0] == owner
    assert picked == order[1]


def test_consistent_hash_session_key_and_non_accepting_owner():
    """key: session keeps a session on one node across prompts; an owner that does not
    accept is skipped for the next node on the ring."""
    s = build("consistent_hash", key="session")
    nodes = {s.choose(req(k, session=42), make_view(8, blocks={k: [k * 100]})) for k in range(20)}
    assert len(nodes) == 1
    owner = nodes.pop()
    accepting = tuple(i != owner for i in range(8))
    assert s.choose(req(0, session=42), make_view(8, accepting=accepting)) != owner


# -- saturation_shedding --------------------------------------------------------------------------

def admission(seed=0, **params):
    cls = admissions.get("saturation_shedding")
    return cls(cls.Params(**params), np.random.default_rng(seed))


def test_saturation_is_the_mean_of_max_queue_and_kv_scores():
    """score = max(Q/5, k/0.8): (5 queued -> 1, 40 % KV -> 0.5) -> saturation 0.75."""
    a = admission()
    assert a.saturation(make_view(2, queued=(5, 0), kv=(0, 40))) == pytest.approx(0.75)
    assert a.saturation(make_view(2, queued=(10, 0), accepting=(False, True))) == 0.0


def test_only_sheddable_requests_are_shed_with_min_sat5_300():
    """Non-sheddable requests always pass; sheddable ones are dropped with probability
    min(sat^5 * 300, 1): all at 0.35, none at 0, about 2.3 % at 0.15."""
    a = admission(seed=3)
    full = make_view(2, queued=(2, 1), kv=(0, 20))          # (0.4 + 0.25) / 2 = 0.325
    assert all(a.admit(req(), full) for _ in range(100))
    assert not any(a.admit(req(sheddable=True), full) for _ in range(100))
    assert all(a.admit(req(sheddable=True), make_view(2)) for _ in range(100))
    mild = make_view(2, queued=(0, 0), kv=(12, 12))          # 0.15
    shed = sum(not a.admit(req(sheddable=True), mild) for _ in range(20000))
    p = 0.15**5 * 300
    assert abs(shed / 20000 - p) < 4 * math.sqrt(p * (1 - p) / 20000)


def test_stale_telemetry_counts_as_saturated_unless_disabled():
    """Telemetry older than staleness_threshold_s (0.2 s) means saturation 1."""
    stale = make_view(2, now=10.0, taken=9.5)
    assert admission().saturation(stale) == 1.0
    assert admission(staleness_threshold_s=1.0).saturation(stale) == 0.0
    assert admission(staleness_threshold_s=None).saturation(stale) == 0.0


# -- parameters -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("registry", "name", "params", "field"), [
    (strategies, "sglang_cache_aware", {"cache_threshold": 2}, "cache_threshold"),
    (strategies, "sglang_cache_aware", {"defaults": "go"}, "defaults"),
    (strategies, "dynamo_kv", {"temperature": -1}, "temperature"),
    (strategies, "llm_d", {"prefix_wieght": 1}, "prefix_wieght"),
    (strategies, "consistent_hash", {"load_factor": 0.5}, "load_factor"),
    (strategies, "least_work", {"throughput": "max"}, "throughput"),
    (admissions, "saturation_shedding", {"kv_threshold": 0}, "kv_threshold"),
])
def test_bad_parameters_fail_at_load_with_one_line(registry, name, params, field):
    """A bad value or unknown key names the strategy's field, on one line."""
    with pytest.raises(ScenarioError) as err:
        build_params(registry, ComponentSpec(name=name, params=params), "router.strategies.0")
    message = str(err.value)
    assert message.startswith(f"router.strategies.0.params.{field}")
    assert "\n" not in message
