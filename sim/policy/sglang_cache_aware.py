"""SGLang's cache-aware router: an approximate radix tree per worker, switched off by imbalance."""

from __future__ import annotations

import math
from typing import Literal

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

#: SGLang counts its tree in characters; about 4 characters make a token (llm-d's and SGLang's
#: own rule of thumb)
CHARS_PER_TOKEN = 4

#: the two default sets: the Python CLI ``RouterArgs``
#: (sglang @ 6614f984, what ``python -m sglang_router`` users get) and the Rust
#: ``CacheAwareConfig::default()`` (sglang @ 0edb07a1, smg @ 56ad2018)
DEFAULTS: dict[str, dict[str, float]] = {
    "python": {"cache_threshold": 0.3, "balance_abs_threshold": 64,
               "balance_rel_threshold": 1.5, "eviction_interval_s": 60.0,
               "max_tree_chars": 2**26},
    "rust": {"cache_threshold": 0.5, "balance_abs_threshold": 32,
             "balance_rel_threshold": 1.1, "eviction_interval_s": 30.0,
             "max_tree_chars": 10_000},
}


@strategies.register("sglang_cache_aware")
class SglangCacheAware(Strategy):
    """Longest cached prefix from the router's own history, unless the load is imbalanced.

    SGLang router / SMG ``cache_aware`` (``sgl-model-gateway/src/policies/cache_aware.rs``,
    ``tree.rs``). Per request, on router-local in-flight
    counts ``R`` of the accepting nodes::

        if max R - min R > balance_abs_threshold and max R > balance_rel_threshold * min R:
            node = argmin R                                   # imbalanced: shortest queue
        else:
            match_i = leading prompt blocks in node i's tree; best = max_i match_i
            node = a node with match best   if best * block / prompt > cache_threshold
                   else argmin R            (miss_policy: min_load, SGLang since PR #14650)
                   or the smallest tree     (miss_policy: smallest_tree, 2024-2025 SGLang)
        insert the prompt's blocks into node's tree           # optimistic: assume it caches

    The tree is keyed by chained block ids (``ClusterView.prompt_block_ids``), which makes a
    block trie exact where SGLang's character tree is approximate; only shareable blocks are
    indexed (unique content matches nothing), so the budget fills more slowly than SGLang's;
    every ``eviction_interval_s`` each node's tree is pruned to ``max_tree_blocks`` by LRU leaves
    (SGLang's background eviction thread, run lazily at the next decision). Among nodes tied at
    the deepest match SGLang takes the first tenant stored at that tree node (arbitrary); here a
    seeded random one. The ``smallest_tree`` miss policy reproduces the "death spiral" of
    SGLang PR #14305.

    ``defaults`` picks the unset thresholds: ``python`` (CLI: cache 0.3, abs 64, rel 1.5,
    eviction 60 s, 2^26 characters) or ``rust`` (``CacheAwareConfig::default()``: 0.5, 32, 1.1,
    30 s, 10,000 characters). The character budget becomes blocks at 4 characters per token.
    With ``cache_knowledge: precise`` the matches come from the nodes' KV events
    (``router.kv_events_delay_s``; SMG's event-driven ``PositionalIndexer`` mode) instead of
    the tree. ``stats()``: decisions by cache hit, by miss, and by imbalance (SGLang's
    cache hit/miss and load-balancing counters).
    """

    reads_telemetry = False

    class Params(StrategyParams):
        defaults: Literal["python", "rust"] = Field(
            "python", description="default set for the thresholds left unset: the Python "
                                  "CLI's or the Rust library's")
        cache_threshold: float | None = Field(
            None, ge=0, le=1, description="route to the deepest match only if its share of "
                                          "the prompt exceeds this (python 0.3, rust 0.5)")
        balance_abs_threshold: int | None = Field(
            None, ge=0, description="imbalanced if max - min in-flight exceeds this "
                                    "(python 64, rust 32) ...")
        balance_rel_threshold: float | None = Field(
            None, ge=1, description="... and max exceeds this times min (python 1.5, rust 1.1)")
        miss_policy: Literal["min_load", "smallest_tree"] = Field(
            "min_load", description="below the threshold: fewest in-flight (SGLang today) or "
                                    "the smallest tree (SGLang before PR #14650)")
        max_tree_blocks: int | None = Field(
            None, ge=1, description="blocks each node's tree keeps after an eviction; null: "
                                    "SGLang's character budget / (4 x block size)")
        eviction_interval_s: float | None = Field(
            None, gt=0, description="period of the LRU eviction, s (python 60, rust 30)")
        cache_knowledge: CacheKnowledge = Field(
            "approximate", description="approximate: the router's own tree; precise: the "
                                       "nodes' KV events (needs router.kv_events_delay_s)")

    params: Params

    def __init__(self, params: StrategyParams, rng: np.random.Generator) -> None:
        super().__init__(params, rng)
        p = self.params
        chosen = DEFAULTS[p.defaults]
        self.cache_threshold = _pick(p.cache_threshold, chosen["cache_threshold"])
        self.balance_abs = _pick(p.balance_abs_threshold, chosen["balance_abs_threshold"])
        self.balance_rel = _pick(p.balance_rel_threshold, chosen["balance_rel_threshold"])
        self.eviction_interval_s = _pick(p.eviction_interval_s, chosen["eviction_interval_s"])
        self._max_tree_chars = chosen["max_tree_chars"]
        self.index: PrefixIndex | None = None
        self.max_tree_blocks = 0
        self._next_eviction_s = 0.0
        self._counts = {"cache_routed": 0, "miss_routed": 0, "balance_routed": 0}

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        index = self._index(view)
        block = view.nodes[0].block_size_tokens
        ids = view.prompt_block_ids(request.request_id, block)
        candidates = view.accepting_ids()
        loads = view.inflight_requests
        if self._imbalanced(loads, candidates):
            self._counts["balance_routed"] += 1
            node = argmin_random_tie(loads, candidates, self.draws)
        else:
            node = self._by_cache(request, view, ids, candidates, index)
        index.insert(node, ids, view.now_s)
        return node

    def on_node_down(self, node_id: int) -> None:
        """Forget the node's entries in the prefix index (it restarts cold, if at all)."""
        if self.index is not None:
            self.index.drop_tenant(node_id)

    def stats(self) -> dict[str, float]:
        """Decisions taken by cache match, by miss policy, and by the imbalance rule."""
        return {k: float(v) for k, v in self._counts.items()}

    def _imbalanced(self, loads: tuple[int, ...], candidates: list[int]) -> bool:
        low = min(loads[i] for i in candidates)
        high = max(loads[i] for i in candidates)
        return high - low > self.balance_abs and high > self.balance_rel * low

    def _by_cache(self, request: RequestInfo, view: ClusterView, ids: list[int],
                  candidates: list[int], index: PrefixIndex) -> int:
        if self.params.cache_knowledge == "precise":
            matches = reported_matches(view, request, self.registered_name)
        else:
            matches = index.match(ids)
        best = max(matches[i] for i in candidates)
        block = view.nodes[0].block_size_tokens
        if best > 0 and best * block / max(1, request.prompt_tokens) > self.cache_threshold:
            self._counts["cache_routed"] += 1
            return argmin_random_tie([-m for m in matches], candidates, self.draws)
        self._counts["miss_routed"] += 1
        if self.params.miss_policy == "smallest_tree":
            sizes = [index.size(i) for i in range(view.n_nodes)]
            return argmin_random_tie(sizes, candidates, self.draws)
        return argmin_random_tie(view.inflight_requests, candidates, self.draws)

    def _index(self, view: ClusterView) -> PrefixIndex:
        """The tree (built at the first decision, when the cluster size is known), pruned
        if an eviction period has passed."""
        if self.index is None:
            block = view.nodes[0].block_size_tokens
            self.max_tree_blocks = self.params.max_tree_blocks or max(
                1, math.ceil(self._max_tree_chars / (CHARS_PER_TOKEN * block)))
            self.index = PrefixIndex(view.n_nodes)
            self._next_eviction_s = view.now_s + self.eviction_interval_s
        elif view.now_s >= self._next_eviction_s:
            for node in range(view.n_nodes):
                self.index.evict_to(node, self.max_tree_blocks)
            periods = math.floor((view.now_s - self._next_eviction_s)
                                 / self.eviction_interval_s) + 1
            self._next_eviction_s += periods * self.eviction_interval_s
        return self.index


def _pick(value: float | None, default: float) -> float:
    return default if value is None else value
