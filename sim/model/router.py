"""The router: a SimPy process that dispatches each arrival to the node a strategy picks."""

from __future__ import annotations

import math
from collections.abc import Generator

import simpy

from sim.errors import SimulationError
from sim.model.cluster import Cluster
from sim.model.requests import Outcome, RequestTable
from sim.policy.base import ClusterView, RequestInfo, Strategy, Telemetry


class Router:
    """Streams arrivals in time order, asks the strategy, and keeps router-local counters.

    Router-local counters (requests and estimated tokens in flight per node) change at every
    dispatch and completion, so they are always fresh. Node telemetry is sampled on a clock of
    period ``telemetry_interval_s``: the sample is taken lazily, at the first routing decision
    after each tick, and reused until the next tick (0 = a fresh sample for every decision).
    """

    def __init__(self, env: simpy.Environment, cluster: Cluster, table: RequestTable,
                 strategy: Strategy, telemetry_interval_s: float):
        self.env = env
        self.cluster = cluster
        self.table = table
        self.strategy = strategy
        self.telemetry_interval_s = telemetry_interval_s
        n = len(cluster.nodes)
        self.inflight_requests = [0] * n
        self.inflight_tokens = [0] * n
        self.accepting = (True,) * n
        self.outstanding = 0
        self.dispatched = 0
        self.arrivals_done = False
        self.drained = env.event()
        self._telemetry: Telemetry | None = None
        self._next_sample_s = -math.inf
        cluster.on_done = self.on_done

    def run(self) -> Generator[simpy.Event, None, None]:
        """The arrival process: one pending timeout at a time, never a process per request."""
        env = self.env
        arrivals = self.table.arrival_s
        for rid, t in enumerate(arrivals):
            delay = t - env.now
            if delay > 0:
                yield env.timeout(delay)
            self._dispatch(rid)
        self.arrivals_done = True
        self._check_drained()

    def _view(self, now: float) -> ClusterView:
        if now >= self._next_sample_s:
            self._telemetry = self.cluster.sample_telemetry()
            interval = self.telemetry_interval_s
            self._next_sample_s = (math.floor(now / interval) + 1) * interval if interval else now
        assert self._telemetry is not None
        return ClusterView(now, self.cluster.infos, self.accepting, tuple(self.inflight_requests),
                           tuple(self.inflight_tokens), self._telemetry,
                           self.table.prompt_block_ids)

    def _dispatch(self, rid: int) -> None:
        now = self.env.now
        t = self.table
        info = RequestInfo(rid, t.arrival_s[rid], t.prompt_tokens[rid], t.max_output_tokens[rid],
                           t.session_id[rid], t.prefix_group[rid])
        node = self.strategy.choose(info, self._view(now))
        if not (isinstance(node, int) and 0 <= node < len(self.accepting)
                and self.accepting[node]):
            raise SimulationError(f"strategy '{self.strategy.registered_name}' chose {node!r}, "
                                  f"not an accepting node id")
        t.node[rid] = node
        self.inflight_requests[node] += 1
        self.inflight_tokens[node] += t.prompt_tokens[rid] + t.max_output_tokens[rid]
        self.outstanding += 1
        self.dispatched += 1
        self.strategy.on_dispatch(info, node, now)
        self.cluster.nodes[node].submit(rid)

    def on_done(self, outcome: Outcome) -> None:
        """A request left its node (completed or rejected): record it, release its counters."""
        t = self.table
        rid, node = outcome.request_id, outcome.node_id
        t.record(outcome)
        self.inflight_requests[node] -= 1
        self.inflight_tokens[node] -= t.prompt_tokens[rid] + t.max_output_tokens[rid]
        self.outstanding -= 1
        self.strategy.on_finish(outcome)
        self._check_drained()

    def _check_drained(self) -> None:
        if self.arrivals_done and self.outstanding == 0 and not self.drained.triggered:
            self.drained.succeed()
