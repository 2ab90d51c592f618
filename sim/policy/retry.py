"""Cancel-and-retry against stragglers: withdraw a slow request and dispatch it elsewhere.

Unlike hedging there is never more than one live copy: at the deadline the router withdraws
the attempt (freeing its KV; the tokens it computed are counted as wasted work) and sends the
request again to another node, at most ``max_retries`` times. The new attempt starts from
scratch, so retrying a request that is merely long throws its progress away; ``signal: ttft``
retries only requests still waiting for their first token (stuck in a straggler's queue or
prefill), which cost little to withdraw but are not rescued from slow decoding. Production
routers retry on timeouts and errors but none hedges.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from sim.outcome import CANCELLED, Outcome
from sim.policy.base import ClusterView, RequestInfo, strategies
from sim.policy.hedged import DeadlineParams, DeadlineWrapper


@strategies.register("retry")
class Retry(DeadlineWrapper):
    """Route with ``inner``; withdraw a request not done by a deadline and send it elsewhere.

    Deadline: ``max_s`` (a maximum processing time), or the ``percentile`` (default 95) of
    the last ``window`` end-to-end latencies (``signal: e2e``: retry any unfinished request)
    or times to first token (``signal: ttft``: retry only if no token came yet), at least
    ``min_delay_s``; before ``min_samples`` latencies, ``warmup_delay_s`` (none by default).
    Each request is retried at most ``max_retries`` times, each time to the inner strategy's
    choice among the nodes other than the live attempt's. The inner strategy sees only the
    first dispatch and every attempt's outcome.
    """

    class Params(DeadlineParams):
        max_s: float | None = Field(
            None, gt=0, description="maximum processing time after dispatch; null: learn a "
                                    "percentile")
        max_retries: int = Field(1, ge=1, le=10, description="retries per request at most")

    params: Params

    def __init__(self, params: Params, rng: np.random.Generator) -> None:
        super().__init__(params, rng, params.max_s)
        #: request id -> retry timers armed so far
        self._armed: dict[int, int] = {}

    def retry_after_s(self, request: RequestInfo, view: ClusterView) -> float | None:
        rid = request.request_id
        armed = self._armed.get(rid, 0)
        if armed >= self.params.max_retries:
            return None
        delay = self.deadline_s()
        if delay is not None:
            self._armed[rid] = armed + 1
        return delay

    def choose_other(self, request: RequestInfo, view: ClusterView,
                     exclude: frozenset[int]) -> int | None:
        return self.other_node(request, view, exclude)

    def on_finish(self, outcome: Outcome) -> None:
        if outcome.status != CANCELLED:
            self._armed.pop(outcome.request_id, None)
        super().on_finish(outcome)

    def stats(self) -> dict[str, float]:
        """``skipped_after_first_token``: retry timers that fired after a first token
        (``signal: ttft``), so the request was left where it was."""
        return {"skipped_after_first_token": self.skipped}
