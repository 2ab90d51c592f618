"""Tools for strategy authors: build views, run a tiny cluster, check the strategy contract.

>>> import numpy as np
>>> from sim.testing import REQUEST, check_strategy, make_view, run_tiny_cluster
>>> from sim.policy.least_loaded import LeastLoaded
>>> strategy = LeastLoaded(LeastLoaded.Params(), np.random.default_rng(0))
>>> strategy.choose(REQUEST, make_view(inflight=(3, 0, 1)))
1
>>> check_strategy(LeastLoaded)           # raises AssertionError naming what is wrong
>>> run_tiny_cluster(LeastLoaded)["requests"]["measured"]["completed"] > 0
True

``check_strategy`` is the contract every registered strategy meets in simlb's own tests
(``tests/test_strategies.py``); call it from your package's tests on your own class.
``run_tiny_cluster`` runs a class (registered or not) on a two-node cluster with cheap linear
costs for half a simulated minute, in well under a second, and returns ``summary.json`` as a
dict.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sim.outcome import COMPLETED, Outcome
from sim.policy.base import (
    ClusterView,
    NodeInfo,
    RequestInfo,
    Strategy,
    StrategyParams,
    Telemetry,
)

#: a request as the router sees it: id 0 at t=10 s, 100 prompt tokens, at most 50 output
REQUEST = RequestInfo(0, 10.0, 100, 50, -1, -1)

#: a node that is cheap to simulate: linear costs, ample KV
TINY_NODE: dict[str, Any] = {
    "count": 2,
    "cost_model": {"name": "linear", "params": {"step_s": 0.01, "prefill_token_s": 2e-5,
                                                "decode_seq_s": 2e-4, "ctx_token_s": 1e-7}},
    "kv_capacity_tokens": 100_000,
}


def make_view(inflight: Sequence[int] = (0, 0, 0), tokens: Sequence[int] | None = None,
              queued: Sequence[int] | None = None, running: Sequence[int] | None = None,
              kv: Sequence[int] | None = None, accepting: Sequence[bool] | None = None,
              now: float = 10.0, taken: float = 9.5, *,
              nodes: Sequence[NodeInfo] | None = None,
              recent_e2e_s: Sequence[float] | None = None,
              prompt_block_ids: Callable[..., list[int]] | None = None) -> ClusterView:
    """A ``ClusterView`` of ``len(inflight)`` nodes; omitted signals are zero, every node
    accepts, and each node is ``NodeInfo(i, "g", "p", max_num_seqs=8,
    max_num_batched_tokens=64, kv_total_blocks=100, block_size_tokens=16)``.

    Args:
        inflight, tokens: router counters (requests, prompt + max output tokens) per node.
        queued, running, kv: reported telemetry per node (kv: blocks in use, of 100).
        accepting: which nodes take the request.
        now, taken: decision time and telemetry sample time (age ``now - taken``).
        nodes: static node facts instead of the defaults.
        recent_e2e_s: reported recent end-to-end latency per node (NaN: none yet).
        prompt_block_ids: ``(request_id, block_size[, max_blocks]) -> ids``; default none.
    """
    n = len(inflight)
    infos = tuple(nodes) if nodes is not None else tuple(
        NodeInfo(i, "g", "p", 8, 64, 100, 16) for i in range(n))
    telemetry = Telemetry(taken, tuple(queued or (0,) * n), tuple(running or (0,) * n),
                          tuple(kv or (0,) * n),
                          recent_e2e_s=tuple(recent_e2e_s) if recent_e2e_s is not None else ())
    return ClusterView(now, infos, tuple(accepting or (True,) * n), tuple(inflight),
                       tuple(tokens or (0,) * n), telemetry,
                       prompt_block_ids or (lambda rid, bs, limit=None: []))


def random_views(count: int, seed: int = 0, max_nodes: int = 6) -> Iterator[ClusterView]:
    """``count`` varied views (1 to ``max_nodes`` nodes, random loads, at least one node
    accepting), the same for the same seed."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n = int(rng.integers(1, max_nodes + 1))
        accepting = rng.random(n) < 0.8
        accepting[rng.integers(n)] = True
        yield make_view(inflight=rng.integers(0, 21, n).tolist(),
                        tokens=rng.integers(0, 5001, n).tolist(),
                        queued=rng.integers(0, 21, n).tolist(),
                        running=rng.integers(0, 9, n).tolist(),
                        kv=rng.integers(0, 101, n).tolist(),
                        accepting=accepting.tolist())


