"""Prefix-hash affinity: requests that start alike go to the node that served that start."""

from __future__ import annotations

from collections import OrderedDict

from pydantic import Field

from sim.policy.base import (
    ClusterView,
    RequestInfo,
    Strategy,
    StrategyParams,
    argmin_random_tie,
    strategies,
)


def is_overloaded(view: ClusterView, node: int, ids: list[int], overload_factor: float,
                  min_inflight: int) -> bool:
    """Whether ``node`` holds at least ``min_inflight`` router-local in-flight requests and
    more than ``overload_factor`` times the mean of the other nodes in ``ids`` (never when it
    is the only one)."""
    load = view.inflight_requests
    others = [load[i] for i in ids if i != node]
    if load[node] < min_inflight or not others:
        return False
    return load[node] * len(others) > overload_factor * sum(others)


class AffinityParams(StrategyParams):
    """When a preferred node counts as overloaded (shared by the affinity strategies)."""

    overload_factor: float = Field(
        2.0, ge=1.0, description="the preferred node is overloaded above this times the mean "
                                 "router-local in-flight requests of the other accepting nodes")
    min_inflight: int = Field(
        8, ge=1, description="a node with fewer router-local in-flight requests is never "
                             "overloaded (it batches them all at once)")


@strategies.register("cache_locality")
class CacheLocality(Strategy):
    """Send requests with the same first ``prefix_tokens`` tokens to the same node.

    The seed document's prefix-hash affinity. The key of a request is the id of the last of
    its first ``prefix_tokens // block_size`` full shareable prompt blocks
    (``view.prompt_block_ids``, with the block size of node 0): block ids are chained like
    vLLM's block hashes, so that id stands for the whole first ``N`` tokens, and the default
    128 tokens is 8 blocks of 16. A request with fewer shareable blocks has no key and goes to
    the least loaded node (router-local in-flight requests, random ties).

    A key maps to the node that last served it (an LRU table of at most ``max_keys`` keys).
    The request goes there unless that node does not accept it or is overloaded: at least
    ``min_inflight`` (8) in flight and more than ``overload_factor`` (2) times the mean of the
    other accepting nodes. Then it goes to the least loaded node, which becomes the key's owner (its
    cache is about to hold the prefix); ``stats()`` counts these ``locality_spills``. The seed
    document gave no threshold value: 2 x mean is the bounded-load rule of consistent hashing
    with bounded loads (Mirrokni et al. 2018, at its loosest common setting), and the floor of
    8 keeps a node that batches everything at once (continuous batching) from spilling a
    prefix, and paying a full prefill elsewhere, over a handful of requests.
    """

    reads_telemetry = False

    class Params(AffinityParams):
        prefix_tokens: int = Field(128, ge=1, description="tokens of the prompt start that form "
                                                          "the key (rounded down to whole blocks, "
                                                          "at least one)")
        max_keys: int = Field(100_000, ge=1, description="largest owner table (LRU)")

    params: Params

    def __init__(self, params, rng) -> None:  # type: ignore[no-untyped-def]
        super().__init__(params, rng)
        self.owner: OrderedDict[int, int] = OrderedDict()
        self.spills = 0

    def prefix_key(self, request: RequestInfo, view: ClusterView) -> int | None:
        """The id of the block that ends the request's first ``prefix_tokens`` tokens."""
        block = view.nodes[0].block_size_tokens
        n_blocks = max(1, self.params.prefix_tokens // block)
        blocks = view.prompt_block_ids(request.request_id, block, n_blocks)
        return blocks[n_blocks - 1] if len(blocks) >= n_blocks else None

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        ids = view.accepting_ids()
        key = self.prefix_key(request, view)
        if key is None:
            return argmin_random_tie(view.inflight_requests, ids, self.draws)
        p = self.params
        node = self.owner.get(key)
        if node is not None and view.accepting[node]:
            if not is_overloaded(view, node, ids, p.overload_factor, p.min_inflight):
                self.owner.move_to_end(key)
                return node
            self.spills += 1
        node = argmin_random_tie(view.inflight_requests, ids, self.draws)
        self.owner[key] = node
        self.owner.move_to_end(key)
        if len(self.owner) > p.max_keys:
            self.owner.popitem(last=False)
        return node

    def stats(self) -> dict[str, float]:
        """``locality_spills``: requests sent away from their overloaded owner."""
        return {"locality_spills": self.spills}
