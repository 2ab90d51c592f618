"""Session affinity with migration: a conversation stays on one node until it is overloaded."""

from __future__ import annotations

from collections import OrderedDict

from pydantic import Field

from sim.policy.base import ClusterView, RequestInfo, Strategy, argmin_random_tie, strategies
from sim.policy.cache_locality import AffinityParams, is_overloaded


@strategies.register("session_affinity")
class SessionAffinity(Strategy):
    """Keep each session's requests on the node that served its first request.

    The seed document's data locality: a multi-turn session's later prompts extend the earlier
    ones, so its home node's prefix cache already holds most of each new prompt. A request
    without a session (``session_id`` -1) and a session's first request go to the least
    loaded node (router-local in-flight requests, random ties), which becomes the session's
    home. A later request goes home unless home does not accept it or is over capacity:

    * more than ``max_inflight_per_node`` router-local in-flight requests, when set, or
    * at least ``min_inflight`` (8) and more than ``overload_factor`` (2) times the mean of the
      other accepting nodes (the bounded-load rule of ``cache_locality``).

    Then the session migrates to the least loaded node, which becomes its home; ``stats()``
    reports the count as ``session_migrations``. The table of homes is an LRU of at most
    ``max_sessions`` sessions (a forgotten session starts again on the least loaded node).
    """

    reads_telemetry = False

    class Params(AffinityParams):
        max_inflight_per_node: int | None = Field(
            None, ge=1, description="home is over capacity above this many router-local "
                                    "in-flight requests; null: only the relative rule")
        max_sessions: int = Field(100_000, ge=1, description="largest session table (LRU)")

    params: Params

    def __init__(self, params, rng) -> None:  # type: ignore[no-untyped-def]
        super().__init__(params, rng)
        self.home: OrderedDict[int, int] = OrderedDict()
        self.migrations = 0

    def over_capacity(self, view: ClusterView, node: int, ids: list[int]) -> bool:
        """Whether ``node`` is too loaded to take one more request of a session it hosts."""
        p = self.params
        cap = p.max_inflight_per_node
        if cap is not None and view.inflight_requests[node] > cap:
            return True
        return is_overloaded(view, node, ids, p.overload_factor, p.min_inflight)

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        ids = view.accepting_ids()
        session = request.session_id
        if session < 0:
            return argmin_random_tie(view.inflight_requests, ids, self.draws)
        home = self.home.get(session)
        if home is not None and view.accepting[home] and not self.over_capacity(view, home, ids):
            self.home.move_to_end(session)
            return home
        node = argmin_random_tie(view.inflight_requests, ids, self.draws)
        self.migrations += home is not None and node != home
        self.home[session] = node
        self.home.move_to_end(session)
        if len(self.home) > self.params.max_sessions:
            self.home.popitem(last=False)
        return node

    def stats(self) -> dict[str, float]:
        """``session_migrations``: requests whose session moved to another node."""
        return {"session_migrations": self.migrations}
