"""Round robin over the accepting nodes."""

from __future__ import annotations

from sim.policy.base import ClusterView, RequestInfo, Strategy, strategies


@strategies.register("round_robin")
class RoundRobin(Strategy):
    """Send request ``k`` to the ``k``-th accepting node in cyclic order.

    Stateless with respect to load. With Poisson arrivals over ``c`` identical nodes each node
    sees Erlang-``c`` inter-arrival times (an E_c/M/1 queue for exponential service).
    """

    def __init__(self, params, rng) -> None:  # type: ignore[no-untyped-def]
        super().__init__(params, rng)
        self._next = 0

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        n = view.n_nodes
        for _ in range(n):
            node = self._next % n
            self._next = node + 1
            if view.accepting[node]:
                return node
        raise RuntimeError("no accepting node")
