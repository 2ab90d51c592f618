"""Fewest in-flight requests, counted by the router itself."""

from __future__ import annotations

from typing import Literal

from sim.policy.base import (
    ClusterView,
    RequestInfo,
    Strategy,
    StrategyParams,
    argmin_random_tie,
    strategies,
)


@strategies.register("least_loaded")
class LeastLoaded(Strategy):
    """Send to the node with the fewest requests this router dispatched and not seen end.

    The count is router-local (least-request / least-outstanding in AIBrix and Vidur's LOR),
    so it is never stale. Ties go to a random node among the least loaded (``tie_break:
    random``, as AIBrix does) or to the lowest id.
    """

    reads_telemetry = False

    class Params(StrategyParams):
        tie_break: Literal["random", "lowest_id"] = "random"

    params: Params

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        ids = view.accepting_ids()
        if self.params.tie_break == "lowest_id":
            return min(ids, key=lambda i: (view.inflight_requests[i], i))
        return argmin_random_tie(view.inflight_requests, ids, self.draws)
