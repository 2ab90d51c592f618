"""Monitoring and adaptation: switch strategy when load stays unbalanced, and rebalance queues.

The seed document's monitor computes the coefficient of variation (CV) of node load on a
clock and, when it stays above 0.3, switches the balancing strategy; queued work is moved from
the most to the least loaded node. Two fixes: the CV is of each node's load *averaged over the
check interval* (every telemetry sample taken in it), not of one snapshot, because a snapshot
of a few requests per node has a CV above 0.3 from arrival noise alone (about
``1 / sqrt(mean)`` for Poisson counts); and it is computed among the replicas of one model at a
time, since nodes serving different models are not comparable. Moves go only between nodes
serving the same model.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from sim.outcome import Outcome
from sim.policy.base import (
    ClusterView,
    RequestInfo,
    Strategy,
    StrategyParams,
    build_inner,
    strategies,
)
from sim.policy.hedged import validate_inner
from sim.spec import ComponentSpec


def load_cv(load: list[float]) -> float:
    """Coefficient of variation (population standard deviation / mean); 0 when idle."""
    n = len(load)
    mean = sum(load) / n
    if mean <= 0:
        return 0.0
    return math.sqrt(sum((x - mean) ** 2 for x in load) / n) / mean


@strategies.register("adaptive")
class Adaptive(Strategy):
    """Route with the first of ``strategies``; move to the next when load stays unbalanced.

    Every ``check_interval_s`` the strategy takes each node's load averaged over the telemetry
    samples of the interval (``load: queue``: waiting + running requests; ``kv``: KV blocks in
    use; ``inflight``: the router's own count) and its CV across the replicas of each model.
    When the largest CV exceeds ``cv_threshold`` (0.3, the seed's "Fair" limit) in
    ``patience`` consecutive checks, it switches to the next strategy of the list (default
    round_robin then least_loaded) and stays on the last. Every ``rebalance_interval_s`` it
    moves ``min(queued, (load_max - load_min) // 2)`` never-started queued requests from the
    most to the least loaded replica of each model (``load: queue`` telemetry) when the two
    differ by ``min_gap`` or more; the router counts the moves (``router.moves``).
    ``stats()``: ``switches``, ``checks``, ``checks_above_threshold``.
    """

    class Params(StrategyParams):
        strategies: list[ComponentSpec] = Field(
            default_factory=lambda: [ComponentSpec(name="round_robin"),
                                     ComponentSpec(name="least_loaded")],
            min_length=1, description="strategies in the order they are tried, {name, params}")
        cv_threshold: float = Field(0.3, gt=0, description="CV of node load above which a "
                                                           "check counts as unbalanced")
        patience: int = Field(3, ge=1, description="consecutive unbalanced checks before a "
                                                   "switch")
        check_interval_s: float = Field(10.0, gt=0, description="period of the balance check")
        load: Literal["queue", "kv", "inflight"] = Field(
            "queue", description="load per node: waiting + running, KV blocks in use, or "
                                 "the router's requests in flight")
        rebalance_interval_s: float | None = Field(
            5.0, gt=0, description="period of queue rebalancing; null: never")
        min_gap: int = Field(2, ge=1, description="load difference (requests) that triggers "
                                                  "a move")

        @field_validator("strategies", mode="before")
        @classmethod
        def _check_inner(cls, specs: list) -> list[ComponentSpec]:
            if not isinstance(specs, list):
                return specs  # pydantic reports the type
            return [validate_inner(s, f"strategies.{i}") for i, s in enumerate(specs)]

    params: Params

    def __init__(self, params: Params, rng: np.random.Generator) -> None:
        super().__init__(params, rng)
        self.inners = [build_inner(spec, rng, f"strategies.{i}")
                       for i, spec in enumerate(params.strategies)]
        self.active = 0
        self.rebalance_interval_s = params.rebalance_interval_s
        self.switches = self.checks = self.checks_above = 0
        self._above = 0
        self._next_check_s = params.check_interval_s
        self._last_sample_s = -math.inf
        self._sums: list[float] = []
        self._samples = 0
        self._groups: list[list[int]] | None = None

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        self._observe(view)
        return self.inners[self.active].choose(request, view)

    def _observe(self, view: ClusterView) -> None:
        """Add the view's load to the interval's sums; check the balance when it is due."""
        if view.now_s >= self._next_check_s:
            self._check(view)
            interval = self.params.check_interval_s
            self._next_check_s = (math.floor(view.now_s / interval) + 1) * interval
        taken = (view.telemetry.taken_at_s if self.params.load != "inflight" else view.now_s)
        if taken == self._last_sample_s:
            return
        self._last_sample_s = taken
        load = self._load(view)
        if not self._sums:
            self._sums = [0.0] * len(load)
        for i, x in enumerate(load):
            self._sums[i] += x
        self._samples += 1

    def _load(self, view: ClusterView) -> list[float]:
        t = view.telemetry
        if self.params.load == "queue":
            return [q + r for q, r in zip(t.queued, t.running, strict=True)]
        if self.params.load == "kv":
            return [float(b) for b in t.kv_used_blocks]
        return [float(x) for x in view.inflight_requests]

    def _check(self, view: ClusterView) -> None:
        """Count an unbalanced interval; switch after ``patience`` of them in a row."""
        if not self._samples:
            return
        means = [s / self._samples for s in self._sums]
        self._sums = [0.0] * len(means)
        self._samples = 0
        cv = max((load_cv([means[i] for i in g]) for g in self._model_groups(view)),
                 default=0.0)
        self.checks += 1
        if cv <= self.params.cv_threshold:
            self._above = 0
            return
        self.checks_above += 1
        self._above += 1
        if self._above >= self.params.patience and self.active < len(self.inners) - 1:
            self.active += 1
            self.switches += 1
            self._above = 0

    def _model_groups(self, view: ClusterView) -> list[list[int]]:
        """Node ids grouped by the model they serve (groups of two or more)."""
        if self._groups is None:
            by_model: dict[str, list[int]] = {}
            for info in view.nodes:
                by_model.setdefault(info.model, []).append(info.node_id)
            self._groups = [g for g in by_model.values() if len(g) > 1]
        return self._groups

    def rebalance(self, view: ClusterView) -> list[tuple[int, int, int]]:
        """Move queued requests from the most to the least loaded replica of each model."""
        t = view.telemetry
        moves = []
        for group in self._model_groups(view):
            load = {i: t.queued[i] + t.running[i] for i in group}
            src = max(group, key=lambda i: (load[i], -i))
            dst = min(group, key=lambda i: (load[i], i))
            gap = load[src] - load[dst]
            if gap >= self.params.min_gap and t.queued[src] > 0:
                moves.append((src, dst, min(t.queued[src], gap // 2)))
        return moves

    def on_dispatch(self, request: RequestInfo, node_id: int, now_s: float) -> None:
        for inner in self.inners:
            inner.on_dispatch(request, node_id, now_s)

    def on_first_token(self, request_id: int, node_id: int, now_s: float) -> None:
        for inner in self.inners:
            inner.on_first_token(request_id, node_id, now_s)

    def on_node_down(self, node_id: int) -> None:
        for inner in self.inners:
            inner.on_node_down(node_id)

    def on_finish(self, outcome: Outcome) -> None:
        for inner in self.inners:
            inner.on_finish(outcome)

    def stats(self) -> dict[str, float]:
        """Switches made, balance checks made and checks found above the threshold."""
        return {"switches": self.switches, "checks": self.checks,
                "checks_above_threshold": self.checks_above}
