"""Node failures: what a failed node does, and the schedule of failures of a run.

A node is in one **lifecycle** state (set by the autoscaler; every node is ``ON`` without one)
and one **health** state (set by this module):

* ``OK``: serves normally.
* ``CRASHED``: the engine process died. The requests it held (queued or running) are lost at
  once, and so is its KV cache, prefix cache included; their clients see the connection reset
  at that instant (an HTTP/2 stream reset or a closed socket), which is what the router's
  passive detection counts. Requests sent to it meanwhile are refused at once (connection
  refused: the host is up, nothing listens on the port). Assumption: the host survives; a
  host that vanishes would make connections time out instead (Envoy's ``connect_timeout``).
* ``HUNG``: the process is alive but makes no progress (a stuck NCCL collective, a deadlocked
  scheduler): it accepts requests and never answers. Its clients wait until their stall
  timeout (``router.retries.stall_timeout_s``, Envoy's ``stream_idle_timeout``: time without a
  byte) and give up, or until the node is restarted (its requests are then lost as in a
  crash). The stall clock of a request already there starts at the hang (it was streaming
  until then).
* ``LOADING``: restarting after a crash or hang: the engine loads the model
  (``faults.model_load_s``) and refuses connections until it is ready; it comes back **cold**,
  with an empty prefix cache (a fresh engine).
* ``DRAINING``: graceful drain (a rolling upgrade, a node cordoned for maintenance): taken out
  of routing at once by the control plane (as Kubernetes removes a terminating pod from its
  endpoints), it finishes what it holds; its restart begins once it is empty and the failure's
  ``duration_s`` has passed, then it loads the model as after a crash, still out of routing
  until it is ready (planned work: nothing is sent to it, nothing is lost).

A failure of a node that is not ``OK`` and ``ON`` (already failed, or not provisioned) is
skipped. The work of an interrupted decode run is logged up to its last finished iteration;
the tokens a lost request computed are counted as of its last finished iteration or run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import simpy

from sim.faults_spec import FaultsSpec
from sim.model.cluster import Cluster
from sim.model.node import GpuNode
from sim.model.requests import CANCELLED, FAILED, Outcome
from sim.rng import stream

# health states
OK, CRASHED, HUNG, LOADING, DRAINING = "ok", "crashed", "hung", "loading", "draining"
# lifecycle states
ON, OFF, STARTING, RETIRING = "on", "off", "starting", "retiring"
#: how often a draining node is checked for being empty (s)
DRAIN_POLL_S = 1.0

def without_event(fn: Callable[..., None], *args: object) -> None:
    """``fn(*args)``, ignoring the SimPy event a callback receives last (for ``partial``)."""
    fn(*args[:-1])


#: ``lost(outcome, reason)``: an attempt failed on a node (reason: reset, refused, timeout)
LostHandler = Callable[[Outcome, str], None]


@dataclass(frozen=True)
class FailureEvent:
    """One failure of one node: ``node`` (cluster id) fails at ``at_s`` for ``duration_s``."""

    node: int
    at_s: float
    duration_s: float
    mode: str


@dataclass
class FaultRecord:
    """What happened to one failure (for the summary)."""

    node: int
    mode: str
    start_s: float
    restart_s: float = math.nan
    ready_s: float = math.nan
    detected_s: float = math.nan
    detected_by: str = ""
    lost_requests: int = 0


@dataclass
class NodeConditions:
    """Health and lifecycle of every node, shared by faults, health checks and autoscaler."""

    n: int
    health: list[str] = field(default_factory=list)
    lifecycle: list[str] = field(default_factory=list)
    #: (time, node, provisioned) change points; every node starts provisioned unless set
    provisioned_log: list[tuple[float, int, bool]] = field(default_factory=list)
    records: list[FaultRecord] = field(default_factory=list)
    #: index in ``records`` of each node's open failure (None: none)
    open_record: list[int | None] = field(default_factory=list)
    #: called after any change, with the node id
    listeners: list[Callable[[int], None]] = field(default_factory=list)
    #: out for planned work (a drain and the restart after it), known to the control plane
    planned: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.health = [OK] * self.n
        self.planned = [False] * self.n
        self.lifecycle = [ON] * self.n
        self.open_record = [None] * self.n

    def set_health(self, node: int, state: str) -> None:
        """Change a node's health and tell the listeners."""
        self.health[node] = state
        for listener in self.listeners:
            listener(node)

    def set_lifecycle(self, node: int, state: str, now: float) -> None:
        """Change a node's lifecycle (logging when it starts or stops costing)."""
        was = self.lifecycle[node] != OFF
        self.lifecycle[node] = state
        if was != (state != OFF):
            self.provisioned_log.append((now, node, state != OFF))
        for listener in self.listeners:
            listener(node)

    def control_plane_out(self, node: int) -> bool:
        """Out of routing by the control plane's word (not provisioned, starting, retiring, or
        drained for planned work until it is ready again), which the router learns at once."""
        return self.lifecycle[node] != ON or self.planned[node]

    def detected(self, node: int, now: float, how: str) -> None:
        """The router noticed the node's open failure (first notice only)."""
        i = self.open_record[node]
        if i is not None and math.isnan(self.records[i].detected_s):
            self.records[i].detected_s = now
            self.records[i].detected_by = how


