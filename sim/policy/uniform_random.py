"""Uniform random choice among the accepting nodes."""

from __future__ import annotations

from sim.policy.base import ClusterView, RequestInfo, Strategy, strategies


@strategies.register("random")
class UniformRandom(Strategy):
    """Pick an accepting node uniformly at random.

    With Poisson arrivals the nodes are independent queues, each fed by a thinned Poisson
    stream (c independent M/M/1 queues for exponential service).
    """

    reads_telemetry = False

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        ids = view.accepting_ids()
        return ids[self.draws.index(len(ids))]
