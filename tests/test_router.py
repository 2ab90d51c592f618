"""Router mechanisms: hedging, retries, rebalancing, admission, replicas, KV-event mirror."""

from __future__ import annotations

import numpy as np
import simpy

from sim.metrics.recorder import Recorder
from sim.model.batcher import BatcherConfig
from sim.model.cluster import Cluster, NodeSpec
from sim.model.cost import cost_models
from sim.model.kv_events import KvEventMirror
from sim.model.requests import COMPLETED, REJECTED, RequestTable
from sim.model.router import Router
from sim.policy.admission import Admission
from sim.policy.base import ClusterView, RequestInfo, Strategy
from sim.workload.base import Workload, unique_prompt_workload

LINEAR = cost_models.get("linear")


def node_spec(prefix_caching: bool = False) -> NodeSpec:
    cost = LINEAR(LINEAR.Params(step_s=0.01, prefill_token_s=1e-5, decode_seq_s=1e-4))
    return NodeSpec("g", "linear", cost, 10_000, 16, prefix_caching,
                    BatcherConfig(64, 4096, True, None))


def workload(n: int = 200, rate: float = 20.0, seed: int = 1) -> Workload:
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, n))
    return unique_prompt_workload(arrivals, rng.integers(50, 300, n), rng.integers(20, 200, n))


def simulate(strategies, wl, n_nodes=2, slowdowns=None, admission=None, mirror_delay=None):
    env = simpy.Environment()
    table = RequestTable(wl)
    cluster = Cluster(env, [node_spec(mirror_delay is not None)] * n_nodes, table,
                      Recorder(n_nodes, (0, 1e9)), slowdowns=slowdowns)
    mirror = None
    if mirror_delay is not None:
        mirror = KvEventMirror(cluster.nodes, table, mirror_delay, lambda: env.now)
    router = Router(env, cluster, table, strategies, 0.0, admission,
                    None if mirror is None else mirror.cached_prefix_blocks)
    router.start()
    env.run(until=router.drained)
    return table, router


class FirstNode(Strategy):
    """Always node 0 (to force work onto a slow node)."""

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        return 0 if view.accepting[0] else view.accepting_ids()[0]


class HedgeAfter(FirstNode):
    """Node 0, with a hedge copy after a fixed delay."""

    delay = 0.5

    def hedge_after_s(self, request: RequestInfo, view: ClusterView) -> float | None:
        return self.delay


class RetryAfter(FirstNode):
    """Node 0, withdrawn and sent elsewhere after a fixed delay (once)."""

    def retry_after_s(self, request: RequestInfo, view: ClusterView) -> float | None:
        if getattr(self, "_retried", None) is None:
            self._retried: set[int] = set()
        if request.request_id in self._retried:
            return None
        self._retried.add(request.request_id)
        return 0.5


def e2e(table: RequestTable) -> np.ndarray:
    return np.array(table.finish_s) - np.array(table.arrival_s)


def make(cls, seed=0):
    return cls(cls.Params(), np.random.default_rng(seed))


def test_hedging_cuts_the_tail_under_a_slow_node_and_counts_the_extra_work():
    """With node 0 ten times slower, hedged copies finish elsewhere; every request is
    recorded once, and the withdrawn copies' tokens are counted."""
    slow = {0: ((0.0, 1e9, 10.0),)}
    wl = workload()
    base, _ = simulate([make(FirstNode)], wl, slowdowns=slow)
    hedged, router = simulate([make(HedgeAfter)], wl, slowdowns=slow)
    assert all(s == COMPLETED for s in hedged.status)
    assert np.percentile(e2e(hedged), 99) < 0.5 * np.percentile(e2e(base), 99)
    assert router.stats.hedges > 0 and router.stats.cancelled_attempts > 0
    assert router.stats.wasted_tokens > 0
    assert router.outstanding == 0
    assert 1 in set(hedged.node)        # some requests were won by the hedge on node 1
    for node in router.cluster.nodes:   # withdrawn copies left nothing behind
        assert node.batcher.is_idle() and node.batcher.kv.used_blocks == 0


