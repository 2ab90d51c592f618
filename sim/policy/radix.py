"""An approximate prefix index of what a router sent where: a multi-tenant radix tree on blocks.

SGLang's cache-aware router keeps one radix tree whose nodes are tagged with the workers
("tenants") that were sent that prefix, built only from its own routing history and pruned per
tenant by LRU leaf eviction (``sgl-model-gateway/src/policies/tree.rs``). Dynamo's
approximate mode (``--no-router-kv-events``: TTL 120 s, at most 2^20 blocks) and llm-d's
approximate prefix producer (``requestcontrol/dataproducer/approximateprefix``: a per-server LRU
of chained block hashes sized to the server's KV blocks) keep the same information.

Here a prompt is a list of **chained block ids** (``ClusterView.prompt_block_ids``): block ``j``'s
id determines blocks ``0..j`` too, exactly like vLLM's or llm-d's chained block hashes. A trie
over such ids needs no edge labels: each trie node *is* a block id, its parent is the block
before it. So the tree is stored flat:

* ``holders[id]``: bit mask of the tenants (node ids) whose tree holds the block;
* ``lru[t]``: tenant ``t``'s blocks in order of last access, each with its access time (s).

Invariant (checked by ``tests/test_radix.py``): every tenant's block set is prefix-closed, and in
its LRU order every block comes *before* its ancestors. Insert touches a path from the leaf up to
the root, so ancestors are always more recent; popping the front of the LRU order therefore
always removes a leaf, which is SGLang's "evict LRU leaves" in O(1) per block. Matching walks
the request's ids once and narrows the tenant mask, so finding every tenant's match length costs
O(matched blocks + tenants), not O(tenants x blocks).

The index never sees a node: it holds only what the router itself recorded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

from sim.errors import ScenarioError
from sim.policy.base import ClusterView, RequestInfo

#: where a cache-aware strategy's prefix matches come from: its own routing history, or the
#: nodes' KV events (``router.kv_events_delay_s``)
CacheKnowledge = Literal["approximate", "precise"]


def leading_matches(holders: dict[int, int], ids: Sequence[int], n_tenants: int) -> list[int]:
    """Per tenant, how many leading ``ids`` the tenant holds (``holders``: id -> tenant mask).

    Stops at a tenant's first missing id, so a gap ends its match even if later ids are held.
    """
    depth = [0] * n_tenants
    mask = (1 << n_tenants) - 1
    for j, block in enumerate(ids):
        held = holders.get(block, 0) & mask
        if held != mask:
            _set_depths(depth, mask & ~held, j)
            mask = held
            if not mask:
                return depth
    _set_depths(depth, mask, len(ids))
    return depth


def _set_depths(depth: list[int], mask: int, value: int) -> None:
    while mask:
        low = mask & -mask
        depth[low.bit_length() - 1] = value
        mask ^= low


class PrefixIndex:
    """Per-tenant prefix trees over chained block ids, with LRU eviction and an optional TTL.

    Args:
        n_tenants: number of tenants (the cluster's nodes), ids ``0..n_tenants-1``.
        capacity_blocks: most blocks a tenant's tree keeps (one number for all, or one per
            tenant); the least recently used leaves go first when an insert exceeds it. None:
            unbounded (call ``evict_to`` to prune, as SGLang's periodic eviction does).
        ttl_s: blocks not touched for this long are dropped (Dynamo's approximate index);
            None: no expiry.
    """

    def __init__(self, n_tenants: int, capacity_blocks: int | Sequence[int] | None = None,
                 ttl_s: float | None = None) -> None:
        self.n_tenants = n_tenants
        if capacity_blocks is None or isinstance(capacity_blocks, int):
            self.capacity_blocks: list[int | None] = [capacity_blocks] * n_tenants
        else:
            self.capacity_blocks = list(capacity_blocks)
        self.ttl_s = ttl_s
        self._holders: dict[int, int] = {}
        self._lru: list[OrderedDict[int, float]] = [OrderedDict() for _ in range(n_tenants)]
        #: blocks removed by capacity, TTL or ``evict_to`` (all tenants)
        self.evicted_blocks = 0

    def size(self, tenant: int) -> int:
        """Blocks in the tenant's tree."""
        return len(self._lru[tenant])

    def match(self, ids: Sequence[int], now_s: float | None = None) -> list[int]:
        """Per tenant, the number of leading ``ids`` in its tree (expired blocks dropped
        first when ``now_s`` is given and the index has a TTL)."""
        if now_s is not None and self.ttl_s is not None:
            self.expire(now_s)
        return leading_matches(self._holders, ids, self.n_tenants)

    def insert(self, tenant: int, ids: Sequence[int], now_s: float) -> None:
        """Record that ``tenant`` now holds the prefix ``ids`` (touching all of it), then
        evict the tenant's least recently used leaves beyond its capacity."""
        bit = 1 << tenant
        lru = self._lru[tenant]
        holders = self._holders
        for block in reversed(ids):  # leaf first, so ancestors end up more recent
            if block in lru:
                lru.move_to_end(block)
            else:
                holders[block] = holders.get(block, 0) | bit
            lru[block] = now_s
        cap = self.capacity_blocks[tenant]
        if cap is not None and len(lru) > cap:
            self.evict_to(tenant, cap)

    def evict_to(self, tenant: int, max_blocks: int) -> int:
        """Drop the tenant's LRU leaves until it holds at most ``max_blocks``; return how many."""
        lru = self._lru[tenant]
        n = max(0, len(lru) - max_blocks)
        for _ in range(n):
            block, _t = lru.popitem(last=False)
            self._forget(block, tenant)
        self.evicted_blocks += n
        return n

    def expire(self, now_s: float) -> int:
        """Drop every block not touched in the last ``ttl_s`` seconds; return how many."""
        if self.ttl_s is None:
            return 0
        horizon = now_s - self.ttl_s
        dropped = 0
        for tenant, lru in enumerate(self._lru):
            while lru:
                block, touched = next(iter(lru.items()))
                if touched >= horizon:
                    break
                lru.popitem(last=False)
                self._forget(block, tenant)
                dropped += 1
        self.evicted_blocks += dropped
        return dropped

    def drop_tenant(self, tenant: int) -> int:
        """Forget everything the tenant holds (its node failed or left); return how many
        blocks (not counted as evictions)."""
        lru = self._lru[tenant]
        n = len(lru)
        for block in lru:
            self._forget(block, tenant)
        lru.clear()
        return n

    def _forget(self, block: int, tenant: int) -> None:
        mask = self._holders[block] & ~(1 << tenant)
        if mask:
            self._holders[block] = mask
        else:
            del self._holders[block]

    def check(self) -> None:
        """Assert that the holder masks and the tenants' LRU orders agree (for tests; the
        prefix closure is checked by callers that know each id's parent)."""
        for tenant, lru in enumerate(self._lru):
            bit = 1 << tenant
            for block in lru:
                assert self._holders[block] & bit, (tenant, block)
        for block, mask in self._holders.items():
            assert mask, block
            for tenant in range(self.n_tenants):
                assert bool(mask >> tenant & 1) == (block in self._lru[tenant]), (tenant, block)


def reported_matches(view: ClusterView, request: RequestInfo, strategy: str) -> list[int]:
    """Per node, the request's leading prompt blocks in the node's prefix cache as the nodes'
    KV events told the router (precise cache knowledge; 0 for nodes not accepting).

    Raises:
        ScenarioError: the scenario publishes no KV events (``router.kv_events_delay_s``).
    """
    reported = view.cached_prefix_blocks
    if reported is None:
        raise ScenarioError(
            f"strategy '{strategy}' has cache_knowledge: precise, which reads the nodes' KV "
            f"events; set router.kv_events_delay_s (0 for instant events) or use "
            f"cache_knowledge: approximate", field="router.kv_events_delay_s")
    rid = request.request_id
    return [reported(i, rid) if ok else 0 for i, ok in enumerate(view.accepting)]
