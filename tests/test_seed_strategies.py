"""The seed document's routing strategies: each one's defining rule on hand-built views."""

from __future__ import annotations

import math

import numpy as np
import pytest

import sim.policy  # noqa: F401
from sim.errors import ScenarioError
from sim.outcome import CANCELLED, COMPLETED, REJECTED, Outcome
from sim.policy.auto import Auto
from sim.policy.base import ClusterView, NodeInfo, RequestInfo, Strategy, Telemetry, strategies
from sim.policy.hash_route import splitmix64
from sim.policy.predictive import length_bucket
from sim.spec import ComponentSpec


def build(name: str, seed: int = 0, **params) -> Strategy:
    cls = strategies.get(name)
    return cls(cls.Params(**params), np.random.default_rng(seed))


def node(i: int, decode: float = 0.0, prefill: float = 0.0, model: str = "",
         max_num_seqs: int = 8) -> NodeInfo:
    return NodeInfo(i, "g", "p", max_num_seqs, 64, 100, 16, model, decode, prefill)


def view(n: int = 3, inflight=None, accepting=None, nodes=None, blocks=None, queued=None,
         running=None, kv=None, e2e=None, now: float = 10.0) -> ClusterView:
    """A view of ``n`` nodes; ``blocks``: request id -> its prompt block ids."""
    nodes = nodes or tuple(node(i) for i in range(n))
    n = len(nodes)
    zeros = (0,) * n
    telemetry = Telemetry(now - 1.0, tuple(queued or zeros), tuple(running or zeros),
                          tuple(kv or zeros), zeros, (math.nan,) * n,
                          tuple(e2e or (math.nan,) * n))
    table = blocks or {}
    return ClusterView(now, tuple(nodes), tuple(accepting or (True,) * n),
                       tuple(inflight or zeros), zeros, telemetry,
                       lambda rid, bs, limit=None: list(table.get(rid, []))[:limit])


def req(rid: int = 0, prompt: int = 100, max_out: int = 50, session: int = -1,
        group: int = -1) -> RequestInfo:
    return RequestInfo(rid, 10.0, prompt, max_out, session, group)


def outcome(rid: int, node_id: int, status: int = COMPLETED, scheduled: float = 10.0,
            finish: float = 11.0, generated: int = 50) -> Outcome:
    return Outcome(rid, node_id, status, scheduled, scheduled + 0.1, finish, generated,
                   0, 0, 0, generated)


# -- hash ------------------------------------------------------------------------------------

def test_splitmix64_matches_the_reference_generator():
    """splitmix64 reproduces the reference SplitMix64 outputs for seed 0 (Vigna's C code)."""
    gamma = 0x9E3779B97F4A7C15
    assert splitmix64(0) == 0xE220A8397B1DCDAF
    assert splitmix64(gamma) == 0x6E789E6AA1B965F4
    assert splitmix64(2 * gamma % 2**64) == 0x06C45D188009454F


def test_hash_maps_request_ids_to_pinned_nodes_over_accepting_ones():
    """hash: node = accepting[splitmix64(id) % n_accepting], pinned for ids 0..11."""
    s = build("hash")
    assert [s.choose(req(r), view(4)) for r in range(12)] == [3, 1, 2, 1, 2, 2, 0, 3, 2, 0, 2, 1]
    skip = view(4, accepting=(True, False, True, True))
    expected = [[0, 2, 3][k] for k in [1, 2, 1, 0, 1, 2, 2, 0, 1, 1, 1, 0]]
    assert [s.choose(req(r), skip) for r in range(12)] == expected


def test_hash_by_session_or_group_keeps_them_together_and_falls_back_to_the_id():
    """key: session / prefix_group hash that id; -1 hashes the request id instead."""
    by_session = build("hash", key="session")
    assert {by_session.choose(req(r, session=5), view(4)) for r in range(20)} == {
        splitmix64(5) % 4}
    assert by_session.choose(req(7, session=-1), view(4)) == splitmix64(7) % 4
    by_group = build("hash", key="prefix_group")
    assert {by_group.choose(req(r, group=2), view(4)) for r in range(20)} == {splitmix64(2) % 4}


# -- weighted round robin --------------------------------------------------------------------

def picks(s: Strategy, v: ClusterView, n: int) -> list[int]:
    return [s.choose(req(k), v) for k in range(n)]


