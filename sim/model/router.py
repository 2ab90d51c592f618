"""The router: streams the arrivals and dispatches each to the node a strategy picks.

Router-local counters (requests and estimated tokens in flight per node) change at every
dispatch and completion, so they are always fresh. Node telemetry is sampled on a clock of
period ``telemetry_interval_s``: the sample is taken lazily, at the first routing decision
after each tick, and reused until the next tick (0 = a fresh sample for every decision).

Beyond one decision per request, the router carries the mechanisms strategies may ask for:

* **admission control**: an ``Admission`` component may reject a request before routing; it
  is recorded as rejected (node -1), never lost;
* **hedging and retries**: a strategy that overrides ``hedge_after_s`` / ``retry_after_s``
  gets a timer per request; at the deadline the router sends a copy to ``choose_other`` (hedge)
  or withdraws the request and sends it again (retry). The first attempt to finish is the
  request's record; the other attempts are withdrawn at their node's next iteration boundary
  and the tokens they computed are counted as wasted work;
* **rebalancing**: a strategy with ``rebalance_interval_s`` is asked periodically for moves and
  the router moves queued requests that never started (newest first);
* **replicas**: ``replicas`` routers share the arrivals round robin, each with its own strategy
  instance and counters of only its own dispatches (the imbalance real multi-router setups show);
* **a client concurrency cap** (``max_in_flight``): the load generator keeps at most that many
  requests in flight, as ``vllm bench serve --max-concurrency`` or a capped benchmark client
  does. A request arriving with the cap reached waits at the client, in arrival order, and is
  sent when an earlier one leaves; its ``arrival_s`` becomes the send time (latencies count
  from the send, as such clients measure them) and ``client_wait_s`` records the wait.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Generator
from typing import Any

import numpy as np
import simpy
from simpy.events import Timeout

from sim.errors import SimulationError
from sim.model.cluster import Cluster
from sim.model.replica import Replica, RouterStats
from sim.model.requests import CANCELLED, REJECTED, Outcome, RequestTable
from sim.policy.admission import Admission
from sim.policy.base import ClusterView, RequestInfo, Strategy

_new_tuple = tuple.__new__  # builds a named tuple from a full tuple of its fields


class Router:
    """Streams arrivals in time order to its replicas and collects the attempts' outcomes."""

    def __init__(self, env: simpy.Environment, cluster: Cluster, table: RequestTable,
                 strategies: list[Strategy], telemetry_interval_s: float,
                 admission: Admission | None = None,
                 cached_prefix_blocks: Callable[[int, int], int] | None = None,
                 max_in_flight: int | None = None):
        self.env = env
        self.cluster = cluster
        self.nodes = cluster.nodes
        self.table = table
        self.telemetry_interval_s = telemetry_interval_s
        self.admission = admission
        self.cached_prefix_blocks = cached_prefix_blocks
        self.stats = RouterStats()
        self.replicas = [Replica(self, i, s) for i, s in enumerate(strategies)]
        self.request_tokens = table.request_tokens
        n = len(cluster.nodes)
        # a node group with no model name serves every request
        self._serves = {model: tuple(i.model in (model, "") for i in cluster.infos)
                        for model in {info.model for info in cluster.infos} - {""}}
        self._accepting_all: tuple[bool, ...] = ()
        self._accepting_by_model: dict[str, tuple[bool, ...]] = {}
        #: True while some request kind has no accepting node (failures, autoscaling)
        self._blocked = False
        #: ``unroutable(rid)``: what to do with a request no node can take (set with faults)
        self.unroutable: Callable[[int], None] | None = None
        #: the prefill-to-decode hand-off of a cluster with roles (``sim.model.transfer``)
        self.disagg: Any = None
        self.set_available((True,) * n)
        self.outstanding = 0
        self.dispatched = 0
        self.arrivals_done = False
        self._next_arrival = 0
        #: the client's concurrency cap and the requests waiting at the client for it
        self.max_in_flight = max_in_flight
        self._held: deque[int] = deque()
        self.drained = env.event()
        #: live attempts (node ids) of requests with hedge or retry timers
        self._attempts: dict[int, set[int]] = {}
        self._final: set[int] = set()
        cluster.connect(self.on_done)
        if any(r.watches_first_token for r in self.replicas):
            for node in cluster.nodes:
                node.on_first_token = self._first_token
        for replica in self.replicas:
            if replica.strategy.rebalance_interval_s:
                env.process(self._rebalancer(replica))

    # -- arrivals -------------------------------------------------------------------------------

    def start(self) -> None:
        """Stream the arrivals: one pending timeout at a time (a callback chain, cheaper than a
        SimPy process), never an event or a process per request."""
        self._next_arrival = 0
        if self.table.n or self.table.pull():
            Timeout(self.env, self.table.arrival_s[0]).callbacks.append(self._arrive)
        else:
            self.arrivals_done = True
            self._check_drained()

    def _arrive(self, _event: simpy.Event) -> None:
        """Dispatch every request that arrives now; wait for the next arrival time."""
        env, table = self.env, self.table
        arrival_s = table.arrival_s
        now = env.now
        rid = self._next_arrival
        cap = self.max_in_flight
        while True:
            while rid < table.n and arrival_s[rid] <= now:
                if cap is not None and (self._held or self.outstanding >= cap):
                    self._held.append(rid)
                else:
                    self._send_new(rid)
                rid += 1
            # a streamed table loads its next chunk when the loaded requests are used up
            if rid < table.n or not table.pull():
                break
        self._next_arrival = rid
        if rid < table.n:
            Timeout(env, arrival_s[rid] - now).callbacks.append(self._arrive)
        else:
            self.arrivals_done = True
            self._check_drained()

    def _send_new(self, rid: int) -> None:
        """Route a request the client sends now (to its replica, round robin by id)."""
        self._dispatch(self._replica_of(rid), rid)

    def _release_held(self) -> None:
        """Send waiting requests while the client's cap allows (after a request left)."""
        held, cap, table = self._held, self.max_in_flight, self.table
        assert cap is not None
        now = self.env.now
        while held and self.outstanding < cap:
            rid = held.popleft()
            table.client_wait_s[rid] = now - table.arrival_s[rid]
            table.arrival_s[rid] = now
            self._send_new(rid)
        if not held:
            self._check_drained()

    def _info(self, rid: int) -> RequestInfo:
        t = self.table
        return _new_tuple(RequestInfo, (rid, t.arrival_s[rid], t.prompt_tokens[rid],
                                        t.max_output_tokens[rid], t.session_id[rid],
                                        t.prefix_group[rid], t.model[rid], t.sheddable[rid]))

    def _accepting(self, info: RequestInfo) -> tuple[bool, ...]:
        if not info.model:
            return self._accepting_all
        accepting = self._accepting_by_model.get(info.model)
        if accepting is None and any(not i.model for i in self.cluster.infos):
            return self._accepting_all
        if accepting is None:
            raise SimulationError(f"request {info.request_id} asks for model '{info.model}', "
                                  f"which no node serves")
        return accepting

    def _dispatch(self, replica: Replica, rid: int) -> None:
        now = self.env.now
        info = self._info(rid)
        view = replica.view(now, self._accepting(info) if info.model else self._accepting_all)
        self.outstanding += 1
        self.dispatched += 1
        if self.admission is not None and not self.admission.admit(info, view):
            self.stats.shed += 1
            self._reject(rid, now)
            return
        if self._blocked and not any(view.accepting):
            self._no_node(rid)
            return
        strategy = replica.strategy
        if self.disagg is not None:
            self.disagg.dispatch(replica, info, view)
            return
        node = strategy.choose(info, view)
        if type(node) is not int or not (0 <= node < len(view.accepting)
                                         and view.accepting[node]):
            self._check_node(strategy, node, view)
        if replica.watches_dispatch:
            strategy.on_dispatch(info, node, now)
        if replica.hedges or replica.retries:
            self._arm_timers(replica, info, view, node)
        replica.send(rid, node)

    def _reject(self, rid: int, now: float) -> None:
        nan = math.nan
        self.table.record(Outcome(rid, -1, REJECTED, nan, nan, now, 0, 0, 0, 0, 0))
        self.outstanding -= 1
        if self._held:
            self._release_held()
        self._check_drained()

    @staticmethod
    def _check_node(strategy: Strategy, node: object, view: ClusterView) -> None:
        if not (isinstance(node, (int, np.integer)) and 0 <= node < len(view.accepting)
                and view.accepting[node]):
            raise SimulationError(f"strategy '{strategy.registered_name}' chose {node!r}, "
                                  f"not an accepting node id")

    # -- failures and elasticity (sim.model.faults, health, autoscaler) ----------------------

    def set_available(self, available: tuple[bool, ...]) -> None:
        """Route only to the nodes marked available (health checks, drains, autoscaling)."""
        self._accepting_all = available
        self._accepting_by_model = {m: tuple(a and b for a, b in zip(serves, available,
                                                                     strict=True))
                                    for m, serves in self._serves.items()}
        self._blocked = not (any(available) and all(map(any,
                                                        self._accepting_by_model.values())))

    def _no_node(self, rid: int) -> None:
        """No node can take the request now (a gateway's 503 "no healthy upstream")."""
        if self.unroutable is None:
            raise SimulationError(f"request {rid}: no node is available")
        self.unroutable(rid)

    def attempt_failed(self, outcome: Outcome) -> bool:
        """An attempt failed on its node (lost, refused or timed out). Returns True when the
        request has no other attempt and no record yet, so it must be retried or failed."""
        rid, node = outcome.request_id, outcome.node_id
        replica = self._replica_of(rid)
        replica.release(rid, node)
        if replica.watches_finish:
            replica.strategy.on_finish(outcome)
        attempts = self._attempts.get(rid)
        if attempts is None:
            return True
        attempts.discard(node)
        if attempts:
            return False
        del self._attempts[rid]
        if rid in self._final:
            self._final.discard(rid)
            self._close()
            return False
        return True

    def record_failure(self, outcome: Outcome) -> None:
        """The request failed for good (no retry left): ``outcome`` is its record."""
        self.table.record(outcome)
        self._close()

    def resend(self, rid: int, exclude: frozenset[int]) -> int | None:
        """Dispatch a new attempt of an outstanding request to a node not in ``exclude`` if
        one accepts (any accepting node otherwise); None when no node accepts."""
        replica = self._replica_of(rid)
        info = self._info(rid)
        now = self.env.now
        view = replica.view(now, self._accepting(info))
        if not any(view.accepting):
            return None
        strategy = replica.strategy
        node = strategy.choose_other(info, view, exclude)
        if node is None:
            node = strategy.choose(info, view)
        self._check_node(strategy, node, view)
        if replica.watches_dispatch:
            strategy.on_dispatch(info, node, now)
        if replica.hedges or replica.retries:
            self._arm_timers(replica, info, view, node)
        replica.send(rid, node)
        return node

    def _close(self) -> None:
        """A request left the system."""
        self.outstanding -= 1
        if self._held:
            self._release_held()
        self._check_drained()

    # -- outcomes -------------------------------------------------------------------------------

    def _replica_of(self, rid: int) -> Replica:
        """The replica a request was sent to: round robin by id (clients spread over the
        router replicas), so no per-request list is kept."""
        replicas = self.replicas
        return replicas[0] if len(replicas) == 1 else replicas[rid % len(replicas)]

    def on_done(self, outcome: Outcome) -> None:
        """An attempt left its node: record the request or count wasted work."""
        rid, node = outcome.request_id, outcome.node_id
        replica = self._replica_of(rid)
        replica.release(rid, node)
        attempts = self._attempts.get(rid)
        if attempts is None:
            self.table.record(outcome)
            if replica.watches_finish:
                replica.strategy.on_finish(outcome)
            self.outstanding -= 1
            if self._held:
                self._release_held()
            self._check_drained()
            return
        attempts.discard(node)
        if outcome.status == CANCELLED or rid in self._final:
            self.stats.cancelled_attempts += outcome.status == CANCELLED
            self.stats.wasted_tokens += outcome.computed_tokens
        else:
            self.table.record(outcome)
            self._final.add(rid)
            for other in attempts:
                self.cluster.nodes[other].cancel(rid)
        replica.strategy.on_finish(outcome)
        if not attempts:
            del self._attempts[rid]
            self._final.discard(rid)
            self.outstanding -= 1
            if self._held:
                self._release_held()
            self._check_drained()

    def has_live_attempts(self, first: int, end: int) -> bool:
        """True when a request with an id in ``[first, end)`` still has an attempt that may
        run on (hedged or retried requests keep their losers until these leave)."""
        return any(first <= rid < end for rid in self._attempts)

    def _first_token(self, rid: int, node: int, now: float) -> None:
        self._replica_of(rid).strategy.on_first_token(rid, node, now)

    def _check_drained(self) -> None:
        if (self.arrivals_done and self.outstanding == 0 and not self._held
                and not self.drained.triggered):
            self.drained.succeed()

    # -- hedging and retries --------------------------------------------------------------------

    def _arm_timers(self, replica: Replica, info: RequestInfo, view: ClusterView,
                    node: int) -> None:
        strategy = replica.strategy
        armed = False
        for delay, fire in ((strategy.hedge_after_s(info, view) if replica.hedges else None,
                             self._hedge),
                            (strategy.retry_after_s(info, view) if replica.retries else None,
                             self._retry)):
            if delay is not None:
                timer = self.env.timeout(max(0.0, delay))
                timer.callbacks.append(lambda _e, f=fire: f(replica, info))
                armed = True
        if armed:
            self._attempts[info.request_id] = {node}

    def _hedge(self, replica: Replica, info: RequestInfo) -> None:
        attempts = self._attempts.get(info.request_id)
        if attempts is None or info.request_id in self._final:
            return
        view = replica.view(self.env.now, self._accepting(info))
        node = replica.strategy.choose_other(info, view, frozenset(attempts))
        if node is None:
            return
        self._check_node(replica.strategy, node, view)
        self.stats.hedges += 1
        attempts.add(node)
        replica.send(info.request_id, node)

    def _retry(self, replica: Replica, info: RequestInfo) -> None:
        rid = info.request_id
        attempts = self._attempts.get(rid)
        if attempts is None or rid in self._final:
            return
        now = self.env.now
        view = replica.view(now, self._accepting(info))
        node = replica.strategy.choose_other(info, view, frozenset(attempts))
        if node is None:
            return
        self._check_node(replica.strategy, node, view)
        self.stats.retries += 1
        for other in attempts:
            self.cluster.nodes[other].cancel(rid)
        attempts.add(node)
        replica.send(rid, node)
        again = replica.strategy.retry_after_s(info, view)
        if again is not None:
            self.env.timeout(max(0.0, again)).callbacks.append(
                lambda _e: self._retry(replica, info))

    # -- rebalancing ----------------------------------------------------------------------------

    def _rebalancer(self, replica: Replica) -> Generator[simpy.Event, None, None]:
        interval = replica.strategy.rebalance_interval_s
        assert interval
        while True:
            yield self.env.timeout(interval)
            view = replica.view(self.env.now, self._accepting_all)
            for src, dst, count in replica.strategy.rebalance(view):
                self._move(replica, src, dst, count)

    def _move(self, replica: Replica, src: int, dst: int, count: int) -> None:
        """Move up to ``count`` never-started requests of this replica from src to dst."""
        if src == dst or count <= 0:
            return
        node = self.cluster.nodes[src]
        dst_model = self.cluster.infos[dst].model
        table = self.table
        movable = [rid for rid in reversed(node.batcher.waiting)
                   if self._replica_of(rid) is replica and rid not in self._attempts
                   and (not dst_model or table.model[rid] in ("", dst_model))]
        moved = 0
        for rid in movable:
            if moved == count:
                break
            if node.take_waiting(rid):
                replica.release(rid, src)
                replica.send(rid, dst)
                moved += 1
        self.stats.moves += moved
