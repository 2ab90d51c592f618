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

    reads_telemetry = False

    def __init__(self, params: StrategyParams, rng: np.random.Generator) -> None:
        super().__init__(params, rng)
        self._cycles: dict[tuple[bool, ...], list] = {}   # accepting set -> [ids, next]
        self._last: tuple[tuple[bool, ...], list] | None = None

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        accepting = view.accepting
        last = self._last
        state: list | None
        if last is not None and last[0] is accepting:  # the router reuses its tuples
            state = last[1]
        else:
            state = self._cycles.get(accepting)
            if state is None:
                ids = view.accepting_ids()
                if not ids:
                    raise RuntimeError("no accepting node")
                state = self._cycles[accepting] = [ids, 0]
            self._last = (accepting, state)
        ids, k = state
        state[1] = (k + 1) % len(ids)
        return ids[k]
