"""The router's client concurrency cap (``router.max_in_flight``): a closed-loop load generator
keeps at most that many requests in flight, sends the rest in arrival order as earlier ones
leave, and latencies count from the send."""

from __future__ import annotations

import numpy as np
import simpy
from test_router import node_spec, workload

from sim.metrics.recorder import Recorder
from sim.model.cluster import Cluster
from sim.model.requests import COMPLETED, RequestTable
from sim.model.router import Router
from sim.policy.round_robin import RoundRobin
from sim.rng import stream
from sim.workload.base import unique_prompt_workload


def _run(wl, cap, n_nodes=2):
    env = simpy.Environment()
    table = RequestTable(wl)
    intended = list(table.arrival_s)
    cluster = Cluster(env, [node_spec()] * n_nodes, table, Recorder(n_nodes, (0, 1e9)))
    strategy = RoundRobin(RoundRobin.Params(), stream(1, "router", "round_robin"))
    router = Router(env, cluster, table, [strategy], 0.0, max_in_flight=cap)
    router.start()
    env.run(until=router.drained)
    return table, intended


def test_never_more_than_the_cap_in_flight_and_nothing_lost() -> None:
    """At every send, fewer than the cap are in flight; every request completes once; sends
    stay in arrival order; the wait is send minus intended arrival."""
    wl = workload(n=300, rate=60.0)
    table, intended = _run(wl, cap=5)
    status = np.frombuffer(table.status, dtype=np.int64)
    assert np.all(status == COMPLETED)
    sent = np.array(table.arrival_s)
    finish = np.frombuffer(table.finish_s)
    wait = np.frombuffer(table.client_wait_s)
    assert np.all(np.diff(sent) >= 0)
    assert np.allclose(sent - np.array(intended), wait) and np.all(wait >= 0)
    assert wait.max() > 0  # the cap did bind at 60 req/s
    in_flight = np.array([np.sum((sent <= t) & (finish > t)) for t in sent])
    assert in_flight.max() <= 5


def test_cap_of_one_serialises_the_requests() -> None:
    """With one request in flight, each is sent exactly when the previous one finished."""
    wl = unique_prompt_workload(np.zeros(6), np.full(6, 100), np.full(6, 10))
    table, _ = _run(wl, cap=1, n_nodes=1)
    sent = np.array(table.arrival_s)
    finish = np.frombuffer(table.finish_s)
    assert sent[0] == 0.0
    assert np.allclose(sent[1:], finish[:-1])


def test_a_cap_that_never_binds_changes_nothing() -> None:
    """Open loop and a cap above the peak in flight give the same records."""
    wl = workload(n=200, rate=5.0)
    open_loop, _ = _run(wl, cap=None)
    capped, _ = _run(wl, cap=10_000)
    for col in ("first_token_s", "finish_s", "node"):
        assert np.array_equal(np.frombuffer(getattr(open_loop, col)),
                              np.frombuffer(getattr(capped, col)))
    assert not np.any(np.frombuffer(capped.client_wait_s))