def test_weighted_round_robin_is_nginx_smooth_order():
    """Weights 5, 1, 1 give nginx's smooth sequence a a b a c a a, then repeat."""
    s = build("weighted_round_robin", weights=[5, 1, 1])
    assert picks(s, view(3), 14) == [0, 0, 1, 0, 2, 0, 0] * 2


def test_weighted_round_robin_shares_are_exact_over_every_window():
    """Every window of sum(weights) consecutive picks holds exactly w_i picks of node i."""
    weights = [3, 1, 0, 2, 4]
    seq = picks(build("weighted_round_robin", weights=weights), view(5), 60)
    for start in range(50):
        window = seq[start:start + 10]
        assert [window.count(i) for i in range(5)] == weights


def test_weighted_round_robin_never_starves_a_one_percent_node():
    """A 1 %-weight node gets exactly one pick in every 100 (the 100-slot list lost 0.4 %)."""
    seq = picks(build("weighted_round_robin", weights=[99, 1]), view(2), 1000)
    assert seq.count(1) == 10
    assert all(seq[k:k + 100].count(1) == 1 for k in range(0, 900, 37))
    tiny = picks(build("weighted_round_robin", weights=[0.996, 0.004]), view(2), 500)
    assert tiny.count(1) == 2


def test_weighted_round_robin_defaults_to_profile_throughput_and_skips_non_accepting():
    """Default weights are decode tokens/s (6000 vs 3000 -> 0 1 0); closed nodes are skipped."""
    fast_slow = view(nodes=(node(0, decode=6000.0), node(1, decode=3000.0)))
    assert picks(build("weighted_round_robin"), fast_slow, 6) == [0, 1, 0] * 2
    s = build("weighted_round_robin", weights=[1, 1, 1])
    assert picks(s, view(3, accepting=(True, False, True)), 4) == [0, 2, 0, 2]


def test_weighted_round_robin_checks_its_weights():
    """Negative or all-zero weights fail validation; a wrong count fails at first use."""
    params = strategies.get("weighted_round_robin").Params
    for bad in ([1, -1], [0, 0], []):
        with pytest.raises(ValueError, match="weights"):
            params(weights=bad)
    with pytest.raises(ScenarioError, match=r"3 entries; expected one per node \(2 nodes\)"):
        build("weighted_round_robin", weights=[1, 2, 3]).choose(req(), view(2))


# -- token aware -----------------------------------------------------------------------------

def test_token_aware_charges_at_dispatch_and_releases_the_prompt_at_first_token():
    """Charge prompt + max output; at the first token only max output stays charged."""
    s = build("token_aware")
    s.on_dispatch(req(0, prompt=1000, max_out=100), 0, 10.0)
    s.on_dispatch(req(1, prompt=10, max_out=500), 1, 10.0)
    assert s.outstanding_tokens == [1100, 510]
    assert s.choose(req(2), view(2)) == 1
    s.on_first_token(0, 0, 10.5)
    assert s.outstanding_tokens == [100, 510]
    assert s.choose(req(2), view(2)) == 0


def test_token_aware_removes_exactly_what_it_charged_for_every_outcome():
    """Completed, rejected and withdrawn attempts all remove the stored charge, once."""
    s = build("token_aware")
    for rid, status in enumerate((COMPLETED, REJECTED, CANCELLED)):
        s.on_dispatch(req(rid, prompt=100 * (rid + 1), max_out=7), rid, 10.0)
        if status == COMPLETED:
            s.on_first_token(rid, rid, 10.2)
        s.on_finish(outcome(rid, rid, status))
        s.on_finish(outcome(rid, rid, status))  # a second outcome changes nothing
    assert s.outstanding_tokens == [0, 0, 0]
    assert s._ledger == {}


def test_token_aware_ignores_copies_it_did_not_charge():
    """A cancelled copy on another node leaves the charge; a completed one removes it."""
    s = build("token_aware", release_prompt_at_first_token=False)
    s.choose(req(), view(2))
    s.on_dispatch(req(0, prompt=100, max_out=50), 0, 10.0)
    s.on_first_token(0, 1, 10.1)  # the copy's first token: not the charged attempt
    s.on_finish(outcome(0, 1, CANCELLED))
    assert s.outstanding_tokens == [150, 0]
    s.on_finish(outcome(0, 1, COMPLETED))
    assert s.outstanding_tokens == [0, 0]


