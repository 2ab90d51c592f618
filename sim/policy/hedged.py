"""Hedged requests against stragglers (Dean & Barroso, *The Tail at Scale*, CACM 2013).

After a delay the router sends a copy of a request that has not finished to a second node;
the first copy to finish is the request's record and the other is withdrawn (its KV freed,
the tokens it computed counted as wasted work in ``summary.json`` -> ``router``). The delay is
fixed, or a percentile of recently observed latencies learned online from ``on_finish``
(Dean & Barroso hedge at the 95th-percentile expected latency, costing about 5 % extra
requests). This module also holds the pieces ``retry`` shares: the online latency percentile
and the validation of a wrapped strategy.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from sim.errors import ScenarioError
from sim.outcome import CANCELLED, COMPLETED, Outcome
from sim.policy.base import (
    ClusterView,
    RequestInfo,
    Strategy,
    StrategyParams,
    build_inner,
    check_inner,
    strategies,
)
from sim.spec import ComponentSpec


def validate_inner(spec: ComponentSpec | dict, path: str = "inner") -> ComponentSpec:
    """Check a wrapped strategy's ``{name, params}`` while the outer parameters load.

    Raises:
        ValueError: unknown name or bad parameters, one line starting with ``path`` (pydantic
            puts the outer field's path in front).
    """
    try:
        return check_inner(spec, path)
    except ScenarioError as exc:
        raise ValueError(str(exc)) from None


class RecentPercentile:
    """A percentile of the last ``window`` observations, recomputed every ``refresh`` new ones.

    ``value()`` is None until ``min_samples`` observations arrived. Recomputing in batches
    keeps the cost per observation O(window / refresh) (numpy's linear interpolation).
    """

    def __init__(self, percentile: float, window: int, min_samples: int, refresh: int = 32):
        self.percentile = percentile
        self.min_samples = min_samples
        self.refresh = refresh
        self._samples: deque[float] = deque(maxlen=window)
        self._since = 0
        self._value: float | None = None
        self.count = 0

    def add(self, x: float) -> None:
        """Record one observation (seconds)."""
        self._samples.append(x)
        self.count += 1
        self._since += 1
        if (self._value is None and self.count >= self.min_samples) or self._since >= self.refresh:
            self._since = 0
            if self.count >= self.min_samples:
                self._value = float(np.percentile(np.fromiter(self._samples, float),
                                                  self.percentile))

    def value(self) -> float | None:
        """The current percentile, or None during warm-up."""
        return self._value


class DeadlineParams(StrategyParams):
    """When to act on a request that has not finished: after a percentile of recent
    latencies (with a floor, and a fallback during warm-up), unless a subclass fixes it."""

    inner: ComponentSpec = Field(
        ComponentSpec(name="least_loaded"),
        description="the wrapped strategy that picks nodes, {name, params}")
    percentile: float = Field(
        95.0, gt=0, lt=100, description="percentile of recent latencies used as the delay")
    signal: Literal["e2e", "ttft"] = Field(
        "e2e", description="latency learned: end-to-end (act if not finished) or time to "
                           "first token (act only if no token came yet)")
    min_delay_s: float = Field(0.5, ge=0, description="floor of the learned delay")
    warmup_delay_s: float | None = Field(
        None, gt=0, description="delay before min_samples latencies were seen; null: none")
    min_samples: int = Field(50, ge=1, description="latencies needed before the percentile "
                                                   "is used")
    window: int = Field(1000, ge=10, description="recent latencies the percentile is over")

    @field_validator("inner", mode="before")
    @classmethod
    def _check_inner(cls, spec: ComponentSpec | dict) -> ComponentSpec:
        return validate_inner(spec)


class DeadlineWrapper(Strategy):
    """Routes with an inner strategy and learns a latency deadline from outcomes.

    Per-request state (arrival time, first token seen) lives from dispatch to the request's
    first outcome that is not a withdrawal, so it stays bounded by the requests in flight.
    """

    Params = DeadlineParams
    params: DeadlineParams

    def __init__(self, params: DeadlineParams, rng: np.random.Generator,
                 fixed_s: float | None = None) -> None:
        super().__init__(params, rng)
        self.fixed_s = fixed_s
        self.inner = build_inner(params.inner, rng)
        self.latency = RecentPercentile(params.percentile, params.window, params.min_samples)
        self._arrival: dict[int, float] = {}
        self._got_token: set[int] = set()
        self.skipped = 0

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        return self.inner.choose(request, view)

    def deadline_s(self) -> float | None:
        """Delay after dispatch at which to act; None: do not act."""
        p = self.params
        if self.fixed_s is not None:
            return self.fixed_s
        learned = self.latency.value()
        if learned is None:
            return p.warmup_delay_s
        return max(learned, p.min_delay_s)

    def other_node(self, request: RequestInfo, view: ClusterView,
                   exclude: frozenset[int]) -> int | None:
        """The inner strategy's pick for a copy, or None when the signal says not to act."""
        if self.params.signal == "ttft" and request.request_id in self._got_token:
            self.skipped += 1
            return None
        return self.inner.choose_other(request, view, exclude)

    def on_dispatch(self, request: RequestInfo, node_id: int, now_s: float) -> None:
        self._arrival[request.request_id] = request.arrival_s
        self.inner.on_dispatch(request, node_id, now_s)

    def on_first_token(self, request_id: int, node_id: int, now_s: float) -> None:
        arrival = self._arrival.get(request_id)
        if arrival is not None and request_id not in self._got_token:
            self._got_token.add(request_id)
            if self.params.signal == "ttft":
                self.latency.add(now_s - arrival)
        self.inner.on_first_token(request_id, node_id, now_s)

    def on_node_down(self, node_id: int) -> None:
        self.inner.on_node_down(node_id)

    def on_finish(self, outcome: Outcome) -> None:
        rid = outcome.request_id
        if outcome.status != CANCELLED:
            arrival = self._arrival.pop(rid, None)
            self._got_token.discard(rid)
            if (arrival is not None and outcome.status == COMPLETED
                    and self.params.signal == "e2e"):
                self.latency.add(outcome.finish_s - arrival)
        self.inner.on_finish(outcome)


@strategies.register("hedged")
class Hedged(DeadlineWrapper):
    """Route with ``inner``; if a request has not finished after a delay, send a copy.

    The delay is ``delay_s``, or the ``percentile`` (default 95) of the last ``window``
    end-to-end latencies (``signal: e2e``) or times to first token (``signal: ttft``: the copy
    is sent only if no token came yet, hedging the queue and prefill) seen in ``on_finish``,
    at least ``min_delay_s``; before ``min_samples`` latencies, ``warmup_delay_s`` (none by
    default). The copy goes to the inner strategy's choice among the other nodes; the first
    copy to finish wins and the router withdraws the other, counting its tokens as wasted.
    Dean & Barroso, *The Tail at Scale* (CACM 2013): hedging at p95 costs about 5 % more
    requests. The inner strategy sees only the committed dispatch (not the copy) and every
    attempt's outcome.
    """

    class Params(DeadlineParams):
        delay_s: float | None = Field(
            None, gt=0, description="fixed delay after dispatch; null: learn a percentile")

    params: Params

    def __init__(self, params: Params, rng: np.random.Generator) -> None:
        super().__init__(params, rng, params.delay_s)

    def hedge_after_s(self, request: RequestInfo, view: ClusterView) -> float | None:
        return self.deadline_s()

    def choose_other(self, request: RequestInfo, view: ClusterView,
                     exclude: frozenset[int]) -> int | None:
        return self.other_node(request, view, exclude)

    def stats(self) -> dict[str, float]:
        """``skipped_after_first_token``: hedge timers that fired after a first token
        (``signal: ttft``), so no copy was sent."""
        return {"skipped_after_first_token": self.skipped}
