"""Join the shortest queue, as the nodes report it."""

from __future__ import annotations

from operator import add

from sim.policy.base import ClusterView, RequestInfo, Strategy, argmin_random_tie, strategies


@strategies.register("jsq")
class JoinShortestQueue(Strategy):
    """Send to the node reporting the fewest requests waiting plus running.

    Reads node telemetry, so it sees the queues as they were ``telemetry_age_s`` ago; with
    ``telemetry_interval_s: 0`` it is textbook JSQ (Winston 1977: optimal among
    non-anticipating policies for identical exponential servers). With stale telemetry every
    request between two refreshes goes to the same node: the herding effect. Ties are random.
    """

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        t = view.telemetry
        lengths = list(map(add, t.queued, t.running))
        return argmin_random_tie(lengths, view.accepting_ids(), self.draws)
