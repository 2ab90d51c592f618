"""KV cache block accounting and prefix caching, against a block-by-block reference model."""

from __future__ import annotations

from collections import OrderedDict

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sim.model.kv_cache import KVCache


def test_allocate_and_free_count_blocks():
    """Private blocks move between empty and used; free restores them."""
    kv = KVCache(10, 16)
    kv.allocate(4)
    assert (kv.used_blocks, kv.free_blocks) == (4, 6)
    kv.free(3)
    assert (kv.used_blocks, kv.free_blocks) == (1, 9)
    kv.check_invariants()


def test_allocate_beyond_free_raises():
    """An allocation larger than the free blocks is refused."""
    kv = KVCache(3, 16)
    with pytest.raises(ValueError, match="only 3 free"):
        kv.allocate(4)


def test_blocks_for_rounds_up():
    """A partial block costs a whole block."""
    kv = KVCache(10, 16)
    assert [kv.blocks_for(t) for t in (0, 1, 16, 17, 32)] == [0, 1, 1, 2, 2]


def test_published_blocks_are_shared_and_survive_release():
    """A published prefix is hit by a later request, counted once, and stays cached."""
    kv = KVCache(10, 16)
    spans = [(7, 2), (8, 1)]
    kv.allocate(3)
    first = kv.acquire(spans, 0)
    assert kv.publish(first, spans, 3) == 3
    assert first == [[7, 2], [8, 1]]
    assert kv.match(spans, 3) == 3 and kv.match(spans, 2) == 2
    second = kv.acquire(spans, 3)
    assert kv.used_blocks == 3             # shared blocks counted once
    kv.release(second)
    kv.release(first)
    assert (kv.used_blocks, kv.free_blocks) == (0, 10)
    assert kv.match([(7, 2), (8, 1), (9, 4)], 9) == 3
    kv.check_invariants()


def test_eviction_takes_empty_blocks_first_then_oldest_tail():
    """Cached blocks are evicted only when empty ones run out, least recently freed first,
    each prefix from its tail."""
    kv = KVCache(5, 16)
    spans = [(1, 3)]
    kv.allocate(3)
    holding = kv.acquire(spans, 0)
    kv.publish(holding, spans, 3)
    kv.release(holding)
    kv.allocate(2)                        # the two empty blocks
    assert kv.evictions == 0
    kv.allocate(2)                        # evicts blocks 2 and 1 of key 1
    assert kv.evictions == 2
    assert kv.match(spans, 3) == 1
    kv.check_invariants()


def test_hitting_an_evictable_block_takes_it_from_the_free_pool():
    """A hit on a cached free block makes it used again."""
    kv = KVCache(4, 16)
    kv.allocate(2)
    holding = kv.acquire([(3, 2)], 0)
    kv.publish(holding, [(3, 2)], 2)
    kv.release(holding)
    assert kv.evictable_among([(3, 2)], 2) == 2
    kv.acquire([(3, 2)], 1)
    assert (kv.used_blocks, kv.free_blocks) == (1, 3)
    kv.check_invariants()


def test_concurrent_duplicate_stays_private():
    """A block another request already cached is not published twice; it stays private."""
    kv = KVCache(8, 16)
    spans = [(5, 2)]
    kv.allocate(4)
    a, b = kv.acquire(spans, 0), kv.acquire(spans, 0)
    assert kv.publish(a, spans, 2) == 2
    assert kv.publish(b, spans, 2) == 0
    assert kv.private == 2 and b == []


def test_freed_sequence_is_cached_free_deepest_first():
    """Blocks published as free on release are evicted deepest first."""
    kv = KVCache(4, 16)
    kv.allocate(4)
    spans = [(1, 2), (2, 2)]
    assert kv.publish([], spans, 4, ref=0) == 4
    assert kv.free_blocks == 4 and kv.used_blocks == 0
    kv.allocate(2)                        # evicts key 2 (deeper) first
    assert kv.match(spans, 4) == 2
    kv.check_invariants()


def test_no_prefix_caching_matches_nothing():
    """With prefix caching off nothing is ever hit or published."""
    kv = KVCache(4, 16, prefix_caching=False)
    kv.allocate(1)
    assert kv.publish([], [(1, 1)], 1) == 0
    assert kv.match([(1, 1)], 1) == 0