def check_choice(cls: type[Strategy], view: ClusterView, seed: int = 0,
                 params: StrategyParams | None = None, request: RequestInfo = REQUEST) -> None:
    """One example of the contract: two instances with the same seed make the same five
    choices on ``view``, each an accepting node id (a Python int), and the hooks accept them.

    Raises:
        AssertionError: naming the broken rule.
    """
    p = params if params is not None else cls.Params()
    a, b = cls(p, np.random.default_rng(seed)), cls(p, np.random.default_rng(seed))
    picks_a = [a.choose(request, view) for _ in range(5)]
    picks_b = [b.choose(request, view) for _ in range(5)]
    name = cls.__name__
    assert picks_a == picks_b, f"{name}: same seed, different choices {picks_a} / {picks_b}"
    for p_ in picks_a:
        assert isinstance(p_, int), f"{name}: chose {p_!r}, not an int node id"
        assert 0 <= p_ < view.n_nodes and view.accepting[p_], (
            f"{name}: chose node {p_}, not accepting in {view.accepting}")
    a.on_dispatch(request, picks_a[0], view.now_s)
    a.on_first_token(request.request_id, picks_a[0], view.now_s + 0.1)
    a.on_finish(Outcome(request.request_id, picks_a[0], COMPLETED, view.now_s,
                        view.now_s + 0.1, view.now_s + 1.0, 50, 0, 0, 0, 150))


def check_strategy(cls: type[Strategy], params: StrategyParams | None = None,
                   examples: int = 40, seed: int = 0) -> None:
    """The strategy contract: a docstring, ``Params()`` built from defaults (or ``params``),
    and ``check_choice`` on ``examples`` random views.

    Raises:
        AssertionError: naming the broken rule and the view it broke on.
    """
    assert issubclass(cls, Strategy), f"{cls!r} is not a sim.policy.Strategy subclass"
    assert (cls.__doc__ or "").strip(), f"{cls.__name__} has no docstring"
    p = params if params is not None else cls.Params()
    for k, view in enumerate(random_views(examples, seed)):
        try:
            check_choice(cls, view, seed + k, p)
        except AssertionError as exc:
            raise AssertionError(f"{exc} (view {k}: {view})") from None


def tiny_scenario(**changes: Any) -> dict[str, Any]:
    """A small valid scenario tree (two linear-cost nodes, 8 req/s for 30 s); keyword
    arguments replace top-level keys."""
    raw: dict[str, Any] = {
        "schema_version": 1, "name": "tiny", "seed": 7, "duration_s": 30.0, "warmup_s": 5.0,
        "cluster": {"node_groups": [copy.deepcopy(TINY_NODE)]},
        "router": {"strategies": [{"name": "round_robin"}], "telemetry_interval_s": 0.1},
        "workload": {
            "arrivals": {"name": "poisson", "params": {"rate_rps": 8.0}},
            "prompt_tokens": {"name": "uniform", "params": {"low_tokens": 50,
                                                            "high_tokens": 400}},
            "output_tokens": {"name": "uniform", "params": {"low_tokens": 5,
                                                            "high_tokens": 120}},
        },
    }
    raw.update(changes)
    return raw


def run_tiny_cluster(cls: type[Strategy], params: StrategyParams | dict[str, Any] | None = None,
                     scenario: dict[str, Any] | None = None, seed: int | None = None
                     ) -> dict[str, Any]:
    """Simulate ``cls`` (registered or not) on ``scenario`` (default ``tiny_scenario()``) and
    return its summary (what ``summary.json`` holds).

    Raises:
        ScenarioError: the scenario is invalid or ``params`` do not fit the cluster.
    """
    from sim.build import StrategyChoice, resolve
    from sim.runner import simulate, workload_for
    from sim.scenario import StrategySpec, parse_scenario

    raw = copy.deepcopy(scenario) if scenario is not None else tiny_scenario()
    if seed is not None:
        raw["seed"] = seed
    resolved = resolve(parse_scenario(raw, "<tiny>"), "<tiny>", Path.cwd())
    if not isinstance(params, StrategyParams):
        params = cls.Params.model_validate(params or {})
    cls.check_cluster(params, tuple(_infos(resolved)))
    label = cls.registered_name or "strategy"
    choice = StrategyChoice(StrategySpec(name=label), cls, params)
    result = simulate(resolved, choice, 0, workload_for(resolved, 0))
    return dict(result.summary)


def _infos(resolved: Any) -> list[NodeInfo]:
    from sim.model.cluster import node_info

    return [node_info(i, s) for i, s in enumerate(resolved.node_specs)]
