"""Consistent hashing with bounded loads on a prefix key or the session (SMG ``prefix_hash``)."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
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

_MASK64 = (1 << 64) - 1


def mix64(x: int) -> int:
    """SplitMix64's finaliser: a fixed, well-spread 64-bit hash of an integer (Python's
    ``hash`` is the identity on small ints and salted on strings, so it is not used)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


@strategies.register("consistent_hash")
class ConsistentHash(Strategy):
    """Hash the request's prefix (or session) onto a ring of virtual nodes, bounded by load.

    SMG ``prefix_hash`` (``sgl-model-gateway/src/policies/prefix_hash.rs`` @ 065f331f),
    consistent hashing with bounded loads (Mirrokni,
    Thorup & Zadimoghaddam 2018; KubeAI's CHWBL):

    * key: the chained id of the request's ``prefix_blocks``-th prompt block (SMG hashes the
      first 256 tokens: 16 blocks of 16), so equal prefixes share a key; a prompt without that
      many shareable blocks uses its deepest shareable block, or its own id when it has none.
      With ``key: session`` the session id is the key (SMG ``consistent_hashing``), falling back
      to the prefix for requests without a session.
    * ring: ``virtual_nodes`` points per node (150, as SGLang's worker registry ``HashRing``),
      hashed with SplitMix64; the owner is the first accepting node clockwise from the key.
    * bound: the owner is taken if its router-local in-flight count ``R`` satisfies
      ``R_owner <= load_factor * (sum R + 1) / n`` (c = 1.25). Otherwise ``overflow:
      least_loaded`` (SMG) takes the least loaded node passing the same test, or the owner if
      none does; ``overflow: ring_walk`` (the CHWBL paper) takes the next passing node
      clockwise.
    """

    reads_telemetry = False

    class Params(StrategyParams):
        key: Literal["prefix", "session"] = Field(
            "prefix", description="what is hashed: the prompt's leading blocks or the session")
        prefix_blocks: int = Field(16, ge=1, description="leading prompt blocks in the key "
                                                         "(SMG: 256 tokens)")
        virtual_nodes: int = Field(150, ge=1, le=10_000, description="ring points per node")
        load_factor: float = Field(1.25, ge=1, description="c: no node above c x the mean "
                                                           "in-flight (SMG: 1.25)")
        overflow: Literal["least_loaded", "ring_walk"] = Field(
            "least_loaded", description="where an over-bound owner's request goes: the least "
                                        "loaded node within the bound (SMG) or the next one "
                                        "on the ring within it")

    params: Params

    def __init__(self, params: StrategyParams, rng: np.random.Generator) -> None:
        super().__init__(params, rng)
        self._points: list[int] = []
        self._owners: list[int] = []

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        if len(self._owners) != view.n_nodes * self.params.virtual_nodes:
            self._build_ring(view.n_nodes)
        candidates = view.accepting_ids()
        loads = view.inflight_requests
        bound = (self.params.load_factor * (sum(loads[i] for i in candidates) + 1)
                 / len(candidates))
        walk = self._walk(self.key(request, view), view.accepting)
        owner = next(walk)
        if loads[owner] <= bound:
            return owner
        if self.params.overflow == "ring_walk":
            # the next node clockwise within the bound; the owner if none is
            return next((node for node in walk if loads[node] <= bound), owner)
        within = [i for i in candidates if loads[i] <= bound]
        return argmin_random_tie(loads, within, self.draws) if within else owner

    def _walk(self, key: int, accepting: tuple[bool, ...]) -> Iterator[int]:
        """Accepting nodes in ring order clockwise from ``key``, each once."""
        n_points = len(self._points)
        start = bisect.bisect_left(self._points, key)
        seen: set[int] = set()
        for k in range(n_points):
            node = self._owners[(start + k) % n_points]
            if accepting[node] and node not in seen:
                seen.add(node)
                yield node

    def key(self, request: RequestInfo, view: ClusterView) -> int:
        """The request's 64-bit position on the ring."""
        if self.params.key == "session" and request.session_id >= 0:
            return mix64(request.session_id)
        ids = view.prompt_block_ids(request.request_id, view.nodes[0].block_size_tokens)
        if ids:
            return mix64(ids[min(len(ids), self.params.prefix_blocks) - 1] << 1)
        return mix64(request.request_id << 1 | 1)  # no shareable block: its own key

    def _build_ring(self, n_nodes: int) -> None:
        points = sorted((mix64(node << 20 | v), node)
                        for node in range(n_nodes) for v in range(self.params.virtual_nodes))
        self._points = [p for p, _ in points]
        self._owners = [node for _, node in points]