class ReferenceKV:
    """Block-by-block model of the same semantics: one refcount per block id (key, j), one
    LRU entry per free block, blocks freed tail first; a block is cached only if it extends
    its key's cached prefix."""

    def __init__(self, total: int):
        self.total, self.empty, self.private = total, total, 0
        self.ref: dict[tuple[int, int], int] = {}
        self.lru: OrderedDict[tuple[int, int], None] = OrderedDict()

    def blocks(self, spans, limit):
        out = []
        for key, n in spans:
            out += [(key, j) for j in range(n)]
        return out[:limit]

    def cached(self, key):
        c = 0
        while (key, c) in self.ref:
            c += 1
        return c

    def match(self, spans, limit):
        n = 0
        for block in self.blocks(spans, limit):
            if block not in self.ref:
                break
            n += 1
        return n

    def free_blocks(self):
        return self.empty + len(self.lru)

    def allocate(self, n):
        self.private += n
        take = min(n, self.empty)
        self.empty -= take
        for _ in range(n - take):
            block, _ = self.lru.popitem(last=False)
            del self.ref[block]

    def acquire(self, spans, hit):
        for block in self.blocks(spans, hit):
            if self.ref[block] == 0:
                del self.lru[block]
            self.ref[block] += 1
        return self.blocks(spans, hit)

    def release(self, held):
        for block in reversed(held):
            self.ref[block] -= 1
            if self.ref[block] == 0:
                self.lru[block] = None

    def publish(self, held, spans, n_blocks, ref):
        new = []
        for key, j in self.blocks(spans, n_blocks):
            if (key, j) in held:
                continue
            if self.cached(key) != j or (key, j) in self.ref:
                break
            self.ref[(key, j)] = ref
            new.append((key, j))
        self.private -= len(new)
        if ref:
            held += new
        else:
            for block in reversed(new):
                self.lru[block] = None
        return len(new)


CHAINS = [[(1, 3), (2, 2)], [(1, 3), (3, 4)], [(1, 2)], [(4, 5)], [(4, 2), (5, 1)]]


class KVCacheMachine(RuleBasedStateMachine):
    """Random request lifecycles: the extent model and the reference agree on every hit,
    free count and eviction, and the books stay consistent."""

    def __init__(self) -> None:
        super().__init__()
        self.kv = KVCache(14, 4)
        self.ref = ReferenceKV(14)
        self.live: list[tuple] = []   # (holding, ref_held, spans, private_blocks)

    @rule(chain=st.integers(0, len(CHAINS) - 1), extra=st.integers(0, 3),
          limit=st.integers(0, 9))
    def admit(self, chain, extra, limit):
        spans = CHAINS[chain]
        limit = min(limit, sum(n for _, n in spans))
        hit = self.kv.match(spans, limit)
        assert hit == self.ref.match(spans, limit)
        assert self.kv.evictable_among(spans, hit) == sum(
            1 for b in self.ref.blocks(spans, hit) if b in self.ref.lru)
        new = limit - hit + extra
        if new + self.kv.evictable_among(spans, hit) > self.kv.free_blocks:
            return
        holding = self.kv.acquire(spans, hit)
        held = self.ref.acquire(spans, hit)
        self.kv.allocate(new)
        self.ref.allocate(new)
        converted = self.kv.publish(holding, spans, limit)
        assert converted == self.ref.publish(held, spans, limit, 1)
        self.live.append((holding, held, spans, new - converted))

    @precondition(lambda self: self.live)
    @rule(data=st.data(), keep=st.booleans())
    def release(self, data, keep):
        i = data.draw(st.integers(0, len(self.live) - 1))
        holding, held, spans, private = self.live.pop(i)
        if keep:  # cache the rest of the sequence as free blocks (a session's next turn)
            limit = min(private + sum(n for _, n in holding), sum(n for _, n in spans))
            got = self.kv.publish(holding, spans, limit, ref=0)
            assert got == self.ref.publish(list(held), spans, limit, 0)
            private -= got
        self.kv.free(private)
        self.ref.private -= private
        self.ref.empty += private
        self.kv.release(holding)
        self.ref.release(held)

    @invariant()
    def agree(self) -> None:
        self.kv.check_invariants()
        assert self.kv.free_blocks == self.ref.free_blocks()
        assert self.kv.empty == self.ref.empty
        for spans in CHAINS:
            assert self.kv.match(spans, 99) == self.ref.match(spans, 99)


TestKVCacheMachine = KVCacheMachine.TestCase
