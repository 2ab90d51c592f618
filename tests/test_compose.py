"""Composed strategies (filters, weighted scorers, a picker): the parts, validation, and the
``llm_d`` and ``dynamic`` presets picking exactly what those strategies pick."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sim.app import load
from sim.errors import ScenarioError
from sim.policy.base import RequestInfo, strategies
from sim.policy.compose import Composed, preset_params
from sim.policy.dynamic import Dynamic
from sim.policy.llm_d import LlmD
from sim.policy.pickers import filters, pickers
from sim.policy.scorers import SIGNALS, scorers
from sim.runner import simulate, workload_for
from sim.testing import make_view

REPO = Path(__file__).resolve().parents[1]
REQUEST = RequestInfo(0, 10.0, 100, 50, -1, -1)


def composed(seed: int = 0, **params) -> Composed:
    return Composed(Composed.Params(**params), np.random.default_rng(seed))


def _assignments(scenario: str, strategy: dict, sets: list[str]) -> np.ndarray:
    """Per-request node of one seeded run of ``strategy`` on a shortened shipped scenario;
    every run carries the label ``same`` so that both strategies draw from one stream."""
    spec = json.dumps([{**strategy, "label": "same"}])
    resolved = load(REPO / "scenarios" / scenario, [*sets, f"router.strategies={spec}"])
    result = simulate(resolved, resolved.strategies[0], 0, workload_for(resolved, 0))
    return result.requests["node"]


LLM_D_CASES = [
    {},
    {"queue_weight": 1.0, "kv_cache_weight": 0.0, "prefix_weight": 5.0},
    {"cache_knowledge": "precise"},
    {"session_weight": 2.0, "lru_capacity_blocks": 64, "max_prefix_blocks": 8},
]
DYNAMIC_CASES = [
    {},
    {"utilization_weight": 0.0, "kv_weight": 0.5, "queue_weight": 1.0, "latency_weight": 0.7,
     "queue_scale": 3.0},
]


#: a node crash early in the trace, noticed by fast health checks (both strategies forget it)
CRASH = ["faults={scheduled: [{group: h100, node: 2, at_s: 1.5, duration_s: 1, mode: crash}], "
         "model_load_s: 0.5}",
         "router.health={interval_s: 0.2, timeout_s: 0.1, unhealthy_threshold: 1}"]


@pytest.mark.parametrize(("params", "faults"), [(p, []) for p in LLM_D_CASES] + [({}, CRASH)])
def test_llm_d_preset_assigns_every_request_as_llm_d(params, faults):
    """Same seed, same scenario: the composed preset sends each request where llm_d does."""
    sets = ["duration_s=40", *faults]
    expected = _assignments("cache_aware.yaml", {"name": "llm_d", "params": params}, sets)
    got = _assignments("cache_aware.yaml", {"name": "composed", "params": preset_params(
        "llm_d", LlmD.Params(**params))}, sets)
    assert len(expected) > 100 and len(set(expected.tolist())) > 1
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("params", DYNAMIC_CASES)
def test_dynamic_preset_assigns_every_request_as_dynamic(params):
    """Same seed, same scenario: the composed preset sends each request where dynamic does."""
    sets = ["duration_s=30", "warmup_s=5"]
    expected = _assignments("heterogeneous.yaml", {"name": "dynamic", "params": params}, sets)
    got = _assignments("heterogeneous.yaml", {"name": "composed", "params": preset_params(
        "dynamic", Dynamic.Params(**params))}, sets)
    assert len(expected) > 100 and len(set(expected.tolist())) > 1
    np.testing.assert_array_equal(got, expected)


def test_preset_name_stands_for_the_default_parameters():
    """``preset: llm_d`` expands to llm_d's default scorers and weights."""
    expanded = Composed.Params(preset="llm_d").expanded()
    assert expanded == Composed.Params.model_validate(preset_params("llm_d"))
    assert [(s.name, s.weight) for s in expanded.scorers] == [
        ("queue", 2.0), ("kv_cache_utilization", 2.0), ("prefix_cache", 3.0),
        ("session_affinity", 0.0)]
    with pytest.raises(ValueError, match="either preset or them"):
        Composed.Params(preset="dynamic", scorers=[{"name": "queue"}])


def test_unknown_parts_and_bad_params_fail_with_their_path(tmp_path):
    """A typo in a nested part fails while the scenario loads, naming the part."""
    with pytest.raises(ValueError, match=r"scorers\.1\.name: unknown scorer 'queu'"):
        Composed.Params(scorers=[{"name": "kv_usage"}, {"name": "queu"}])
    with pytest.raises(ValueError, match=r"filters\.0\.params\.max_utilization"):
        Composed.Params(filters=[{"name": "kv_below", "params": {"max_utilization": 2}}])
    with pytest.raises(ValueError, match=r"picker\.name"):
        Composed.Params(picker={"name": "maxscore"})
    with pytest.raises(ScenarioError, match=r"router\.strategies\.0\.params"):
        load(REPO / "scenarios" / "smoke.yaml",
             ['router.strategies=[{name: composed, params: {scorers: [{name: queu}]}}]'])


