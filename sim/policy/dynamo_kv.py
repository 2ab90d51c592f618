"""NVIDIA Dynamo's KV router: one cost of prefill not covered by cache plus decode blocks."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from pydantic import Field

from sim.outcome import Outcome
from sim.policy.base import (
    ClusterView,
    RequestInfo,
    Strategy,
    StrategyParams,
    argmin_random_tie,
    strategies,
)
from sim.policy.radix import CacheKnowledge, PrefixIndex, leading_matches, reported_matches


class _Charge(NamedTuple):
    """What one dispatched request added to its node's router-local load."""

    node: int
    prefill_tokens: int
    shared_ids: list[int]
    private_blocks: int


@strategies.register("dynamo_kv")
class DynamoKv(Strategy):
    """Least KV-aware cost: uncached prefill blocks plus active decode blocks (Dynamo gen. 2).

    ``ai-dynamo/dynamo: lib/kv-router/src/scheduling/selector/default.rs`` with the defaults of
    ``KvRouterConfig::default()`` / ``kv_router_args.py``. Per accepting node ``i``, with ``L``
    the prompt tokens, ``B`` the block size::

        decay_i  = 1 / (1 + overlap_score_credit_decay * ((P_i - P_min)/B) / ceil(L/B))
        credit_i = overlap_score_credit * decay_i * overlap_i           # cached prompt blocks
        cost_i   = prefill_load_scale * max(0, (P_i + L)/B - credit_i)  # prefill not covered
                 + D_i + incoming_i                                     # decode blocks
                 + decode_active_request_weight * R_i                   # in-flight requests

    ``P_i`` (active prefill tokens) and ``D_i`` (active KV blocks) are the router's own
    accounting, charged at dispatch and released as Dynamo's ``ActiveSequences`` does: the
    request's uncached prompt tokens leave ``P_i`` at its first token, its blocks leave ``D_i``
    when it completes. ``incoming_i`` is the request's ``ceil(L/B)`` blocks, less the leading
    blocks already active on ``i`` when ``assume_kv_reuse`` (Dynamo's dedup of shared blocks).
    ``overlap_i`` comes from the router's own index (``cache_knowledge: approximate``, Dynamo's
    ``--no-router-kv-events``: insert on route, TTL 120 s, 2^20 blocks, kept per node here) or
    from the nodes' KV events (``precise``, Dynamo's default; needs
    ``router.kv_events_delay_s``; simlb defaults to approximate so that every scenario runs).

    Selection: ``temperature`` 0 takes the cheapest node, ties random (PR #6253 replaced the
    hash-map-order ties that unbalanced workers); above 0 it samples
    ``p_i ∝ exp(-(cost_i - min) / ((max - min) * temperature))``, uniform when all are equal.
    Only device-cache credit is modelled (no host/disk tiers). ``stats()`` counts Dynamo's
    proposed locality metrics (``DESIGN-kv-locality-metrics.md``): decisions not taking the
    deepest overlap, and the overlap blocks lost by them.
    """

    reads_telemetry = False

    class Params(StrategyParams):
        prefill_load_scale: float = Field(1.0, ge=0, description="weight of the uncached "
                                                                 "prefill blocks (Dynamo: 1)")
        overlap_score_credit: float = Field(1.0, ge=0, description="credit per cached "
                                                                   "prompt block (Dynamo: 1)")
        overlap_score_credit_decay: float = Field(
            0.0, ge=0, description="shrink the credit of nodes with more active prefill than "
                                   "the least busy one (Dynamo: 0)")
        decode_active_request_weight: float = Field(
            0.0, ge=0, description="cost per in-flight request (Dynamo: 0)")
        temperature: float = Field(0.0, ge=0, description="0: cheapest node; above 0: softmax "
                                                          "over min-max normalised costs")
        assume_kv_reuse: bool = Field(True, description="count a request's blocks already "
                                                        "active on a node once (Dynamo: true)")
        cache_knowledge: CacheKnowledge = Field(
            "approximate", description="approximate: the router's own index; precise: the "
                                       "nodes' KV events (needs router.kv_events_delay_s)")
        index_ttl_s: float = Field(120.0, gt=0, description="approximate index: forget blocks "
                                                            "routed this long ago, s")
        index_max_blocks: int = Field(2**20, ge=1, description="approximate index: most "
                                                               "blocks kept per node")

    params: Params

    def __init__(self, params: StrategyParams, rng: np.random.Generator) -> None:
        super().__init__(params, rng)
        self.index: PrefixIndex | None = None
        self.prefill_tokens: list[int] = []
        self.decode_blocks: list[int] = []
        self._active: dict[int, int] = {}  # block id -> mask of nodes where it is active
        self._refs: list[dict[int, int]] = []  # per node: block id -> active requests
        self._charges: dict[int, _Charge] = {}
        self._prefilling: set[int] = set()
        self._last: tuple[int, list[int], list[int]] = (-1, [], [])
        self._block_size = 16
        self._counts = {"non_max_overlap_selections": 0, "overlap_blocks_lost": 0}

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        self._ensure_state(view)
        assert self.index is not None
        ids = view.prompt_block_ids(request.request_id, view.nodes[0].block_size_tokens)
        if self.params.cache_knowledge == "precise":
            overlaps = reported_matches(view, request, self.registered_name)
        else:
            overlaps = self.index.match(ids, view.now_s)
        candidates = view.accepting_ids()
        costs = self.costs(request, view, ids, overlaps)
        node = self._select(costs, candidates)
        self._count_regret(overlaps, candidates, node)
        self.index.insert(node, ids, view.now_s)
        self._last = (request.request_id, ids, overlaps)
        return node

    def costs(self, request: RequestInfo, view: ClusterView, ids: list[int],
              overlaps: list[int]) -> list[float]:
        """Every node's cost (``inf`` for nodes not accepting); see the class docstring."""
        p = self.params
        self._ensure_state(view)
        block = view.nodes[0].block_size_tokens
        prompt = request.prompt_tokens
        request_blocks = max(1, math.ceil(prompt / block))
        candidates = view.accepting_ids()
        p_min = min(self.prefill_tokens[i] for i in candidates)
        reused = (leading_matches(self._active, ids, view.n_nodes) if p.assume_kv_reuse
                  else [0] * view.n_nodes)
        costs = [math.inf] * view.n_nodes
        for i in candidates:
            waiting = self.prefill_tokens[i]
            decay = 1 / (1 + p.overlap_score_credit_decay * ((waiting - p_min) / block)
                         / request_blocks)
            credit = p.overlap_score_credit * decay * overlaps[i]
            prefill = p.prefill_load_scale * max(0.0, (waiting + prompt) / block - credit)
            decode = self.decode_blocks[i] + request_blocks - reused[i]
            costs[i] = (prefill + decode
                        + p.decode_active_request_weight * view.inflight_requests[i])
        return costs

    def on_dispatch(self, request: RequestInfo, node_id: int, now_s: float) -> None:
        """Charge the request's uncached prompt tokens and its blocks to ``node_id``."""
        rid, ids, overlaps = self._last
        if rid != request.request_id:
            ids, overlaps = [], [0] * (node_id + 1)
        block = self._block_size
        prompt = request.prompt_tokens
        uncached = max(0, prompt - overlaps[node_id] * block)
        private = max(1, math.ceil(prompt / block)) - len(ids)
        charge = _Charge(node_id, uncached, ids if self.params.assume_kv_reuse else [],
                         private if self.params.assume_kv_reuse else private + len(ids))
        self._ensure_nodes(node_id + 1)
        self.prefill_tokens[node_id] += uncached
        self._add_blocks(charge, +1)
        self._charges[request.request_id] = charge
        self._prefilling.add(request.request_id)

    def on_first_token(self, request_id: int, node_id: int, now_s: float) -> None:
        """The prompt has been computed: its tokens leave the node's active prefill."""
        charge = self._charges.get(request_id)
        if charge is not None and charge.node == node_id and request_id in self._prefilling:
            self._prefilling.discard(request_id)
            self.prefill_tokens[node_id] -= charge.prefill_tokens

    def on_finish(self, outcome: Outcome) -> None:
        """The request left its node: release whatever it still holds there."""
        rid = outcome.request_id
        charge = self._charges.get(rid)
        if charge is None or charge.node != outcome.node_id:
            return
        self.on_first_token(rid, charge.node, outcome.finish_s)
        self._add_blocks(charge, -1)
        del self._charges[rid]

    def on_node_down(self, node_id: int) -> None:
        """Forget the node's entries in the prefix index (it restarts cold, if at all)."""
        if self.index is not None:
            self.index.drop_tenant(node_id)

    def stats(self) -> dict[str, float]:
        """Decisions that did not take the deepest overlap, and the overlap blocks lost."""
        return {k: float(v) for k, v in self._counts.items()}

    def _add_blocks(self, charge: _Charge, sign: int) -> None:
        """Add (``sign`` +1) or remove (-1) a request's blocks from its node's active set;
        a shared block counts once however many active requests hold it."""
        node, bit = charge.node, 1 << charge.node
        refs, active = self._refs[node], self._active
        change = 0
        for block in charge.shared_ids:
            count = refs.get(block, 0) + sign
            if count:
                refs[block] = count
                if count == 1 and sign > 0:
                    active[block] = active.get(block, 0) | bit
                    change += 1
                continue
            del refs[block]
            mask = active.pop(block) & ~bit
            if mask:
                active[block] = mask
            change -= 1
        self.decode_blocks[node] += change + sign * charge.private_blocks

    def _select(self, costs: list[float], candidates: list[int]) -> int:
        temperature = self.params.temperature
        if temperature == 0:
            return argmin_random_tie(costs, candidates, self.draws)
        values = [costs[i] for i in candidates]
        low, high = min(values), max(values)
        if high == low:
            return candidates[self.draws.index(len(candidates))]
        scale = (high - low) * temperature
        weights = [math.exp(-(v - low) / scale) for v in values]
        return candidates[self.draws.weighted_index(weights)]

    def _count_regret(self, overlaps: list[int], candidates: list[int], node: int) -> None:
        lost = max(overlaps[i] for i in candidates) - overlaps[node]
        if lost > 0:
            self._counts["non_max_overlap_selections"] += 1
            self._counts["overlap_blocks_lost"] += lost

    def _ensure_state(self, view: ClusterView) -> None:
        if self.index is None:
            self.index = PrefixIndex(view.n_nodes, self.params.index_max_blocks,
                                     self.params.index_ttl_s)
            self._block_size = view.nodes[0].block_size_tokens
        self._ensure_nodes(view.n_nodes)

    def _ensure_nodes(self, n: int) -> None:
        grow = n - len(self.prefill_tokens)
        if grow > 0:
            self.prefill_tokens.extend([0] * grow)
            self.decode_blocks.extend([0] * grow)
            self._refs.extend({} for _ in range(grow))