class FaultInjector:
    """Fails and restarts nodes on a schedule; hands lost attempts to ``lost``."""

    def __init__(self, env: simpy.Environment, cluster: Cluster, conditions: NodeConditions,
                 events: list[FailureEvent], model_load_s: float, lost: LostHandler,
                 stall_timeout_s: float | None):
        self.env = env
        self.cluster = cluster
        self.conditions = conditions
        self.model_load_s = model_load_s
        self.lost = lost
        self.stall_timeout_s = stall_timeout_s
        for event in sorted(events, key=lambda e: (e.at_s, e.node)):
            env.timeout(event.at_s).callbacks.append(partial(without_event, self._fail, event))

    # -- failing ----------------------------------------------------------------------------

    def _fail(self, event: FailureEvent) -> None:
        c, node = self.conditions, event.node
        if c.health[node] != OK or c.lifecycle[node] != ON:
            return
        now = self.env.now
        c.open_record[node] = len(c.records)
        record = FaultRecord(node, event.mode, now)
        c.records.append(record)
        gpu = self.cluster.nodes[node]
        if event.mode == "crash":
            record.lost_requests += self._lose_everything(gpu, "reset")
            gpu.fault = Refusing(self, node)
            c.set_health(node, CRASHED)
        elif event.mode == "hang":
            gpu.halt(now)
            gpu.fault = Hung(self, gpu)
            c.set_health(node, HUNG)
        else:
            record.detected_s, record.detected_by = now, "control_plane"
            c.planned[node] = True
            c.set_health(node, DRAINING)
        self.env.timeout(event.duration_s).callbacks.append(lambda _e: self._restart(node))

    def _lose_everything(self, gpu: GpuNode, reason: str) -> int:
        """Stop the node, replace its engine by a cold one and fail its attempts."""
        now = self.env.now
        gpu.halt(now)
        gone = gpu.fault.gone if isinstance(gpu.fault, Hung) else set()
        lost = [o._replace(status=FAILED, finish_s=now) for o in gpu.batcher.in_flight(now)
                if o.request_id not in gone]
        self.cluster.reset_node(gpu.node_id)
        for outcome in lost:
            self.lost(outcome, reason)
        return len(lost)

    # -- restarting ---------------------------------------------------------------------------

    def _restart(self, node: int) -> None:
        c, gpu = self.conditions, self.cluster.nodes[node]
        now = self.env.now
        if c.health[node] == DRAINING and not gpu.batcher.is_idle():
            self.env.timeout(DRAIN_POLL_S).callbacks.append(lambda _e: self._restart(node))
            return
        i = c.open_record[node]
        assert i is not None
        record = c.records[i]
        record.restart_s = now
        record.lost_requests += self._lose_everything(gpu, "reset")
        gpu.fault = Refusing(self, node)
        c.set_health(node, LOADING)
        self.env.timeout(self.model_load_s).callbacks.append(lambda _e: self._ready(node))

    def _ready(self, node: int) -> None:
        c = self.conditions
        i = c.open_record[node]
        assert i is not None
        c.records[i].ready_s = self.env.now
        c.open_record[node] = None
        self.cluster.nodes[node].fault = None
        c.planned[node] = False
        c.set_health(node, OK)