def test_token_aware_breaks_ties_randomly():
    """Equal outstanding tokens: different seeds pick different nodes."""
    assert {build("token_aware", seed=k).choose(req(), view(3)) for k in range(30)} == {0, 1, 2}


# -- dynamic ---------------------------------------------------------------------------------

def test_dynamic_scores_are_the_documented_weighted_sum():
    """score = 0.3 running/max_seqs + 0.3 kv + 0.2 min(1, queued/10) + 0.2 e2e/max e2e."""
    s = build("dynamic")
    v = view(3, running=(4, 8, 0), kv=(50, 10, 0), queued=(5, 30, 0), e2e=(2.0, 4.0, math.nan))
    assert s.scores(v, [0, 1, 2]) == pytest.approx(
        [0.3 * 0.5 + 0.3 * 0.5 + 0.2 * 0.5 + 0.2 * 0.5, 0.3 + 0.3 * 0.1 + 0.2 + 0.2, 0.0])
    assert s.choose(req(), v) == 2
    only_latency = build("dynamic", utilization_weight=0, kv_weight=0, queue_weight=0)
    assert only_latency.choose(req(), view(2, e2e=(3.0, 1.0), running=(0, 8))) == 1


def test_dynamic_herds_on_stale_telemetry_where_power_of_two_spreads():
    """On one stale snapshot dynamic sends everything to one node; p2c on it does not."""
    stale = view(4, queued=(3, 0, 2, 5), running=(4, 1, 4, 4), kv=(30, 10, 20, 40))
    dynamic = build("dynamic")
    assert {dynamic.choose(req(r), stale) for r in range(50)} == {1}
    p2c = build("power_of_two", load="queue")
    assert len({p2c.choose(req(r), stale) for r in range(50)}) >= 3


def test_dynamic_needs_some_weight():
    """All four weights 0 is a validation error."""
    with pytest.raises(ValueError, match="at least one weight"):
        strategies.get("dynamic").Params(utilization_weight=0, kv_weight=0, queue_weight=0,
                                         latency_weight=0)


# -- predictive ------------------------------------------------------------------------------

def hetero() -> ClusterView:
    """Two nodes: node 0 decodes 6,400 tok/s and prefills 10,000; node 1 at half speed."""
    return view(nodes=(node(0, 6400.0, 10_000.0), node(1, 3200.0, 5000.0)))


def test_predictive_falls_back_to_the_token_estimate_and_adds_pending_work():
    """No history: prompt/prefill + output * batch/decode; a dispatch adds pending work."""
    s = build("predictive")
    r = req(0, prompt=1000, max_out=100)
    # node 0: 1000/10000 + 100 * 8/6400 = 0.225 s; node 1 at half speed: 0.45 s
    assert s.predicted_s(r, hetero(), [0, 1]) == pytest.approx([0.225, 0.45])
    assert s.choose(r, hetero()) == 0
    s.on_dispatch(r, 0, 10.0)  # node 0 now has 1000 prompt + 100 output tokens pending
    assert s.predicted_s(r, hetero(), [0, 1])[0] == pytest.approx(0.225 + 0.1 + 100 / 6400)
    s.on_first_token(0, 0, 10.1)
    assert s.predicted_s(r, hetero(), [0, 1])[0] == pytest.approx(0.225 + 100 / 6400)
    s.on_finish(outcome(0, 0))
    assert s.predicted_s(r, hetero(), [0, 1]) == pytest.approx([0.225, 0.45])


def test_predictive_learns_bucket_means_at_reference_speed():
    """After min_samples completions the bucket mean (scaled by node speed) replaces the
    token estimate; the output estimate becomes the prompt bucket's mean output."""
    s = build("predictive", min_samples=2)
    s.choose(req(), hetero())  # reads the capacities
    for rid, took in enumerate((1.0, 3.0)):  # on node 1 (half speed): 0.5 and 1.5 s at ref
        s.on_dispatch(req(rid, prompt=1000, max_out=100), 1, 10.0)
        s.on_finish(outcome(rid, 1, finish=10.0 + took, generated=40))
    r = req(9, prompt=1000, max_out=100)
    assert s.expected_output_tokens(r) == 40
    assert s.predicted_s(r, hetero(), [0, 1]) == pytest.approx([1.0, 2.0])
    other_bucket = req(9, prompt=100, max_out=100)  # no samples: token estimate, mean output
    assert s.predicted_s(other_bucket, hetero(), [0, 1])[0] == pytest.approx(0.01 + 40 / 800)


