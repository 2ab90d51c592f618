"""Wire faults, router health and autoscalers into one run, and summarise what they did.

Nothing here is built when a scenario has neither ``faults`` nor ``autoscaling``: such runs
schedule no extra event and draw no extra random number, so their results are unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import simpy

from sim.metrics.availability import (
    AvailabilityStats,
    elasticity_summary,
    node_count_series,
    provisioned_hours,
)
from sim.model.autoscaler import Autoscaler
from sim.model.cluster import Cluster
from sim.model.faults import OFF, FaultInjector, Hung, NodeConditions, failure_events
from sim.model.health import RouterHealth
from sim.model.router import Router
from sim.rng import UniformDraws, stream

if TYPE_CHECKING:  # annotations only: the model layer does not import the scenario layer
    from sim.scenario import Scenario


class Elasticity:
    """The fault injector, the router's health state and the autoscalers of one run."""

    def __init__(self, sc: Scenario, env: simpy.Environment, cluster: Cluster, router: Router,
                 seed: int):
        self.env = env
        self.cluster = cluster
        self.router = router
        n = len(cluster.nodes)
        self.conditions = NodeConditions(n)
        self.health = RouterHealth(env, router, self.conditions, sc.router.health,
                                   sc.router.retries,
                                   UniformDraws(stream(seed, "router", "retries")))
        self.autoscalers = [Autoscaler(env, cluster, router, self.conditions, spec)
                            for spec in sc.autoscaling]
        self.initially_off = {i for i in range(n) if self.conditions.lifecycle[i] == OFF}
        self.conditions.provisioned_log.clear()  # the initial state is not a change
        self.health.routable_log.clear()
        self.injector = None
        if sc.faults is not None:
            events = failure_events(sc.faults, cluster, seed, sc.duration_s + sc.drain_timeout_s)
            self.injector = FaultInjector(env, cluster, self.conditions, events,
                                          sc.faults.model_load_s, self.health.lost,
                                          sc.router.retries.stall_timeout_s)
        self.health.publish()

    def failure_records(self) -> list[dict]:
        """The failures so far (started; ``ready_s`` NaN while a node is not back)."""
        return [dataclasses.asdict(r) for r in self.conditions.records]

    def finish(self, now: float) -> None:
        """At the end of the run: book the requests still waiting in hung engines as
        unfinished, leaving out the ones their clients abandoned (already recorded)."""
        for node in self.cluster.nodes:
            if isinstance(node.fault, Hung):
                for outcome in node.batcher.in_flight(now):
                    if outcome.request_id not in node.fault.gone:
                        self.router.table.record(outcome)
                self.cluster.reset_node(node.node_id)

    def summary(self, sc: Scenario, requests: dict[str, np.ndarray] | AvailabilityStats,
                end_s: float) -> dict[str, object]:
        """The ``elasticity`` block of ``summary.json``, from the run's per-request columns
        or, for a streamed run, their ``AvailabilityStats``."""
        c = self.conditions
        gpus = np.array([_gpus(spec.cost) for spec in self.cluster.specs], dtype=float)
        hours = provisioned_hours(c.provisioned_log, c.n, gpus, self.initially_off,
                                  sc.duration_s)
        counts = node_count_series(c.provisioned_log, self.health.routable_log,
                                   c.n - len(self.initially_off))
        return elasticity_summary(requests, sc.slo.model_dump(), (sc.warmup_s, sc.duration_s),
                                  end_s, [dataclasses.asdict(r) for r in c.records],
                                  dataclasses.asdict(self.health.stats), hours, counts,
                                  sc.metrics.monitor_interval_s)


def build_elasticity(sc: Scenario, env: simpy.Environment, cluster: Cluster, router: Router,
                     seed: int) -> Elasticity | None:
    """The run's fault and autoscaling machinery; None when the scenario has neither."""
    if sc.faults is None and not sc.autoscaling:
        return None
    return Elasticity(sc, env, cluster, router, seed)


def _gpus(cost: object) -> int:
    """GPUs of one node: the profile's tensor parallel degree (1 for synthetic costs)."""
    profile = getattr(cost, "profile", None)
    hardware = getattr(profile, "hardware", None)
    return int(getattr(hardware, "tensor_parallel", 1) or 1)
