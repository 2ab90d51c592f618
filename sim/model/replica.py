"""One router instance's decision state: its strategy, its counters of what it dispatched,
and the telemetry sample its view shows (``sim.model.router``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sim.policy.base import UNSAMPLED, ClusterView, Strategy, Telemetry

if TYPE_CHECKING:
    from sim.model.router import Router

_new_tuple = tuple.__new__  # builds a named tuple from a full tuple of its fields


@dataclass
class RouterStats:
    """Counts of what the router's mechanisms did (reported in the summary)."""

    shed: int = 0
    hedges: int = 0
    retries: int = 0
    moves: int = 0
    cancelled_attempts: int = 0
    #: tokens computed by attempts that did not become the request's record
    wasted_tokens: int = 0


class Replica:
    """One router instance: a strategy, its own counters and its own telemetry clock."""

    def __init__(self, router: Router, index: int, strategy: Strategy):
        self.router = router
        self.index = index
        self.strategy = strategy
        n = len(router.cluster.nodes)
        self.inflight_requests = [0] * n
        self.inflight_tokens = [0] * n
        self.dispatched_since_sample = [0] * n
        self._telemetry: Telemetry | None = None
        self._next_sample_s = -math.inf
        cls = type(strategy)
        self.hedges = cls.hedge_after_s is not Strategy.hedge_after_s
        self.retries = cls.retry_after_s is not Strategy.retry_after_s
        self.watches_first_token = cls.on_first_token is not Strategy.on_first_token
        # hooks the strategy leaves as no-ops are not called
        self.watches_dispatch = cls.on_dispatch is not Strategy.on_dispatch
        self.watches_finish = cls.on_finish is not Strategy.on_finish
        # the nodes' telemetry is scraped only for a strategy or admission control that reads it
        self.scrapes = strategy.reads_telemetry or router.admission is not None

    def view(self, now: float, accepting: tuple[bool, ...]) -> ClusterView:
        """The snapshot the strategy decides on."""
        router = self.router
        if now >= self._next_sample_s:
            self._telemetry = (router.cluster.sample_telemetry() if self.scrapes
                               else UNSAMPLED)  # type: ignore[assignment]
            self.dispatched_since_sample = [0] * len(self.dispatched_since_sample)
            interval = router.telemetry_interval_s
            self._next_sample_s = (math.floor(now / interval) + 1) * interval if interval else now
        assert self._telemetry is not None
        # ClusterView(...) without its Python-level __new__: one of these per request
        return _new_tuple(ClusterView, (
            now, router.cluster.infos, accepting, tuple(self.inflight_requests),
            tuple(self.inflight_tokens), self._telemetry, router.table.prompt_block_ids,
            tuple(self.dispatched_since_sample), router.cached_prefix_blocks))

    def send(self, rid: int, node: int) -> None:
        """Dispatch one attempt of ``rid`` to ``node``."""
        router = self.router
        tokens = router.request_tokens[rid]
        self.inflight_requests[node] += 1
        self.inflight_tokens[node] += tokens
        self.dispatched_since_sample[node] += tokens
        router.table.node[rid] = node
        router.nodes[node].submit(rid)

    def release(self, rid: int, node: int) -> None:
        """An attempt left ``node``."""
        self.inflight_requests[node] -= 1
        self.inflight_tokens[node] -= self.router.request_tokens[rid]
