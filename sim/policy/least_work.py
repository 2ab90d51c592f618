"""SGLang / SMG ``least_load``: the least expected drain time, with a KV-pressure barrier."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sim.policy.base import (
    ClusterView,
    RequestInfo,
    Strategy,
    StrategyParams,
    argmin_random_tie,
    strategies,
)

#: SMG's assumed prompt length when a backend reports no token count (``p̄``), tokens
UNKNOWN_REQUEST_TOKENS = 1024


@strategies.register("least_work")
class LeastWork(Strategy):
    """Send to the node whose queued work drains first, penalising nearly full KV caches.

    SMG ``least_load`` (``smg-project/smg: model_gateway/src/policies/least_load.rs``)::

        score_i = (queued_tokens_i + dispatched_since_poll_i) / throughput_i
                  + kv_barrier_s * k_i / (1 - k_i),        k_i = min(KV usage, 0.999)

    ``queued_tokens`` is the polled prompt tokens of the node's waiting requests (telemetry;
    ``queued * 1024`` when a node reports no token count, SMG's ``p̄``), and
    ``dispatched_since_poll`` the tokens this router sent the node since that poll
    (``ClusterView.dispatched_tokens_since_sample``: prompt + max output, the router's
    estimate). SMG's comment on why: *"Polls are stale between intervals; without this
    correction, plain argmin sends a whole interval's arrivals to one worker (incast).
    Crediting each dispatch water-fills load across workers."* ``throughput_i`` is 2000 tok/s
    (SMG's default when a backend reports none) or, with ``throughput: profile``, the node's
    prefill rate from its cost profile (``NodeInfo.prefill_tokens_per_s``). The barrier
    ``λ k/(1-k)`` (λ = 0.15 s) grows without bound as the KV cache fills. Ties are random.
    """

    class Params(StrategyParams):
        kv_barrier_s: float = Field(0.15, ge=0, description="λ: weight of the KV barrier "
                                                            "k/(1-k), seconds (SMG: 0.15)")
        throughput: Literal["fixed", "profile"] = Field(
            "fixed", description="drain rate: throughput_tokens_per_s for every node, or each "
                                 "node's prefill tokens/s from its cost profile")
        throughput_tokens_per_s: float = Field(
            2000.0, gt=0, description="drain rate with throughput: fixed (and for a node "
                                      "whose profile gives none), tokens/s (SMG: 2000)")
        credit_dispatched: bool = Field(
            True, description="add the tokens dispatched since the last telemetry sample "
                              "(SMG's incast correction); false: plain argmin on the poll")

    params: Params

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        return argmin_random_tie(self.scores(view), view.accepting_ids(), self.draws)

    def scores(self, view: ClusterView) -> list[float]:
        """Every node's score (expected seconds of queued work plus the KV barrier)."""
        p = self.params
        t = view.telemetry
        n = view.n_nodes
        queued = (list(t.queued_tokens) if t.queued_tokens
                  else [q * UNKNOWN_REQUEST_TOKENS for q in t.queued])
        credit = (view.dispatched_tokens_since_sample
                  if p.credit_dispatched and view.dispatched_tokens_since_sample else (0,) * n)
        scores = []
        for i, node in enumerate(view.nodes):
            rate = p.throughput_tokens_per_s
            if p.throughput == "profile" and node.prefill_tokens_per_s > 0:
                rate = node.prefill_tokens_per_s
            k = min(t.kv_used_blocks[i] / max(1, node.kv_total_blocks), 0.999)
            scores.append((queued[i] + credit[i]) / rate + p.kv_barrier_s * k / (1 - k))
        return scores