class Refusing:
    """A crashed or loading node: every request sent to it fails at once."""

    def __init__(self, injector: FaultInjector, node: int):
        self.injector = injector
        self.node = node

    def submit(self, rid: int) -> None:
        """Connection refused."""
        nan = math.nan
        self.injector.lost(Outcome(rid, self.node, FAILED, nan, nan, self.injector.env.now,
                                   0, 0, 0, 0, 0), "refused")

    def cancel(self, rid: int) -> None:
        """Nothing is here to withdraw (its attempts were reported lost)."""


class Hung:
    """A hung node: it takes requests and never answers; each waits for its stall timeout."""

    def __init__(self, injector: FaultInjector, gpu: GpuNode):
        self.injector = injector
        self.gpu = gpu
        self.env = injector.env
        #: request id -> its stall deadline (a newer attempt of the same request replaces it)
        self.deadline: dict[int, float] = {}
        #: requests abandoned by their clients (still in the frozen engine, reported already)
        self.gone: set[int] = set()
        for rid in [*gpu.batcher.waiting, *gpu.batcher.running]:
            self._arm(rid)

    def _arm(self, rid: int) -> None:
        timeout = self.injector.stall_timeout_s
        if timeout is None:
            return
        due = self.env.now + timeout
        self.deadline[rid] = due
        self.env.timeout(timeout).callbacks.append(lambda _e: self._stalled(rid, due))

    def submit(self, rid: int) -> None:
        """Accepted into the frozen queue (too-long requests are still refused with 400 by
        the API server, as it validates before the engine)."""
        if rid in self.gone:  # an earlier attempt of it is still in the frozen engine
            self.gone.discard(rid)
            self._arm(rid)
            return
        rejected = self.gpu.batcher.enqueue(rid, self.env.now)
        if rejected is not None:
            self.gpu.on_done(rejected)
            return
        self._arm(rid)

    def cancel(self, rid: int) -> None:
        """The router withdraws an attempt (the client closes the stream); reported CANCELLED
        right after the current event, as an engine reports an abort."""
        self.env.timeout(0).callbacks.append(lambda _e: self._withdraw(rid))

    def _abandon(self, rid: int, status: int) -> Outcome | None:
        """The attempt's record as of now, once (the frozen engine keeps the request: a hung
        engine cannot process an abort; its state is dropped at the restart)."""
        if self.gpu.fault is not self or rid in self.gone:
            return None
        self.deadline.pop(rid, None)
        now = self.env.now
        for outcome in self.gpu.batcher.in_flight(now):
            if outcome.request_id == rid:
                self.gone.add(rid)
                return outcome._replace(status=status, finish_s=now)
        return None

    def _withdraw(self, rid: int) -> None:
        outcome = self._abandon(rid, CANCELLED)
        if outcome is not None:
            self.gpu.on_done(outcome)

    def _stalled(self, rid: int, due: float) -> None:
        if self.deadline.get(rid) != due:
            return
        outcome = self._abandon(rid, FAILED)
        if outcome is not None:
            self.injector.lost(outcome, "timeout")


def failure_events(spec: FaultsSpec, cluster: Cluster, seed: int,
                   horizon_s: float) -> list[FailureEvent]:
    """The run's failures: the scheduled ones, and random ones drawn per node from
    ``stream(seed, "faults", group, index in group, rule)`` up to ``horizon_s``."""
    by_group: dict[str, list[int]] = {}
    for info in cluster.infos:
        by_group.setdefault(info.group, []).append(info.node_id)
    events = []
    for ev in spec.scheduled:
        ids = by_group[ev.group]
        for node in ids if ev.node is None else [ids[ev.node]]:
            events.append(FailureEvent(node, ev.at_s, ev.duration_s, ev.mode))
    for k, rule in enumerate(spec.random):
        for index, node in enumerate(by_group[rule.group]):
            rng = stream(seed, "faults", rule.group, index, k)
            t = rule.time_between_s.sample(rng)
            while t < horizon_s:
                down = rule.repair_s.sample(rng)
                events.append(FailureEvent(node, t, max(down, 1e-9), rule.mode))
                t += down + spec.model_load_s + rule.time_between_s.sample(rng)
    return events