def test_predictive_history_is_a_ring_of_the_last_history_size_completions():
    """history_size 3: after five completions the model holds exactly the last three."""
    s = build("predictive", history_size=3, min_samples=1)
    s.choose(req(), hetero())
    for rid in range(5):
        s.on_dispatch(req(rid, prompt=1000, max_out=100), 0, 10.0)
        s.on_finish(outcome(rid, 0, finish=10.0 + rid, generated=40))
    assert len(s._history) == 3
    bucket = (length_bucket(1000), length_bucket(40))
    assert s._service[bucket] == [3, 2.0 + 3.0 + 4.0]
    s.on_finish(outcome(99, 0, REJECTED))  # unknown or rejected: nothing learnt
    assert len(s._history) == 3


# -- cache locality --------------------------------------------------------------------------

PREFIX = list(range(100, 110))  # ten shared blocks: 160 tokens, key = 8th block (128 tokens)


def test_cache_locality_keys_on_the_first_128_tokens_and_sticks_to_the_owner():
    """Same first 8 blocks -> same node, even when it is not the least loaded."""
    blocks = {0: PREFIX, 1: PREFIX[:8], 2: [*PREFIX[:8], 999], 3: PREFIX[:7]}
    s = build("cache_locality")
    assert s.prefix_key(req(1), view(3, blocks=blocks)) == 107
    assert s.prefix_key(req(3), view(3, blocks=blocks)) is None
    assert s.choose(req(0), view(3, inflight=(2, 1, 3), blocks=blocks)) == 1
    assert s.choose(req(1), view(3, inflight=(2, 7, 0), blocks=blocks)) == 1
    assert s.choose(req(2), view(3, inflight=(0, 7, 0), accepting=(True, True, False),
                             blocks=blocks)) == 1
    assert s.choose(req(3), view(3, inflight=(2, 7, 0), blocks=blocks)) == 2  # no key


def test_cache_locality_spills_from_an_overloaded_owner_and_remembers_the_new_one():
    """Owner with >= 8 in flight and > 2 x the others' mean: go least loaded, new owner."""
    blocks = dict.fromkeys(range(5), PREFIX)
    s = build("cache_locality")
    assert s.choose(req(0), view(3, inflight=(0, 1, 1), blocks=blocks)) == 0
    assert s.choose(req(1), view(3, inflight=(8, 4, 4), blocks=blocks)) == 0  # 8 = 2 x 4
    assert s.choose(req(2), view(3, inflight=(9, 5, 4), blocks=blocks)) == 0  # 9 = 2 x 4.5
    assert s.choose(req(2), view(3, inflight=(10, 5, 4), blocks=blocks)) == 2
    assert s.stats() == {"locality_spills": 1}
    assert s.choose(req(3), view(3, inflight=(0, 5, 6), blocks=blocks)) == 2
    assert s.choose(req(4), view(3, inflight=(0, 5, 6), accepting=(True, True, False),
                             blocks=blocks)) == 0  # owner closed: least loaded


def test_cache_locality_owner_table_is_a_bounded_lru():
    """max_keys 2: a third key evicts the least recently used one."""
    blocks = {r: [r * 1000 + j for j in range(8)] for r in range(3)}
    s = build("cache_locality", max_keys=2)
    for r in range(3):
        s.choose(req(r), view(3, blocks=blocks))
    assert list(s.owner) == [1007, 2007]


# -- session affinity ------------------------------------------------------------------------

def test_session_affinity_keeps_a_session_home_and_migrates_when_overloaded():
    """First turn least loaded; later turns home; overloaded home -> migrate and count it."""
    s = build("session_affinity")
    assert s.choose(req(0, session=4), view(3, inflight=(3, 0, 2))) == 1
    assert s.choose(req(1, session=4), view(3, inflight=(0, 6, 0))) == 1
    assert s.choose(req(2, session=4), view(3, inflight=(3, 9, 1))) == 2
    assert s.stats() == {"session_migrations": 1}
    assert s.choose(req(3, session=4), view(3, inflight=(0, 0, 3))) == 2
    assert s.choose(req(4, session=-1), view(3, inflight=(0, 0, 3))) in {0, 1}


