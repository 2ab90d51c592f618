"""Power of two choices (Mitzenmacher 2001)."""

from __future__ import annotations

from typing import Literal

from sim.policy.base import ClusterView, RequestInfo, Strategy, StrategyParams, strategies


@strategies.register("power_of_two")
class PowerOfTwo(Strategy):
    """Sample two distinct accepting nodes uniformly, send to the less loaded one.

    ``load`` picks the signal: router-local in-flight requests (default, as SGLang's router
    and Dynamo do), router-local outstanding tokens, or the reported queue length or KV use
    (stale telemetry). Sampling only two nodes limits herding on stale data: the mean-field
    queue tail decays doubly exponentially (supermarket model). Ties go to the first sampled.
    """

    class Params(StrategyParams):
        load: Literal["inflight_requests", "inflight_tokens", "queue", "kv"] = "inflight_requests"

    params: Params

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        ids = view.accepting_ids()
        if len(ids) == 1:
            return ids[0]
        # two distinct uniform picks: the second among the others
        n = len(ids)
        i = self.draws.index(n)
        j = self.draws.index(n - 1)
        a, b = ids[i], ids[j + (j >= i)]
        return b if self._load(view, b) < self._load(view, a) else a

    def _load(self, view: ClusterView, node: int) -> float:
        signal = self.params.load
        if signal == "inflight_requests":
            return view.inflight_requests[node]
        if signal == "inflight_tokens":
            return view.inflight_tokens[node]
        if signal == "queue":
            return view.queue_length(node)
        return view.kv_utilization(node)
