"""Paged KV-cache block accounting with a prefix cache, in the manner of vLLM.

Model (vLLM v1 ``KVCacheManager`` / ``BlockPool`` with prefix caching):

* The cache has ``total_blocks`` blocks of ``block_size`` tokens. A request holds
  ``ceil(tokens_with_kv / block_size)`` blocks.
* A *full* block of shareable content is identified by its chained hash: the block and every
  token before it. Here that identity is ``(segment key, block index within the segment)``, the
  key being path-unique (see ``sim.workload.base``). Requests describe their shareable content
  as *spans* ``(key, n_blocks)`` in prompt order.
* A cached block held by several running requests is stored once (reference counts). When its
  last holder releases it, it stays cached but becomes free (evictable) and can be hit again.
  A request releases its blocks tail first, so a prefix's first blocks are evicted last
  (vLLM frees in reverse order for the same reason).
* Allocation takes empty blocks first and evicts least-recently-freed cached blocks only when no
  empty block is left. (vLLM's single free queue can recycle a cached block while never-used
  blocks remain, so this model keeps cached prefixes slightly longer than vLLM does.)
* Blocks a request holds privately (partial blocks, unshareable content) are only counted.

Representation. Holders always hold a prefix of each key's blocks, and the cached blocks of a key
always form a prefix ``[0, c)`` of it: a holder of block ``j`` holds blocks ``0..j``, so block
``j`` is freed no earlier than the blocks after it and evicted no later (LRU, tail first). The
cached blocks of a key are therefore kept as a few *extents* (runs of blocks with one reference
count), and acquiring, releasing and evicting cost O(number of extents touched) instead of
O(blocks). A block is published only when it extends its key's cached prefix (a concurrent
duplicate or a block beyond a gap stays private: vLLM would cache it but could not hit it until
the gap is filled). ``tests/test_kv_cache.py`` checks this class against a block-by-block
reference model under random operation sequences.

Invariants (``check_invariants``): ``empty + private + held + free_cached == total_blocks``;
each key's extents tile ``[0, c)`` in order; free extents are exactly those with refcount 0.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

#: a request's shareable content: (segment key, number of full blocks), in prompt order
Span = tuple[int, int]


class Extent:
    """Blocks ``[start, end)`` of one key, all with the same reference count."""

    __slots__ = ("end", "key", "ref", "start")

    def __init__(self, key: int, start: int, end: int, ref: int):
        self.key = key
        self.start = start
        self.end = end
        self.ref = ref

    def __repr__(self) -> str:
        return f"Extent({self.key}, {self.start}, {self.end}, ref={self.ref})"


class KVCache:
    """Block accounting for one node's KV cache."""

    __slots__ = ("_extents", "_lru", "block_size", "empty", "events", "evictions",
                 "free_cached", "prefix_caching", "private", "total_blocks")

    def __init__(self, total_blocks: int, block_size: int = 16, prefix_caching: bool = True):
        if total_blocks < 1:
            raise ValueError(f"total_blocks must be >= 1, got {total_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.total_blocks = total_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        #: blocks that hold nothing useful
        self.empty = total_blocks
        #: blocks held privately by running requests
        self.private = 0
        #: cached blocks nobody holds (evictable)
        self.free_cached = 0
        #: cached blocks evicted to make room
        self.evictions = 0
        self._extents: dict[int, list[Extent]] = {}
        #: free extents, least recently freed first
        self._lru: OrderedDict[Extent, None] = OrderedDict()
        #: when a list: ``(key, cached blocks)`` appended whenever a key's cached prefix
        #: changes (the engine's KV events, for routers that track them)
        self.events: list[tuple[int, int]] | None = None

    @property
    def free_blocks(self) -> int:
        """Blocks an allocation may take: empty ones plus evictable cached ones."""
        return self.empty + self.free_cached

    @property
    def used_blocks(self) -> int:
        """Blocks held by running requests (shared blocks counted once)."""
        return self.total_blocks - self.empty - self.free_cached

    def blocks_for(self, tokens: int) -> int:
        """Blocks needed to hold ``tokens`` tokens."""
        return -(-tokens // self.block_size)

    def cached_blocks(self, key: int) -> int:
        """Length of the cached prefix of ``key``'s blocks."""
        extents = self._extents.get(key)
        return extents[-1].end if extents else 0

    # -- prefix cache -------------------------------------------------------------------------

    def match(self, spans: Sequence[Span], max_blocks: int) -> int:
        """Number of leading blocks of ``spans`` in the cache, at most ``max_blocks``."""
        if not self.prefix_caching:
            return 0
        extents = self._extents
        hit = 0
        for key, n in spans:
            run = extents.get(key)
            cached = run[-1].end if run else 0
            if cached < n:
                hit += cached
                break
            hit += n
        return hit if hit < max_blocks else max_blocks

    def evictable_among(self, spans: Sequence[Span], hit: int) -> int:
        """How many of the first ``hit`` blocks are cached but free (taking them uses free
        blocks)."""
        count = 0
        for key, n, _ in _walk(spans, hit):
            for ext in self._extents[key]:
                if ext.start >= n:
                    break
                if ext.ref == 0:
                    count += min(ext.end, n) - ext.start
        return count

    def acquire(self, spans: Sequence[Span], hit: int) -> list[list[int]]:
        """Hold the first ``hit`` blocks of ``spans`` (cached, see ``match``).

        Returns the holding, ``[[key, n_blocks], ...]``, to pass to ``publish`` and
        ``release``. An extent reaching past the hit is split; its tail keeps its state and
        its place in the LRU order.
        """
        holding: list[list[int]] = []
        lru = self._lru
        for key, n, _ in _walk(spans, hit):
            run = self._extents[key]
            i = 0
            while i < len(run) and run[i].start < n:
                ext = run[i]
                if ext.end > n:
                    head = Extent(key, ext.start, n, ext.ref + 1)
                    ext.start = n
                    run.insert(i, head)
                    if head.ref == 1:
                        self.free_cached -= n - head.start
                    break
                if ext.ref == 0:
                    del lru[ext]
                    self.free_cached -= ext.end - ext.start
                ext.ref += 1
                i += 1
            holding.append([key, n])
        return holding

    def release(self, holding: Sequence[Sequence[int]]) -> None:
        """Drop one holder of the held blocks; blocks left unheld become evictable, tail first."""
        lru = self._lru
        for key, n in reversed(holding):
            run = self._extents[key]
            for i in range(len(run) - 1, -1, -1):
                ext = run[i]
                if ext.start >= n:
                    continue
                assert ext.end <= n, (ext, n)  # holdings end on extent boundaries
                ext.ref -= 1
                if ext.ref == 0:
                    lru[ext] = None
                    self.free_cached += ext.end - ext.start

    def publish(self, holding: list[list[int]], spans: Sequence[Span], n_blocks: int,
                ref: int = 1) -> int:
        """Cache the holder's computed blocks among the first ``n_blocks`` of ``spans``.

        Each newly cached block turns one private block of the caller into a shared block,
        held by the caller (``ref=1``, the holding grows) or free (``ref=0``, for a request
        that is releasing its blocks). Returns the number of private blocks converted.
        """
        if not self.prefix_caching:
            return 0
        converted = 0
        freed: list[Extent] = []
        for i, (key, n, _) in enumerate(_walk(spans, n_blocks)):
            if i < len(holding) and holding[i][0] != key:
                break
            held = holding[i][1] if i < len(holding) else 0
            if n <= held:
                continue
            cached = self.cached_blocks(key)
            if cached != held:  # duplicate or gap: keep the blocks private
                break
            ext = self._append(key, cached, n, ref)
            converted += n - cached
            if ref:
                if i < len(holding):
                    holding[i][1] = n
                else:
                    holding.append([key, n])
            else:
                freed.append(ext)
        for ext in reversed(freed):  # freed deepest first, as a release frees tail first
            self._lru[ext] = None
            self.free_cached += ext.end - ext.start
        self.private -= converted
        return converted

    # -- private blocks -----------------------------------------------------------------------

    def allocate(self, n: int) -> None:
        """Take ``n`` blocks as private blocks, evicting cached blocks if no empty ones are left.

        Raises:
            ValueError: fewer than ``n`` free blocks (callers check ``free_blocks`` first).
        """
        if n <= 0:
            if n < 0:
                raise ValueError(f"cannot allocate {n} blocks")
            return
        if n > self.empty + self.free_cached:
            raise ValueError(f"cannot allocate {n} blocks: only {self.free_blocks} free")
        self.private += n
        if n <= self.empty:
            self.empty -= n
            return
        n -= self.empty
        self.empty = 0
        self._evict(n)

    def free(self, n: int) -> None:
        """Return ``n`` private blocks to the empty pool."""
        if n < 0 or n > self.private:
            raise ValueError(f"cannot free {n} private blocks (holding {self.private})")
        self.private -= n
        self.empty += n

    # -- internals ----------------------------------------------------------------------------

    def _evict(self, n: int) -> None:
        """Evict ``n`` free cached blocks, least recently freed first, each extent from its
        tail (the free extent freed earliest is always the tail of its key's cached prefix)."""
        lru = self._lru
        self.free_cached -= n
        self.evictions += n
        while n:
            ext = next(iter(lru))
            assert self._extents[ext.key][-1] is ext, ext  # the oldest free extent is a tail
            take = min(n, ext.end - ext.start)
            ext.end -= take
            n -= take
            if ext.end == ext.start:
                del lru[ext]
                run = self._extents[ext.key]
                run.pop()
                if not run:
                    del self._extents[ext.key]
            if self.events is not None:
                self.events.append((ext.key, ext.end))

    def _append(self, key: int, start: int, end: int, ref: int) -> Extent:
        """Cache blocks ``[start, end)`` of ``key``; the caller puts a free extent in the LRU."""
        if self.events is not None:
            self.events.append((key, end))
        run = self._extents.setdefault(key, [])
        last = run[-1] if run else None
        if last is not None and last.ref == ref and ref > 0:
            last.end = end  # held by the caller alone, like the new blocks
            return last
        ext = Extent(key, start, end, ref)
        run.append(ext)
        return ext

    def check_invariants(self) -> None:
        """Raise ``AssertionError`` if the block accounting is inconsistent."""
        held = 0
        free = 0
        for key, run in self._extents.items():
            assert run, key
            position = 0
            for ext in run:
                assert ext.key == key and ext.start == position < ext.end, (key, run)
                assert ext.ref >= 0
                assert (ext.ref == 0) == (ext in self._lru), ext
                size = ext.end - ext.start
                if ext.ref:
                    held += size
                else:
                    free += size
                position = ext.end
            refs = [e.ref for e in run]
            assert refs == sorted(refs, reverse=True), run  # holders hold prefixes
        assert free == self.free_cached, (free, self.free_cached)
        assert len(self._lru) == sum(1 for r in self._extents.values() for e in r if e.ref == 0)
        assert self.empty >= 0 and self.private >= 0
        assert self.empty + self.private + held + free == self.total_blocks


def _walk(spans: Sequence[Span], limit: int):
    """Yield ``(key, blocks of this key within the first limit, blocks before it)``."""
    done = 0
    for key, n in spans:
        if done >= limit:
            return
        take = min(n, limit - done)
        yield key, take, done
        done += take
