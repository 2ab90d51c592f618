"""Probabilistic shedding of sheddable requests as the pool saturates (llm-d flow control)."""

from __future__ import annotations

from pydantic import Field

from sim.policy.admission import Admission, admissions
from sim.policy.base import ClusterView, RequestInfo, StrategyParams


@admissions.register("saturation_shedding")
class SaturationShedding(Admission):
    """Drop sheddable requests with a probability that climbs steeply with pool saturation.

    llm-d flow control (``llm-d/llm-d-inference-scheduler @ 520af478``: the
    ``utilization-detector`` and the ``probabilistic-admitter``)::

        score_i = max(queued_i / queue_threshold, kv_usage_i / kv_threshold)   # 5, 0.8
        score_i = 1                       if the telemetry is older than staleness_threshold_s
        saturation = mean of score_i over the nodes that serve the request
        p_reject = min(saturation ** power * scale, 1)                        # 5, 300

    Only requests marked sheddable (``RequestInfo.sheddable``: llm-d's priority < 0) are
    dropped, each with probability ``p_reject`` (one draw from ``rng``); every other request
    is admitted. With the defaults every sheddable request is shed from saturation ≈ 0.32 and
    about 2.3 % at 0.15. Dropped requests are recorded as rejected (``router.shed``).

    ``staleness_threshold_s``: llm-d treats metrics older than 200 ms as 100 % saturated
    (scraped every 50 ms there). In simlb the telemetry's age runs up to the scenario's
    ``router.telemetry_interval_s``, so with the 0.2 s default and an interval of 0.2 s or
    more every sheddable request arriving late in an interval is shed; set the threshold above
    the interval (or null to never treat telemetry as stale) unless that is the point.
    """

    class Params(StrategyParams):
        queue_threshold: float = Field(5.0, gt=0, description="waiting requests at which a "
                                                              "node counts as saturated")
        kv_threshold: float = Field(0.8, gt=0, le=1, description="KV usage at which a node "
                                                                 "counts as saturated")
        power: float = Field(5.0, gt=0, description="exponent of the shedding curve")
        scale: float = Field(300.0, gt=0, description="factor of the shedding curve")
        staleness_threshold_s: float | None = Field(
            0.2, gt=0, description="telemetry older than this counts as saturation 1 (llm-d: "
                                   "0.2 s); null: never")

    params: Params

    def admit(self, request: RequestInfo, view: ClusterView) -> bool:
        """Admit every request not marked sheddable; shed the others with ``p_reject``."""
        if not request.sheddable:
            return True
        p = self.params
        probability = min(self.saturation(view) ** p.power * p.scale, 1.0)
        return not self.rng.random() < probability

    def saturation(self, view: ClusterView) -> float:
        """Mean saturation score of the nodes accepting the request (llm-d PoolSaturation)."""
        p = self.params
        nodes = view.accepting_ids()
        stale = p.staleness_threshold_s is not None and view.telemetry_age_s > \
            p.staleness_threshold_s
        if stale or not nodes:
            return 1.0
        queued = view.telemetry.queued
        scores = [max(queued[i] / p.queue_threshold, view.kv_utilization(i) / p.kv_threshold)
                  for i in nodes]
        return sum(scores) / len(scores)
