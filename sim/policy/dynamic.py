"""The seed document's dynamic load balancer: a weighted score of node telemetry."""

from __future__ import annotations

import math

from pydantic import Field, model_validator

from sim.policy.base import (
    ClusterView,
    RequestInfo,
    Strategy,
    StrategyParams,
    argmin_random_tie,
    strategies,
)


@strategies.register("dynamic")
class Dynamic(Strategy):
    """Send to the node with the lowest composite load score; ties random.

    Score of node ``i`` from its reported telemetry (each signal in [0, 1])::

        score_i = w_util * min(1, running_i / max_num_seqs_i)
                + w_kv * kv_used_blocks_i / kv_total_blocks_i
                + w_queue * min(1, queued_i / queue_scale)
                + w_latency * recent_e2e_i / max_j recent_e2e_j

    with the seed document's weights 0.3, 0.3, 0.2, 0.2 and queue scale 10 (a queue of 10
    waiting requests counts as full). The latency signal is the node's exponentially weighted
    recent end-to-end latency divided by the largest among the accepting nodes; a node with no
    completion yet (NaN) scores 0 on it, as do all nodes when none has one.

    Every signal is node telemetry, sampled every ``telemetry_interval_s`` and
    ``telemetry_age_s`` old at decision time, and the score ignores what this router sent since
    the sample. So between two samples every request goes to the same lowest-scoring node:
    herding on stale data, which ``scenarios/heterogeneous.yaml`` and the tests show against
    ``power_of_two`` (which samples two nodes and so spreads even on the same stale data).
    """

    class Params(StrategyParams):
        utilization_weight: float = Field(0.3, ge=0, description="weight of running / max_num_seqs")
        kv_weight: float = Field(0.3, ge=0, description="weight of the KV blocks in use fraction")
        queue_weight: float = Field(0.2, ge=0, description="weight of min(1, queued / queue_scale)")
        latency_weight: float = Field(0.2, ge=0, description="weight of the recent E2E latency "
                                                             "relative to the slowest node")
        queue_scale: float = Field(10.0, gt=0, description="waiting requests that count as a "
                                                           "full queue")

        @model_validator(mode="after")
        def _some_weight(self) -> Dynamic.Params:
            if not (self.utilization_weight or self.kv_weight or self.queue_weight
                    or self.latency_weight):
                raise ValueError("expected at least one weight above 0")
            return self

    params: Params

    def scores(self, view: ClusterView, ids: list[int]) -> list[float]:
        """The composite score of every node (0 for nodes not in ``ids``)."""
        p = self.params
        t = view.telemetry
        nodes = view.nodes
        latency = t.recent_e2e_s or (math.nan,) * view.n_nodes
        known = [latency[i] for i in ids if latency[i] == latency[i]]  # NaN != NaN
        slowest = max(known, default=0.0)
        out = [0.0] * view.n_nodes
        for i in ids:
            info = nodes[i]
            lat = latency[i] / slowest if slowest > 0 and latency[i] == latency[i] else 0.0
            out[i] = (p.utilization_weight * min(1.0, t.running[i] / info.max_num_seqs)
                      + p.kv_weight * t.kv_used_blocks[i] / info.kv_total_blocks
                      + p.queue_weight * min(1.0, t.queued[i] / p.queue_scale)
                      + p.latency_weight * lat)
        return out

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        ids = view.accepting_ids()
        return argmin_random_tie(self.scores(view, ids), ids, self.draws)
