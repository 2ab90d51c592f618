"""A GPU node (one model replica, possibly several GPUs) as a SimPy-driven state machine.

The node runs iterations back to back while it has work: ``batcher.plan`` picks what the next
iteration computes, the cost model says how long it takes, and one SimPy event fires when it
ends; ``batcher.apply`` then books the result and the next iteration starts at once. There is
one event per iteration, never one per token or per request.

**Fast-forward.** When an iteration is pure decode and nothing can join it, the same batch
repeats until a request finishes or the KV cache fills; iteration ``j`` of such a run costs
``alpha + beta * j`` (the decode context grows by one token per request per iteration, see
``sim.model.cost``), so the whole run is one event at ``T(k) = k*alpha + beta*k*(k-1)/2``. If a
request arrives that could join, the run is cut at the first iteration boundary at or after the
arrival, exactly where stepping would have admitted it: the pending event is left to fire and
ignored (its identity no longer matches), never interrupted. ``fast_forward=False`` steps every
iteration instead; both give the same per-request times up to float rounding (tested).

Node events are scheduled with a priority after SimPy's default, so requests arriving at the
same instant as an iteration boundary join that boundary's plan in both modes.

**Slow-downs** (stragglers): a scenario can make a node run ``factor`` times slower between two
times; an iteration costs ``factor`` times its profile cost when it *starts* in that interval,
and a fast-forwarded run is cut at the boundary where the speed changes, as stepping would
price the next iteration at the new speed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from heapq import heappush
from typing import Any

import simpy
from simpy.events import Timeout

from sim.metrics.recorder import Recorder
from sim.model.batcher import ContinuousBatcher, Plan
from sim.model.cost import CostModel
from sim.model.requests import Outcome

#: SimPy priority of node events: after arrivals (NORMAL = 1) at the same instant.
LATE = 2


class LateTimeout(Timeout):
    """A ``simpy.Timeout`` processed after same-time events of default priority."""

    def __init__(self, env: simpy.Environment, delay: float, callback: Callable) -> None:
        # Same initialisation as Timeout.__init__, with another priority.
        self.env = env
        self.callbacks = [callback]
        self._value = None
        self._delay = delay
        self._ok = True
        # env.schedule(self, LATE, delay), inlined: one of these per iteration or run
        heappush(env._queue, (env._now + delay, LATE, next(env._eid), self))


class GpuNode:
    """One serving engine: queue, batch, KV cache and clock."""

    def __init__(self, env: simpy.Environment, node_id: int, batcher: ContinuousBatcher,
                 cost: CostModel, recorder: Recorder, on_done: Callable[[Outcome], None],
                 fast_forward: bool = True,
                 slowdowns: tuple[tuple[float, float, float], ...] = ()):
        self.env = env
        self.node_id = node_id
        self.batcher = batcher
        self.cost = cost
        self.recorder = recorder
        self._runs = recorder.runs
        self._states = recorder.states
        self.on_done = on_done
        #: called as ``on_first_token(request_id, node_id, now)`` when set
        self.on_first_token: Callable[[int, int, float], None] | None = None
        self.fast_forward = fast_forward
        #: a failed node's behaviour (``sim.model.faults``): takes ``submit`` and ``cancel``
        #: while set; None: healthy
        self.fault: Any = None
        self._to_cancel: list[int] = []
        #: ``(time, segment key, cached blocks)`` KV events, when ``publish_kv_events`` was called
        self.kv_log: list[tuple[float, int, int]] = []
        self._pending: LateTimeout | None = None
        self._plan: Plan | None = None
        self._run_start = 0.0
        self._iterations = 0
        self._alpha = 0.0
        self._beta = 0.0
        #: (start_s, end_s, factor): iterations starting in [start, end) take factor x longer
        self.slowdowns = slowdowns
        for start, end, _ in slowdowns:
            for t in (start, end):
                if t > 0:
                    env.timeout(t).callbacks.append(self._speed_changes)

    # -- inputs -----------------------------------------------------------------------------

    def submit(self, rid: int) -> None:
        """Take a request routed here at the current time."""
        if self.fault is not None:
            self.fault.submit(rid)
            return
        now = self.env.now
        batcher = self.batcher
        rejected = batcher.enqueue(rid, now)
        if rejected is not None:
            self.on_done(rejected)
            return
        if self._pending is None or (self._plan is None and self._iterations == 0):
            # idle or waiting for a batching timeout: plan now, after other events at this
            # instant (the iteration start records the state)
            self._pending = LateTimeout(self.env, 0.0, self._start_iteration)
            return
        self._record_state(now)
        if self._iterations > 1 and batcher.can_take_new_work():
            self._cut_run(now)

    def receive(self, rid: int, handoff: Outcome) -> None:
        """Take a request whose prompt was prefilled elsewhere and whose KV cache has just
        arrived (disaggregated serving; ``handoff``: its outcome on the prefill node)."""
        now = self.env.now
        rejected = self.batcher.enqueue_transferred(rid, now, handoff)
        if rejected is not None:
            self.on_done(rejected)
            return
        if self._pending is None or (self._plan is None and self._iterations == 0):
            self._pending = LateTimeout(self.env, 0.0, self._start_iteration)
            return
        self._record_state(now)
        if self._iterations > 1 and self.batcher.can_take_new_work():
            self._cut_run(now)

    @property
    def iteration_start_s(self) -> float:
        """When the current (or just finished) iteration or decode run began."""
        return self._run_start

    def cancel(self, rid: int) -> None:
        """Withdraw a request at the next iteration boundary (as an engine aborts a request
        between steps); its outcome, status CANCELLED, goes to ``on_done`` then."""
        if self.fault is not None:
            self.fault.cancel(rid)
            return
        if self._pending is None:
            outcome = self.batcher.cancel(rid, self.env.now)
            if outcome is not None:
                self.on_done(outcome)
            return
        self._to_cancel.append(rid)
        if self._iterations > 1:
            self._cut_run(self.env.now)

    def take_waiting(self, rid: int) -> bool:
        """Remove a queued request that never started, to send it elsewhere."""
        if self.fault is not None:
            return False
        batcher = self.batcher
        was_head = bool(batcher.waiting) and batcher.waiting[0] == rid
        if not batcher.take_waiting(rid):
            return False
        now = self.env.now
        self._record_state(now)
        if was_head and self._iterations > 1:
            self._cut_run(now)  # the new head may fit where the old one did not
        return True

    def halt(self, now: float) -> None:
        """Stop the iteration loop now (a failed node; ``sim.model.faults``): the pending
        event is ignored when it fires and the batcher keeps its state. The finished
        iterations of an interrupted decode run are logged; the one in progress is not."""
        plan, k = self._plan, self._iterations
        if plan is not None and k > 1:
            j = self._iterations_done(now - self._run_start)
            if j > 0:
                b = plan.decode_batch
                self._runs.extend((self._run_start, self._run_start + self._run_time(j),
                                   self.node_id, j, b, 0, 0, 0,
                                   j * plan.decode_ctx_sum + b * (j * (j - 1) // 2),
                                   self._alpha, self._beta))
        self._pending = None
        self._plan = None
        self._iterations = 0
        self._to_cancel.clear()

    def publish_kv_events(self) -> None:
        """Start logging the prefix cache's changes (what vLLM's KV events would publish)."""
        self.batcher.kv.events = []

    def _flush_kv_events(self, now: float) -> None:
        events = self.batcher.kv.events
        if events:
            self.kv_log.extend((now, key, blocks) for key, blocks in events)
            events.clear()

    def speed_factor(self, now: float) -> float:
        """How many times slower than its profile the node runs iterations starting now."""
        factor = 1.0
        for start, end, f in self.slowdowns:
            if start <= now < end:
                factor *= f
        return factor

    def _speed_changes(self, _event: object) -> None:
        """A slow-down starts or ends: a decode run ends at the iteration in progress, as
        stepping would price the next iteration at the new speed."""
        if self._pending is not None and self._iterations > 1:
            self._cut_run(self.env.now)

    # -- telemetry --------------------------------------------------------------------------

    def kv_used_blocks(self, now: float) -> int:
        """Blocks in use now, counting decode growth inside a fast-forwarded run."""
        if self._iterations <= 1 or self._plan is None:
            return self.batcher.kv.used_blocks
        return self.batcher.kv_used_during_run(self._iterations_started(now))

    # -- the iteration loop -----------------------------------------------------------------

    def _start_iteration(self, event: LateTimeout) -> None:
        if event is not self._pending:
            return
        now = self.env.now
        batcher = self.batcher
        plan = batcher.plan(now)
        if batcher.kv.events:
            self._flush_kv_events(now)
        if plan is None:
            self._pending = None
            self._plan = None
            self._iterations = 0
            self._record_state(now)
            wake = self.batcher.next_wakeup(now) if self.batcher.waiting else None
            if wake is not None:
                self._pending = LateTimeout(self.env, max(0.0, wake - now),
                                            self._start_iteration)
            return
        self._plan = plan
        self._run_start = now
        if plan.chunks:
            k = 1
            alpha = self.cost.step_s(plan.prefill_tokens, len(plan.chunks), plan.prefill_pairs,
                                     plan.decode_batch, plan.decode_ctx_sum)
            beta = 0.0
        else:
            base, per_ctx = self.cost.decode_terms(plan.decode_batch)
            alpha = base + per_ctx * plan.decode_ctx_sum
            beta = per_ctx * plan.decode_batch
            k = batcher.decode_run_limit() if self.fast_forward else 1
        if self.slowdowns:
            factor = self.speed_factor(now)
            alpha *= factor
            beta *= factor
        self._iterations, self._alpha, self._beta = k, alpha, beta
        kv = batcher.kv
        self._states.extend((now, self.node_id, len(batcher.waiting), len(batcher.running),
                             kv.total_blocks - kv.empty - kv.free_cached))
        self._pending = LateTimeout(self.env, k * alpha + beta * (k * (k - 1) // 2),
                                    self._end_iteration)

    def _end_iteration(self, event: LateTimeout) -> None:
        if event is not self._pending:
            return
        now = self.env.now
        plan, k = self._plan, self._iterations
        assert plan is not None
        b = plan.decode_batch
        self._runs.extend((self._run_start, now, self.node_id, k, b, len(plan.chunks),
                           plan.prefill_tokens, plan.prefill_pairs,
                           k * plan.decode_ctx_sum + b * (k * (k - 1) // 2),
                           self._alpha, self._beta))
        batcher = self.batcher
        if batcher.observes_runs:
            batcher.observe_run(k, now - self._run_start, plan.decode_batch)
        for outcome in batcher.apply(plan, k, now):
            self.on_done(outcome)
        if self.on_first_token is not None:
            for rid in batcher.first_tokens:
                self.on_first_token(rid, self.node_id, now)
        if self._to_cancel:
            for rid in self._to_cancel:
                outcome = batcher.cancel(rid, now)
                if outcome is not None:
                    self.on_done(outcome)
            self._to_cancel.clear()
        if batcher.kv.events:
            self._flush_kv_events(now)
        self._pending = event  # _start_iteration accepts the event it is handed
        self._start_iteration(event)

    def _run_time(self, k: int) -> float:
        return k * self._alpha + self._beta * (k * (k - 1) // 2)

    def _iterations_started(self, now: float) -> int:
        """Iterations of the current run that have begun by ``now`` (at least 1)."""
        elapsed = now - self._run_start
        return min(self._iterations, self._iterations_done(elapsed) + 1)

    def _iterations_done(self, elapsed: float) -> int:
        """Largest j with T(j) <= elapsed, for the current run."""
        alpha, beta = self._alpha, self._beta
        if beta > 0.0:
            # T(j) = beta/2 j^2 + (alpha - beta/2) j
            b = alpha - beta / 2
            j = int((-b + math.sqrt(b * b + 2 * beta * elapsed)) / beta)
        else:
            j = int(elapsed / alpha) if alpha > 0 else self._iterations
        j = max(0, min(j, self._iterations))
        while j > 0 and self._run_time(j) > elapsed:
            j -= 1
        while j < self._iterations and self._run_time(j + 1) <= elapsed:
            j += 1
        return j

    def _cut_run(self, now: float) -> None:
        """End the current decode run at the first iteration boundary at or after ``now``."""
        elapsed = now - self._run_start
        j = self._iterations_done(elapsed)
        if j < self._iterations and self._run_time(j) < elapsed:
            j += 1  # the iteration in progress completes first
        j = max(j, 1)
        if j >= self._iterations:
            return
        self._iterations = j
        self._pending = LateTimeout(self.env, self._run_start + self._run_time(j) - now,
                                    self._end_iteration)

    # -- measurement ------------------------------------------------------------------------

    # The two ``extend`` calls in ``_start_iteration`` and ``_end_iteration`` append the same
    # rows as ``_record_state`` and the run log (``RUN_COLUMNS``), inlined on the hot path.

    def _record_state(self, now: float) -> None:
        """Append a change point (``sim.metrics.recorder.STATE_COLUMNS``)."""
        b = self.batcher
        self._states.extend((now, self.node_id, len(b.waiting), len(b.running),
                             b.kv.total_blocks - b.kv.empty - b.kv.free_cached))
