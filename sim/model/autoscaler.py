"""Autoscaling a node group: the Kubernetes HorizontalPodAutoscaler's algorithm on node telemetry.

The cluster holds the group's ``count`` nodes; the autoscaler keeps between ``min_nodes`` and
``max_nodes`` of them **provisioned** (costing GPU time). A node that is not provisioned is
out of the routable set and idle. Every ``interval_s`` (HPA's sync period) the autoscaler
reads the group's telemetry, the same signals routers see (queue, running, KV blocks in use,
sampled now; requests dispatched over the last interval for ``rps``), and computes, as the
HPA does (``kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale``):

* ``desired = ceil(sum of the metric over the ready nodes / target)``, i.e.
  ``ceil(current x mean / target)`` with nodes still starting counted as 0 (HPA treats
  not-ready pods as idle when scaling up); no change while ``sum / (target x current)`` is
  within ``1 +- tolerance``;
* stabilisation: a scale-up goes to the smallest recommendation of the last
  ``scale_up_window_s``, a scale-down to the largest of the last ``scale_down_window_s``
  (HPA ``behavior.scaleUp/scaleDown.stabilizationWindowSeconds``, defaults 0 and 300 s);
  HPA's rate policies (at most +100 % or +4 pods per 15 s) are not modelled;
* clamped to ``[min_nodes, max_nodes]``.

Scaling up provisions the lowest-numbered idle nodes: they are billed from the decision and
join routing ``cold_start_s`` later, cold (the control plane adds a ready endpoint at once).
Scaling down first cancels nodes still starting, then drains the highest-numbered serving
healthy nodes (out of routing at once, finishing what they hold, unbilled once empty), as a
Deployment scaled in terminates pods gracefully. ``rps`` counts the router's dispatches to the
whole cluster, so it is meant for a scenario whose only traffic goes to the scaled group.
"""

from __future__ import annotations

import math
from collections import deque
from functools import partial

import simpy

from sim.faults_spec import AutoscalerSpec
from sim.model.cluster import Cluster
from sim.model.faults import (
    DRAIN_POLL_S,
    OFF,
    OK,
    ON,
    RETIRING,
    STARTING,
    NodeConditions,
    without_event,
)
from sim.model.router import Router


class Autoscaler:
    """One group's autoscaler."""

    def __init__(self, env: simpy.Environment, cluster: Cluster, router: Router,
                 conditions: NodeConditions, spec: AutoscalerSpec):
        self.env = env
        self.cluster = cluster
        self.router = router
        self.conditions = conditions
        self.spec = spec
        self.nodes = [i.node_id for i in cluster.infos if i.group == spec.group]
        self.max_nodes = spec.max_nodes if spec.max_nodes is not None else len(self.nodes)
        initial = spec.initial_nodes if spec.initial_nodes is not None else spec.min_nodes
        for node in self.nodes[initial:]:
            conditions.set_lifecycle(node, OFF, env.now)
        self._recommendations: deque[tuple[float, int]] = deque()
        self._dispatched = router.dispatched
        #: node -> when its current start began
        self._starts: dict[int, float] = {}
        #: (time, provisioned, serving) after every evaluation that changed something
        self.decisions: list[tuple[float, int, int]] = []
        env.timeout(spec.interval_s).callbacks.append(self._evaluate)

    def _count(self, *states: str) -> int:
        lifecycle = self.conditions.lifecycle
        return sum(lifecycle[i] in states for i in self.nodes)

    def _metric_sum(self) -> float:
        """The metric summed over the group's serving nodes."""
        spec, c = self.spec, self.conditions
        ready = [i for i in self.nodes if c.lifecycle[i] == ON]
        if spec.metric == "rps":
            total = self.router.dispatched - self._dispatched
            return total / spec.interval_s
        t = self.cluster.sample_telemetry()
        if spec.metric == "concurrency":
            return float(sum(t.queued[i] + t.running[i] for i in ready))
        if spec.metric == "queue":
            return float(sum(t.queued[i] for i in ready))
        return sum(t.kv_used_blocks[i] / self.cluster.infos[i].kv_total_blocks for i in ready)

    def _evaluate(self, _event: simpy.Event) -> None:
        spec, now = self.spec, self.env.now
        current = self._count(ON, STARTING)
        total = self._metric_sum()
        self._dispatched = self.router.dispatched
        ratio = total / (spec.target * current) if current else math.inf
        desired = current if abs(ratio - 1) <= spec.tolerance else math.ceil(total / spec.target)
        recs = self._recommendations
        recs.append((now, desired))
        window = max(spec.scale_up_window_s, spec.scale_down_window_s)
        while recs and recs[0][0] < now - window:
            recs.popleft()
        if desired > current:
            desired = min(d for t, d in recs if t >= now - spec.scale_up_window_s)
        elif desired < current:
            desired = max(d for t, d in recs if t >= now - spec.scale_down_window_s)
        desired = min(self.max_nodes, max(spec.min_nodes, desired))
        if desired > current:
            self._scale_up(desired - current)
        elif desired < current:
            self._scale_down(current - desired)
        if desired != current:
            self.decisions.append((now, desired, self._count(ON)))
        self.env.timeout(spec.interval_s).callbacks.append(self._evaluate)

    def _scale_up(self, n: int) -> None:
        c, now = self.conditions, self.env.now
        idle = [i for i in self.nodes if c.lifecycle[i] == OFF][:n]
        for node in idle:
            c.set_lifecycle(node, STARTING, now)
            self._starts[node] = now
            self.env.timeout(self.spec.cold_start_s).callbacks.append(
                partial(without_event, self._started, node, now))

    def _started(self, node: int, since: float) -> None:
        # a start cancelled and begun again is ready only after its own cold start
        if self.conditions.lifecycle[node] == STARTING and self._starts.get(node) == since:
            self.conditions.set_lifecycle(node, ON, self.env.now)

    def _scale_down(self, n: int) -> None:
        c, now = self.conditions, self.env.now
        starting = [i for i in reversed(self.nodes) if c.lifecycle[i] == STARTING]
        serving = [i for i in reversed(self.nodes)
                   if c.lifecycle[i] == ON and c.health[i] == OK]
        for node in (starting + serving)[:n]:
            if c.lifecycle[node] == STARTING:
                c.set_lifecycle(node, OFF, now)
            else:
                c.set_lifecycle(node, RETIRING, now)
                self._retire(node)

    def _retire(self, node: int) -> None:
        c = self.conditions
        if c.lifecycle[node] != RETIRING:
            return
        gpu = self.cluster.nodes[node]
        if not gpu.batcher.is_idle():
            self.env.timeout(DRAIN_POLL_S).callbacks.append(lambda _e: self._retire(node))
            return
        self.cluster.reset_node(node)  # the next provisioning starts cold
        c.set_lifecycle(node, OFF, self.env.now)