def test_session_affinity_absolute_cap_and_bounded_table():
    """max_inflight_per_node moves a session off a home above it; the table is an LRU."""
    s = build("session_affinity", max_inflight_per_node=3, max_sessions=2)
    assert s.choose(req(0, session=1), view(2, inflight=(0, 1))) == 0
    assert s.choose(req(1, session=1), view(2, inflight=(4, 3))) == 1
    assert s.stats() == {"session_migrations": 1}
    for session in (2, 3):
        s.choose(req(9, session=session), view(2))
    assert list(s.home) == [2, 3]


# -- auto ------------------------------------------------------------------------------------

def chosen(s: Strategy) -> dict[str, float]:
    return {k: v for k, v in s.stats().items() if k.startswith("chose_")}


@pytest.mark.parametrize(("n", "expected"), [(1, "least_loaded"), (4, "least_loaded"),
                                              (5, "token_aware"), (32, "token_aware"),
                                              (33, "predictive")])
def test_auto_picks_by_cluster_size(n, expected):
    """1-4 nodes least loaded, 5-32 token aware, more predictive (no shared prefix)."""
    s = build("auto")
    s.choose(req(), view(n))
    assert chosen(s) == {f"chose_{expected}": 1}


def test_auto_sends_long_prompts_and_large_cluster_prefixes_to_cache_locality():
    """Prompts over 4096 tokens go to cache_locality; on > 32 nodes so do shared prefixes."""
    s = build("auto")
    s.choose(req(0, prompt=4097), view(8))
    s.choose(req(1, prompt=4096), view(8))
    assert s.stats() == {"chose_cache_locality": 1, "chose_token_aware": 1,
                         "cache_locality.locality_spills": 0}
    big = build("auto")
    blocks = {0: PREFIX}
    big.choose(req(0), view(40, blocks=blocks))
    big.choose(req(1), view(40, blocks=blocks))
    assert big.stats()["chose_cache_locality"] == 1
    assert big.stats()["chose_predictive"] == 1


def test_auto_uses_multi_model_or_falls_back_to_least_loaded():
    """Nodes of two models -> multi_model; an unregistered name falls back to least_loaded."""
    two_models = view(nodes=(node(0, model="a"), node(1, model="b"), node(2, model="a")))
    s = build("auto")
    s.choose(req(), two_models)
    expected = "multi_model" if "multi_model" in strategies else "least_loaded"
    assert chosen(s) == {f"chose_{expected}": 1}
    params = Auto.Params.model_construct(**{**Auto.Params().__dict__,
                                            "multi_model": ComponentSpec(name="no_such")})
    fallback = Auto(params, np.random.default_rng(0))
    fallback.choose(req(), two_models)
    assert chosen(fallback) == {"chose_least_loaded": 1}


def test_auto_forwards_every_hook_to_every_inner_strategy():
    """The token_aware inner strategy's ledger sees a long prompt routed by cache_locality."""
    s = build("auto")
    s.choose(req(0, prompt=5000), view(8))
    s.on_dispatch(req(0, prompt=5000, max_out=10), 3, 10.0)
    ledger = s._inner["medium"]
    assert ledger.outstanding_tokens[3] == 5010
    s.on_first_token(0, 3, 10.5)
    s.on_finish(outcome(0, 3))
    assert ledger.outstanding_tokens[3] == 0


def test_auto_rejects_a_bad_inner_spec_at_load():
    """A misspelt inner strategy fails validation naming it."""
    with pytest.raises(ValueError, match="token_awar"):
        Auto.Params(medium={"name": "token_awar"})


def test_weights_of_the_wrong_length_fail_when_the_scenario_loads(tmp_path):
    """A weight list that does not match the cluster is a load-time error naming the field."""
    from sim import app
    from sim.errors import ScenarioError

    from conftest import scenario_dict, write_scenario

    raw = scenario_dict()
    raw["router"]["strategies"] = [{"name": "weighted_round_robin",
                                    "params": {"weights": [1, 2, 3]}}]
    with pytest.raises(ScenarioError, match=r"router\.strategies\.0\.params.*3 entries"):
        app.load(write_scenario(tmp_path, raw))
