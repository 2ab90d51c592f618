"""The router's side of failures: noticing failed nodes, and retrying what they lost.

**What the router believes.** A node is routable when the control plane has it in service
(provisioned, not starting, not draining: learned at once, as a gateway watching Kubernetes
endpoints does) *and* the router believes it healthy. The router believes a failed node
healthy until it notices, so it keeps sending it requests: a crashed or loading node refuses
them at once, a hung one swallows them until their stall timeout. Two ways of noticing, as in
Envoy (``router.health``):

* **active health checks** every ``interval_s`` (one sweep over all nodes): a check of a
  healthy or draining node passes at once, one of a crashed or loading node fails at once
  (refused), one of a hung node fails after ``timeout_s``; ``unhealthy_threshold`` failures in
  a row mark the node down, ``healthy_threshold`` passes in a row mark it up again;
* **passive detection** (Envoy outlier detection): ``consecutive_errors`` failed requests to a
  node since it last recovered eject it for ``ejection_s``. Assumption: a healthy node never
  fails a request here, so "consecutive" counts the errors since the node's last recovery.

When a node leaves the routable set, every strategy's ``on_node_down`` is called (SGLang's
cache-aware router removes the worker's tenant from its tree when a worker is removed). One
health state serves all router replicas (each Envoy would detect on its own). Envoy's panic
mode (routing to all hosts when too few are healthy) is not modelled: with no routable node a
request waits for a retry or fails (503).

**Retries** (``router.retries``, Envoy's ``retry_on: reset,connect-failure`` with
``previous_hosts``): a request whose only attempt failed (reset by a crash, refused, stalled
past its timeout, or unroutable) is sent again after a back-off drawn uniformly in
``[0, base x (2^k - 1)]`` (at most ``backoff_max_s``; Envoy's jittered exponential back-off)
to a routable node it has not failed on, at most ``max_retries`` times; then it fails. The
retry recomputes the prompt on the new node (whatever the lost attempt computed is counted as
wasted tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import simpy

from sim.faults_spec import HealthSpec, RetrySpec
from sim.model.faults import CRASHED, HUNG, LOADING, NodeConditions, without_event
from sim.model.requests import FAILED, Outcome
from sim.model.router import Router
from sim.rng import UniformDraws


@dataclass
class FailoverStats:
    """Counts reported under ``faults`` in the summary."""

    failed_attempts: int = 0
    attempts_reset: int = 0
    attempts_refused: int = 0
    attempts_timed_out: int = 0
    unroutable: int = 0
    retries: int = 0
    requests_retried: int = 0
    #: tokens computed by attempts that were lost
    lost_tokens: int = 0
    health_checks: int = 0
    ejections: int = 0


class RouterHealth:
    """Health checks, passive ejection, the routable set and retries, for one router."""

    def __init__(self, env: simpy.Environment, router: Router, conditions: NodeConditions,
                 health: HealthSpec, retries: RetrySpec, draws: UniformDraws):
        self.env = env
        self.router = router
        self.conditions = conditions
        self.health = health
        self.retries = retries
        self.draws = draws
        self.stats = FailoverStats()
        n = conditions.n
        self.checked_up = [True] * n
        self._fails_in_row = [0] * n
        self._passes_in_row = [0] * n
        self._errors = [0] * n
        self.ejected_until = [-math.inf] * n
        self._routable = (True,) * n
        #: (time, routable nodes) at every change
        self.routable_log: list[tuple[float, int]] = []
        self._tries: dict[int, int] = {}
        self._failed_on: dict[int, set[int]] = {}
        router.unroutable = self._unroutable
        conditions.listeners.append(self._changed)
        if health.interval_s:
            env.timeout(health.interval_s).callbacks.append(self._sweep)
        self.publish()

    # -- the routable set -----------------------------------------------------------------

    def publish(self) -> None:
        """Recompute the routable set; tell the router and, for nodes that left it, the
        strategies."""
        c, now = self.conditions, self.env.now
        routable = tuple(not c.control_plane_out(i) and self.checked_up[i]
                         and now >= self.ejected_until[i] for i in range(c.n))
        if routable == self._routable:
            return
        left = [i for i in range(c.n) if self._routable[i] and not routable[i]]
        self._routable = routable
        self.routable_log.append((now, sum(routable)))
        self.router.set_available(routable)
        for node in left:
            for replica in self.router.replicas:
                replica.strategy.on_node_down(node)

    def _changed(self, node: int) -> None:
        if self.conditions.health[node] not in (CRASHED, HUNG, LOADING):
            self._errors[node] = 0
        self.publish()

    # -- active checks ----------------------------------------------------------------------

    def _sweep(self, _event: simpy.Event) -> None:
        c, h = self.conditions, self.health
        assert h.interval_s is not None
        for node in range(c.n):
            if c.lifecycle[node] == "off":
                continue
            self.stats.health_checks += 1
            state = c.health[node]
            if state == HUNG:
                self.env.timeout(h.timeout_s).callbacks.append(
                    partial(without_event, self._result, node, False))
            else:
                self._result(node, state not in (CRASHED, LOADING))
        self.env.timeout(h.interval_s).callbacks.append(self._sweep)

    def _result(self, node: int, passed: bool) -> None:
        h = self.health
        if passed:
            self._fails_in_row[node] = 0
            self._passes_in_row[node] += 1
            if not self.checked_up[node] and self._passes_in_row[node] >= h.healthy_threshold:
                self.checked_up[node] = True
                self.publish()
            return
        self._passes_in_row[node] = 0
        self._fails_in_row[node] += 1
        if self.checked_up[node] and self._fails_in_row[node] >= h.unhealthy_threshold:
            self.checked_up[node] = False
            self.conditions.detected(node, self.env.now, "health_check")
            self.publish()

    # -- passive detection ------------------------------------------------------------------

    def _error(self, node: int) -> None:
        limit = self.health.consecutive_errors
        if not limit or node < 0:
            return
        self._errors[node] += 1
        now = self.env.now
        if self._errors[node] >= limit and now >= self.ejected_until[node]:
            self._errors[node] = 0
            self.stats.ejections += 1
            self.ejected_until[node] = now + self.health.ejection_s
            self.conditions.detected(node, now, "passive")
            self.env.timeout(self.health.ejection_s).callbacks.append(
                lambda _e: self.publish())
            self.publish()

    # -- lost attempts and retries ----------------------------------------------------------

    def lost(self, outcome: Outcome, reason: str) -> None:
        """An attempt failed on its node: count it, detect passively, retry or fail."""
        s = self.stats
        s.failed_attempts += 1
        s.lost_tokens += outcome.computed_tokens
        if reason == "reset":
            s.attempts_reset += 1
        elif reason == "refused":
            s.attempts_refused += 1
        else:
            s.attempts_timed_out += 1
        self.router.stats.wasted_tokens += outcome.computed_tokens
        rid = outcome.request_id
        self._failed_on.setdefault(rid, set()).add(outcome.node_id)
        self._error(outcome.node_id)
        if self.router.attempt_failed(outcome):
            self._retry_or_fail(outcome)
        elif rid not in self.router._attempts:
            self._forget(rid)

    def _unroutable(self, rid: int) -> None:
        self.stats.unroutable += 1
        nan = math.nan
        self._retry_or_fail(Outcome(rid, -1, FAILED, nan, nan, self.env.now, 0, 0, 0, 0, 0))

    def _retry_or_fail(self, outcome: Outcome) -> None:
        rid = outcome.request_id
        tries = self._tries.get(rid, 0)
        r = self.retries
        if tries >= r.max_retries:
            self._forget(rid)
            self.router.record_failure(outcome)
            return
        self._tries[rid] = tries + 1
        self.stats.retries += 1
        self.stats.requests_retried += tries == 0
        ceiling = min(r.backoff_max_s, r.backoff_base_s * (2 ** (tries + 1) - 1))
        delay = self.draws.random() * ceiling
        self.env.timeout(delay).callbacks.append(lambda _e: self._resend(outcome))

    def _resend(self, last: Outcome) -> None:
        rid = last.request_id
        node = self.router.resend(rid, frozenset(self._failed_on.get(rid, ())))
        if node is None:  # nothing routable: this try is spent
            self.stats.unroutable += 1
            self._retry_or_fail(last._replace(finish_s=self.env.now))

    def _forget(self, rid: int) -> None:
        self._tries.pop(rid, None)
        self._failed_on.pop(rid, None)
