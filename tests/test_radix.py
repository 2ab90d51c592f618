"""The approximate prefix index (``sim.policy.radix``): matching, LRU leaf eviction, TTL."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sim.policy.radix import PrefixIndex, leading_matches

A = [1, 2, 3]          # a prompt of three chained blocks
B = [1, 2, 4]          # shares A's first two blocks
C = [5, 6]             # unrelated


def test_empty_index_matches_nothing():
    """A fresh index holds no block for any tenant."""
    index = PrefixIndex(3)
    assert index.match(A) == [0, 0, 0]
    assert index.match([]) == [0, 0, 0]


def test_match_counts_leading_blocks_per_tenant():
    """Each tenant's match is the number of leading ids it holds."""
    index = PrefixIndex(3)
    index.insert(0, A, 0.0)
    index.insert(1, B, 0.0)
    index.insert(2, C, 0.0)
    assert index.match(A) == [3, 2, 0]
    assert index.match(B) == [2, 3, 0]
    assert index.match([1, 2, 3, 9]) == [3, 2, 0]
    assert index.match(C) == [0, 0, 2]
    index.check()


def test_a_gap_ends_the_match():
    """A missing id stops a tenant's match even if later ids are held."""
    holders = {1: 0b01, 3: 0b11}
    assert leading_matches(holders, [1, 2, 3], 2) == [1, 0]


def test_capacity_evicts_the_least_recently_used_leaf_first():
    """Over capacity, the LRU *leaf* goes; shared ancestors touched later stay."""
    index = PrefixIndex(1, capacity_blocks=4)
    index.insert(0, A, 0.0)       # 1, 2, 3
    index.insert(0, B, 1.0)       # touches 1, 2; adds 4
    index.insert(0, [7], 2.0)     # fifth block: evicts 3 (oldest leaf)
    assert index.size(0) == 4
    assert index.match(A) == [2]
    assert index.match(B) == [3]
    assert index.evicted_blocks == 1
    index.check()


def test_evict_to_prunes_leaves_bottom_up():
    """evict_to removes leaves until the budget holds, deepest-oldest first."""
    index = PrefixIndex(2)
    index.insert(0, [1, 2, 3, 4], 0.0)
    index.insert(1, [1, 2], 0.0)
    assert index.evict_to(0, 2) == 2
    assert index.match([1, 2, 3, 4]) == [2, 2]     # tenant 1 untouched
    assert index.evict_to(0, 5) == 0
    index.check()


def test_ttl_forgets_blocks_not_touched_recently():
    """With a TTL, blocks last touched more than ttl_s ago are dropped at the next match."""
    index = PrefixIndex(2, ttl_s=10.0)
    index.insert(0, A, 0.0)
    index.insert(1, A, 5.0)
    assert index.match(A, now_s=12.0) == [0, 3]
    index.insert(1, [1], 14.0)                      # refresh the root only
    assert index.match(A, now_s=16.0) == [0, 1]    # 2, 3 touched at 5 s expired
    index.check()


def test_per_tenant_capacities():
    """A list of capacities bounds each tenant separately."""
    index = PrefixIndex(2, capacity_blocks=[1, 3])
    index.insert(0, A, 0.0)
    index.insert(1, A, 0.0)
    assert [index.size(0), index.size(1)] == [1, 3]
    assert index.match(A) == [1, 3]


# A random forest of chained prompts: a prompt is a path from a root of a small tree whose
# node ids are their own chained block ids (parent[i] < i), so equal ids imply equal prefixes.
PARENTS = [-1, 0, 1, 1, 0, -1, 5, 6, 6, 2, 9, 4, 11, 3]


def path_to(node: int) -> list[int]:
    path = []
    while node >= 0:
        path.append(node)
        node = PARENTS[node]
    return path[::-1]


@settings(max_examples=60)
@given(ops=st.lists(st.tuples(st.integers(0, 2), st.integers(0, len(PARENTS) - 1),
                              st.integers(0, 6)), max_size=40),
       cap=st.integers(1, 8))
def test_trees_stay_prefix_closed_under_inserts_and_evictions(ops, cap):
    """Whatever the inserts and evictions, every held block's parent is held by the same
    tenant, and each tenant's match equals the longest held prefix of the query."""
    index = PrefixIndex(3, capacity_blocks=cap)
    for t, (tenant, leaf, budget) in enumerate(ops):
        index.insert(tenant, path_to(leaf), float(t))
        if budget < 3:
            index.evict_to(tenant, budget)
    index.check()
    for tenant in range(3):
        held = {b for b in range(len(PARENTS)) if index.match(path_to(b))[tenant]
                == len(path_to(b))}
        assert all(PARENTS[b] < 0 or PARENTS[b] in held for b in held)
        assert index.size(tenant) == len(held)
