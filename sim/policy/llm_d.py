"""llm-d / Gateway API Inference Extension endpoint picker: weighted scorers, max-score pick."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from pydantic import Field

from sim.policy.base import (
    ClusterView,
    RequestInfo,
    Strategy,
    StrategyParams,
    argmin_random_tie,
    strategies,
)
from sim.policy.radix import CacheKnowledge, PrefixIndex, reported_matches


@strategies.register("llm_d")
class LlmD(Strategy):
    """Highest weighted sum of per-endpoint scores in [0, 1]; ties random.

    The llm-d inference scheduler's default profile (``llm-d/llm-d-inference-scheduler @
    520af478: pkg/epp/config/loader/defaults.go``, scorers under
    ``pkg/epp/framework/plugins/``)::

        total_i = w_queue * (Qmax - Q_i) / (Qmax - Qmin)      # queue-scorer; all equal -> 1
                + w_kv * (1 - k_i)                             # kv-cache-utilization-scorer
                + w_prefix * matched_i / prompt_blocks         # prefix-cache-scorer
                + w_session * [i served the session before]    # session-affinity-scorer
        pick = argmax total_i                                  # max-score-picker, random ties

    ``Q`` is the reported waiting queue and ``k`` the reported KV usage (telemetry, as the EPP
    scrapes them); the extremes are taken over the accepting endpoints. The prefix match comes
    from the approximate producer (``requestcontrol/dataproducer/approximateprefix``): chained
    block ids of the first ``max_prefix_blocks`` (256) prompt blocks, indexed per endpoint in an
    LRU of ``lru_capacity_blocks`` (default: the node's KV blocks, as ``autoTune`` sizes it;
    the fixed default there is 31,250) and filled at dispatch; or, with ``cache_knowledge:
    precise``, from the nodes' KV events (``precise-prefix-cache-scorer``; needs
    ``router.kv_events_delay_s``). Weights default to queue 2, KV 2, prefix 3 (the EPP's
    default profile) and session 0; the session scorer remembers the last endpoint of the
    ``max_sessions`` most recent sessions (the ``x-session-token`` header llm-d echoes).
    """

    class Params(StrategyParams):
        queue_weight: float = Field(2.0, ge=0, description="weight of the queue scorer")
        kv_cache_weight: float = Field(2.0, ge=0, description="weight of the KV-utilisation "
                                                              "scorer")
        prefix_weight: float = Field(3.0, ge=0, description="weight of the prefix-cache "
                                                            "scorer")
        session_weight: float = Field(0.0, ge=0, description="weight of the session-affinity "
                                                             "scorer")
        cache_knowledge: CacheKnowledge = Field(
            "approximate", description="approximate: the router's own LRU index; precise: "
                                       "the nodes' KV events (needs router.kv_events_delay_s)")
        max_prefix_blocks: int = Field(256, ge=1, description="prompt blocks matched at most "
                                                              "(llm-d: 256)")
        lru_capacity_blocks: int | None = Field(
            None, ge=1, description="index capacity per endpoint, blocks; null: the node's "
                                    "KV blocks (llm-d autoTune)")
        max_sessions: int = Field(100_000, ge=1, description="sessions remembered for the "
                                                             "session scorer (LRU)")

    params: Params

    def __init__(self, params: StrategyParams, rng: np.random.Generator) -> None:
        super().__init__(params, rng)
        self.index: PrefixIndex | None = None
        self._sessions: OrderedDict[int, int] = OrderedDict()
        self._ids_of: tuple[int, list[int]] = (-1, [])  # the last request's block ids

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        scores = self.scores(request, view)
        node = argmin_random_tie([-s for s in scores], view.accepting_ids(), self.draws)
        if self.params.prefix_weight > 0 and self.params.cache_knowledge == "approximate":
            self._index(view).insert(node, self._ids(request, view), view.now_s)
        if request.session_id >= 0:
            self._sessions[request.session_id] = node
            self._sessions.move_to_end(request.session_id)
            if len(self._sessions) > self.params.max_sessions:
                self._sessions.popitem(last=False)
        return node

    def scores(self, request: RequestInfo, view: ClusterView) -> list[float]:
        """Every node's weighted score (``-inf`` for nodes not accepting)."""
        p = self.params
        candidates = view.accepting_ids()
        queued = view.telemetry.queued
        q_min = min(queued[i] for i in candidates)
        q_max = max(queued[i] for i in candidates)
        prefix = self._prefix_scores(request, view) if p.prefix_weight > 0 else None
        session_node = self._sessions.get(request.session_id, -1)
        total = [-np.inf] * view.n_nodes
        for i in candidates:
            s_queue = 1.0 if q_max == q_min else (q_max - queued[i]) / (q_max - q_min)
            s_kv = 1.0 - min(1.0, view.kv_utilization(i))
            s_prefix = prefix[i] if prefix is not None else 0.0
            s_session = 1.0 if i == session_node else 0.0
            total[i] = (p.queue_weight * s_queue + p.kv_cache_weight * s_kv
                        + p.prefix_weight * s_prefix + p.session_weight * s_session)
        return total

    def _prefix_scores(self, request: RequestInfo, view: ClusterView) -> list[float]:
        """Matched share of the (first ``max_prefix_blocks``) prompt blocks, per node."""
        block = view.nodes[0].block_size_tokens
        total = min(request.prompt_tokens // block, self.params.max_prefix_blocks)
        if total == 0:
            return [0.0] * view.n_nodes
        if self.params.cache_knowledge == "precise":
            matched = reported_matches(view, request, self.registered_name)
        else:
            self._ids_of = (request.request_id, self._ids(request, view))
            matched = self._index(view).match(self._ids_of[1])
        return [min(m, total) / total for m in matched]

    def _ids(self, request: RequestInfo, view: ClusterView) -> list[int]:
        if self._ids_of[0] == request.request_id:
            return self._ids_of[1]
        ids = view.prompt_block_ids(request.request_id, view.nodes[0].block_size_tokens)
        return ids[: self.params.max_prefix_blocks]

    def on_node_down(self, node_id: int) -> None:
        """Forget the node's entries in the prefix index (it restarts cold, if at all)."""
        if self.index is not None:
            self.index.drop_tenant(node_id)

    def _index(self, view: ClusterView) -> PrefixIndex:
        if self.index is None:
            cap = self.params.lru_capacity_blocks
            self.index = PrefixIndex(
                view.n_nodes, [cap or node.kv_total_blocks for node in view.nodes])
        return self.index