@pytest.mark.parametrize("name", scorers.names())
def test_every_scorer_declares_signals_and_scores_in_unit_interval(name):
    """Each registered scorer names what it reads and returns one score in [0, 1] per
    candidate."""
    cls = scorers.get(name)
    assert cls.signals and cls.signals <= SIGNALS.keys()
    assert (cls.__doc__ or "").strip()
    view = make_view(inflight=(3, 0, 5), tokens=(900, 0, 40), queued=(4, 0, 9),
                     running=(8, 2, 1), kv=(100, 10, 55), accepting=(True, True, True))
    scores = cls(cls.Params()).score(REQUEST, view, [0, 2])
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)


def test_filters_narrow_and_never_empty_the_candidates():
    """A filter keeps the passing nodes; one that would keep none is skipped."""
    view = make_view(inflight=(0, 0, 0), queued=(0, 5, 9), kv=(10, 95, 50))
    s = composed(filters=[{"name": "kv_below", "params": {"max_utilization": 0.6}},
                          {"name": "queue_below", "params": {"max_queued": 5}}])
    assert {s.choose(REQUEST, view) for _ in range(50)} == {0}
    nobody = composed(filters=[{"name": "queue_below", "params": {"max_queued": 0}}])
    assert {nobody.choose(REQUEST, make_view(queued=(3, 4, 5))) for _ in range(60)} == {0, 1, 2}
    assert set(filters.names()) >= {"kv_below", "queue_below", "inflight_below"}


def test_weights_and_cost_scorers_rank_as_documented():
    """Benefit scores add, cost scores subtract: the emptiest queue and least in-flight win."""
    view = make_view(inflight=(5, 1, 1), queued=(0, 0, 6))
    s = composed(scorers=[{"name": "inflight", "weight": 1}, {"name": "queue", "weight": 1}])
    assert s.choose(REQUEST, view) == 1
    assert s.signals() == {"counters", "telemetry"}
    # a zero weight switches a scorer off
    off = composed(scorers=[{"name": "inflight", "weight": 0}, {"name": "queue", "weight": 1}])
    assert {off.choose(REQUEST, view) for _ in range(60)} == {0, 1}


def test_pickers():
    """max_score with lowest-id ties; softmax follows the totals; random ignores them."""
    view = make_view(inflight=(4, 0, 0, 8))
    lowest = composed(scorers=[{"name": "inflight"}],
                      picker={"name": "max_score", "params": {"tie_break": "lowest_id"}})
    assert lowest.choose(REQUEST, view) == 1
    soft = composed(seed=1, scorers=[{"name": "inflight", "weight": 1}],
                    picker={"name": "softmax", "params": {"temperature": 0.2}})
    counts = np.bincount([soft.choose(REQUEST, view) for _ in range(3000)], minlength=4)
    assert counts[1] > counts[0] > counts[3] and counts[2] > counts[0]
    rand = composed(seed=2, scorers=[{"name": "inflight", "weight": 5}], picker={"name": "random"})
    assert set(np.unique([rand.choose(REQUEST, view) for _ in range(400)])) == {0, 1, 2, 3}
    assert set(pickers.names()) >= {"max_score", "random", "softmax"}


def test_a_node_that_leaves_is_forgotten_by_the_prefix_scorer():
    """on_node_down drops the node from the prefix index, as llm_d does."""
    ids = lambda rid, bs, limit=None: [11, 12, 13, 14]  # noqa: E731
    view = make_view(inflight=(0, 0), prompt_block_ids=ids)
    request = RequestInfo(0, 10.0, 64, 10, -1, -1)
    s = composed(scorers=[{"name": "prefix_cache", "weight": 1}])
    node = s.choose(request, view)
    prefix = s.scorers[0][0]
    assert prefix.score(request, view, [0, 1])[node] == 1.0
    s.on_node_down(node)
    assert prefix.score(request, view, [0, 1]) == [0.0, 0.0]


def test_the_guides_example_loads_and_runs():
    """The YAML of docs/composing.md is a valid strategy list that runs."""
    import re

    import yaml

    text = (REPO / "docs" / "composing.md").read_text(encoding="utf-8")
    example = yaml.safe_load(re.search(r"```yaml\n(.*?)```", text, re.S).group(1))
    spec = json.dumps(example["router"]["strategies"])
    resolved = load(REPO / "scenarios" / "smoke.yaml", [f"router.strategies={spec}"])
    assert resolved.strategies[0].label == "queue_and_cache"
    result = simulate(resolved, resolved.strategies[0], 0, workload_for(resolved, 0))
    assert (result.requests["node"] >= 0).all()


def test_composed_is_a_registered_strategy():
    assert strategies.get("composed") is Composed
