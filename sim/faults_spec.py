"""Scenario blocks for faults and elasticity: failures, health checks, retries, autoscaling.

These are the pydantic models behind ``faults:``, ``autoscaling:``, ``router.health`` and
``router.retries`` (``sim.scenario`` holds them; ``docs/faults.md`` explains the model). Checks
that need the rest of the scenario (a group that exists, a node inside it, a time inside the
run) are in ``check_elasticity``, which ``Scenario`` calls after validating its fields, so that
every error is one line naming the field (``faults.scheduled.0.group: ...``).

Defaults and their sources:

* health checks: Kubernetes readiness-probe defaults (``periodSeconds`` 10, ``timeoutSeconds``
  1, ``failureThreshold`` 3, ``successThreshold`` 1), the same fields as Envoy's active health
  checking (``interval``, ``timeout``, ``unhealthy_threshold``, ``healthy_threshold``);
* passive detection: Envoy outlier detection (``consecutive_5xx`` 5, ``base_ejection_time``
  30 s);
* retries: Envoy's retry policy (``num_retries``; exponential back-off with jitter,
  ``base_interval`` 25 ms, ``max_interval`` 10 x base = 250 ms) and its ``stream_idle_timeout``
  (5 min), after which a request that received nothing is abandoned;
* autoscaling: the Kubernetes HorizontalPodAutoscaler (sync period 15 s, tolerance 0.1,
  scale-up stabilisation 0 s, scale-down stabilisation 300 s);
* model load after a restart: vLLM's engine start (weights from local disk, CUDA graph capture)
  takes tens of seconds to minutes for 8-70 B models; 60 s by default.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from sim.spec import StrictModel

FailureMode = Literal["crash", "hang", "drain"]
ScalingMetric = Literal["concurrency", "queue", "kv_utilization", "rps"]


class DurationDist(StrictModel):
    """A random duration: exponential (memoryless failures), lognormal or constant."""

    distribution: Literal["exponential", "lognormal", "constant"] = Field(
        "exponential", description="shape of the distribution")
    mean_s: float = Field(gt=0, le=1e9, description="mean duration")
    cv: float = Field(1.0, gt=0, le=100, description="coefficient of variation (lognormal "
                                                     "only; exponential has 1, constant 0)")

    def sample(self, rng: np.random.Generator) -> float:
        """One draw from ``rng``."""
        if self.distribution == "constant":
            return self.mean_s
        if self.distribution == "exponential":
            return float(rng.exponential(self.mean_s))
        sigma2 = math.log1p(self.cv ** 2)
        return float(rng.lognormal(math.log(self.mean_s) - sigma2 / 2, math.sqrt(sigma2)))


class ScheduledFailure(StrictModel):
    """Node ``node`` of group ``group`` (or the whole group) fails at ``at_s``."""

    group: str = Field(description="the node group (cluster.node_groups.*.name)")
    node: int | None = Field(None, ge=0, description="index of the node within its group "
                                                     "(0-based); null: every node of the "
                                                     "group at once (a rack or a zone)")
    at_s: float = Field(ge=0, description="when it fails; inside [0, duration_s)")
    duration_s: float = Field(gt=0, le=1e9, description="how long it stays down before its "
                                                        "restart begins (the model load "
                                                        "follows)")
    mode: FailureMode = Field("crash", description="crash: in-flight requests and the KV "
                                                   "cache are lost; hang: accepts but never "
                                                   "answers; drain: finishes what it holds, "
                                                   "takes nothing new")


class RandomFailures(StrictModel):
    """Independent failures of every node of a group, drawn per node."""

    group: str = Field(description="the node group (cluster.node_groups.*.name)")
    mode: FailureMode = Field("crash", description="what a failure does (see scheduled)")
    time_between_s: DurationDist = Field(description="time from a node's recovery (or the "
                                                     "start) to its next failure")
    repair_s: DurationDist = Field(description="time a failed node stays down before its "
                                               "restart begins")


class FaultsSpec(StrictModel):
    """Node failures: scheduled and random."""

    model_load_s: float = Field(60.0, ge=0, le=1e6, description="time a restarted node takes "
                                                               "to load the model before it "
                                                               "serves again (cold: empty "
                                                               "prefix cache)")
    scheduled: list[ScheduledFailure] = Field(default_factory=list,
                                              description="failures at given times")
    random: list[RandomFailures] = Field(default_factory=list,
                                         description="failures drawn per node")


class HealthSpec(StrictModel):
    """How the router notices failed nodes (used when faults or autoscaling are set)."""

    interval_s: float | None = Field(10.0, ge=0, le=1e6, description="active health-check "
                                     "period; 0 or null: no active checks")
    timeout_s: float = Field(1.0, gt=0, le=1e6, description="a check a hung node does not "
                                                            "answer fails after this long")
    unhealthy_threshold: int = Field(3, ge=1, le=1000, description="failed checks in a row "
                                                                  "that mark a node down")
    healthy_threshold: int = Field(1, ge=1, le=1000, description="passed checks in a row "
                                                                "that mark it up again")
    consecutive_errors: int | None = Field(5, ge=0, le=1_000_000, description="failed "
                                           "requests to a node (resets, refused connections, "
                                           "timeouts) that eject it (passive detection); "
                                           "0 or null: no passive detection")
    ejection_s: float = Field(30.0, gt=0, le=1e6, description="how long a passively ejected "
                                                              "node is skipped")


class RetrySpec(StrictModel):
    """Router retries of requests whose attempt failed (used when faults are set)."""

    max_retries: int = Field(0, ge=0, le=100, description="retries per request after a failed "
                                                         "attempt; 0: a failed attempt fails "
                                                         "the request")
    backoff_base_s: float = Field(0.025, ge=0, le=1e4, description="back-off before retry k "
                                  "is drawn uniformly in [0, base x (2^k - 1)], at most max")
    backoff_max_s: float = Field(0.25, ge=0, le=1e4, description="longest back-off")
    stall_timeout_s: float | None = Field(300.0, gt=0, le=1e6, description="a request that "
                                          "receives nothing for this long (a hung node) is "
                                          "abandoned: failed or retried; null: never")


class AutoscalerSpec(StrictModel):
    """An autoscaler for one node group: the group's ``count`` nodes exist, the autoscaler
    keeps between ``min_nodes`` and ``max_nodes`` of them provisioned."""

    group: str = Field(description="the node group it scales")
    metric: ScalingMetric = Field(description="per provisioned node: concurrency (running + "
                                              "queued), queue (queued), kv_utilization "
                                              "(0-1), rps (requests dispatched per second)")
    target: float = Field(gt=0, le=1e9, description="target value of the metric per node")
    min_nodes: int = Field(1, ge=1, le=1_000_000, description="fewest provisioned nodes")
    max_nodes: int | None = Field(None, ge=1, le=1_000_000, description="most provisioned "
                                  "nodes; null: the group's count")
    initial_nodes: int | None = Field(None, ge=1, le=1_000_000, description="provisioned at "
                                      "the start (ready, warm); null: min_nodes")
    interval_s: float = Field(15.0, gt=0, le=1e6, description="evaluation period")
    tolerance: float = Field(0.1, ge=0, lt=1, description="no change while metric / target "
                                                         "is within 1 +- tolerance")
    scale_up_window_s: float = Field(0.0, ge=0, le=1e6, description="scale up to the "
                                     "smallest recommendation of this window")
    scale_down_window_s: float = Field(300.0, ge=0, le=1e6, description="scale down to the "
                                       "largest recommendation of this window")
    cold_start_s: float = Field(120.0, ge=0, le=1e6, description="from the decision to a "
                                "ready node (provisioning and model load); billed from the "
                                "decision")

    @field_validator("max_nodes")
    @classmethod
    def _max_not_below_min(cls, value: int | None, info: ValidationInfo) -> int | None:
        low = info.data.get("min_nodes")
        if value is not None and low is not None and value < low:
            raise ValueError(f"expected at least min_nodes ({low}), got {value}")
        return value


def check_elasticity(faults: FaultsSpec | None, autoscaling: list[AutoscalerSpec],
                     groups: dict[str, int], duration_s: float) -> None:
    """Check the blocks against the cluster (``groups``: name -> count) and the run length.

    Raises:
        ValueError: ``<field path>: <what was expected>``, one line.
    """
    names = ", ".join(groups)
    if faults is not None:
        for i, event in enumerate(faults.scheduled):
            where = f"faults.scheduled.{i}"
            _known_group(event.group, groups, f"{where}.group", names)
            if event.node is not None and event.node >= groups[event.group]:
                raise ValueError(f"{where}.node: expected a node index below "
                                 f"{groups[event.group]} (group '{event.group}' has "
                                 f"{groups[event.group]} nodes), got {event.node}")
            if event.at_s >= duration_s:
                raise ValueError(f"{where}.at_s: expected a time inside the run "
                                 f"[0, {duration_s:g}), got {event.at_s:g}")
        for i, spec in enumerate(faults.random):
            _known_group(spec.group, groups, f"faults.random.{i}.group", names)
    seen: set[str] = set()
    for i, auto in enumerate(autoscaling):
        where = f"autoscaling.{i}"
        _known_group(auto.group, groups, f"{where}.group", names)
        if auto.group in seen:
            raise ValueError(f"{where}.group: expected one autoscaler per group, got "
                             f"'{auto.group}' twice")
        seen.add(auto.group)
        count = groups[auto.group]
        top = auto.max_nodes if auto.max_nodes is not None else count
        if top > count:
            raise ValueError(f"{where}.max_nodes: expected at most the group's count ({count}: "
                             f"the cluster holds count nodes, the autoscaler provisions up to "
                             f"max_nodes of them), got {top}")
        if auto.min_nodes > top:
            raise ValueError(f"{where}.min_nodes: expected at most max_nodes ({top}), got "
                             f"{auto.min_nodes}")
        if auto.initial_nodes is not None and not auto.min_nodes <= auto.initial_nodes <= top:
            raise ValueError(f"{where}.initial_nodes: expected between min_nodes "
                             f"({auto.min_nodes}) and max_nodes ({top}), got "
                             f"{auto.initial_nodes}")


def _known_group(name: str, groups: dict[str, Any], field: str, names: str) -> None:
    if name not in groups:
        raise ValueError(f"{field}: expected one of the cluster's groups ({names}), got "
                         f"'{name}'")