def test_retry_withdraws_the_first_attempt_and_dispatches_again():
    """A retried request completes on the other node; its first attempt is withdrawn."""
    slow = {0: ((0.0, 1e9, 50.0),)}
    table, router = simulate([make(RetryAfter)], workload(n=40, rate=4.0), slowdowns=slow)
    assert all(s == COMPLETED for s in table.status)
    assert router.stats.retries > 0
    assert 0 < router.stats.cancelled_attempts <= router.stats.retries
    assert router.stats.wasted_tokens > 0
    assert table.node.count(1) == router.stats.cancelled_attempts  # won by the second attempt


class Mover(FirstNode):
    """Node 0, and every second move half of node 0's queue to node 1."""

    rebalance_interval_s = 1.0

    def rebalance(self, view: ClusterView) -> list[tuple[int, int, int]]:
        return [(0, 1, view.telemetry.queued[0] // 2)]


def test_rebalancing_moves_queued_requests_that_never_started():
    """Moved requests finish on the other node; all requests are accounted for."""
    wl = workload(n=300, rate=60.0)
    table, router = simulate([make(Mover)], wl)
    assert router.stats.moves > 0
    assert all(s == COMPLETED for s in table.status)
    assert table.node.count(1) == router.stats.moves


class RejectOdd(Admission):
    """Admission that rejects odd request ids."""

    def admit(self, request: RequestInfo, view: ClusterView) -> bool:
        return request.request_id % 2 == 0


def test_admission_rejections_are_recorded_not_lost():
    """Requests admission control drops are recorded as rejected on no node."""
    table, router = simulate([make(FirstNode)], workload(n=50), admission=make(RejectOdd))
    assert router.stats.shed == 25
    assert [table.status[i] for i in range(50)] == [COMPLETED, REJECTED] * 25
    assert all(table.node[i] == -1 for i in range(1, 50, 2))


class Counting(Strategy):
    """Round robin that remembers what it saw."""

    def __init__(self, params, rng):  # type: ignore[no-untyped-def]
        super().__init__(params, rng)
        self.seen_inflight: list[int] = []
        self.i = 0

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        self.seen_inflight.append(sum(view.inflight_requests))
        self.i += 1
        return self.i % view.n_nodes


def test_replicas_see_only_their_own_dispatches():
    """With two router replicas each counts only the requests it dispatched."""
    a, b = make(Counting), make(Counting)
    wl = workload(n=100, rate=200.0)
    table, _ = simulate([a, b], wl)
    assert len(a.seen_inflight) == len(b.seen_inflight) == 50
    single = make(Counting)
    simulate([single], wl)
    assert max(a.seen_inflight) < max(single.seen_inflight)
    assert all(s == COMPLETED for s in table.status)


def shared_prefix_workload(n: int) -> Workload:
    return Workload(
        arrival_s=np.arange(n) * 0.5, prompt_tokens=np.full(n, 130),
        output_tokens=np.full(n, 4), max_output_tokens=np.full(n, 4),
        session_id=np.full(n, -1), prefix_group=np.zeros(n, dtype=np.int64),
        seg_ptr=np.arange(0, 2 * n + 1, 2), seg_key=np.tile([3, -1], n),
        seg_len=np.tile([100, 30], n), output_key=np.full(n, -1), expected_rate_rps=2.0)


class SeesCache(FirstNode):
    """Node 0, recording what the KV-event mirror says about node 0's cache."""

    def __init__(self, params, rng):  # type: ignore[no-untyped-def]
        super().__init__(params, rng)
        self.seen: list[int] = []

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        assert view.cached_prefix_blocks is not None
        self.seen.append(view.cached_prefix_blocks(0, request.request_id))
        return 0


def test_kv_event_mirror_reports_cached_prefixes_after_the_delay():
    """The router learns of node 0's cached prefix from its events: at once with no delay,
    not before the delay has passed otherwise."""
    fresh = make(SeesCache)
    simulate([fresh], shared_prefix_workload(4), mirror_delay=0.0)
    assert fresh.seen == [0, 6, 6, 6]            # 100 // 16 = 6 blocks of the prefix
    stale = make(SeesCache)
    simulate([stale], shared_prefix_workload(4), mirror_delay=10.0)
    assert stale.seen == [0, 0, 0, 0]
