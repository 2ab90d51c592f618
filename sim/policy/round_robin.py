"""Round robin over the accepting nodes."""

from __future__ import annotations

import numpy as np

from sim.policy.base import ClusterView, RequestInfo, Strategy, StrategyParams, strategies


@strategies.register("round_robin")
class RoundRobin(Strategy):
    """Send request ``k`` to the ``k``-th accepting node in cyclic order.

    Stateless with respect to load. With Poisson arrivals over ``c`` identical nodes each node
    sees Erlang-``c`` inter-arrival times (an E_c/M/1 queue for exponential service). One cycle
    is kept per set of accepting nodes (per model in a multi-model cluster), so each model's
    replicas share its requests evenly; a single pointer skipping the other model's nodes
    would send most of a model's requests to the replica after the other model's block.
    """

    def __init__(self, params: StrategyParams, rng: np.random.Generator) -> None:
        super().__init__(params, rng)
        self._cycles: dict[tuple[bool, ...], list[int]] = {}
        self._next: dict[tuple[bool, ...], int] = {}

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        accepting = view.accepting
        cycle = self._cycles.get(accepting)
        if cycle is None:
            cycle = self._cycles[accepting] = view.accepting_ids()
            if not cycle:
                raise RuntimeError("no accepting node")
        k = self._next.get(accepting, 0)
        self._next[accepting] = (k + 1) % len(cycle)
        return cycle[k]
