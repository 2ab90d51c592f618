"""The decoding requests of one node, with O(1) work per iteration.

Every decoding request computes one token per iteration, so with the node's iteration counter
``it`` a request joined with offset ``a`` holds KV for ``a + it`` tokens: nothing per request
changes between iterations. Sums over the set replace per-request loops:

* context tokens attended in iteration ``it + 1``: ``sum(a) + n * (it + 1)``;
* KV blocks held once each request has ``a + x`` tokens: ``sum(ceil((a + x) / bs))``, from a
  histogram of ``(a + bs - 1) mod bs`` (O(block size) to evaluate);
* blocks the next iteration adds: the requests whose ``a + it`` is a multiple of ``bs`` (one
  histogram lookup);
* the next request to finish: a heap of finish iterations (stale entries skipped lazily).
"""

from __future__ import annotations

import heapq


class DecodeSet:
    """Requests in their decode phase, as offsets and aggregates."""

    __slots__ = ("_a", "_fin", "_q", "_r", "bs", "finish_heap", "n", "sum_a")

    def __init__(self, block_size: int):
        self.bs = block_size
        #: number of decoding requests
        self.n = 0
        #: sum of the offsets ``a``
        self.sum_a = 0
        self._q = 0                     # sum of (a + bs - 1) // bs
        self._r = [0] * block_size      # histogram of (a + bs - 1) % bs
        self._a: dict[int, int] = {}    # request -> offset
        self._fin: dict[int, int] = {}  # request -> iteration after which it finishes
        #: (finish iteration, request), with stale entries of requests that left (read only)
        self.finish_heap: list[tuple[int, int]] = []

    def __contains__(self, rid: int) -> bool:
        return rid in self._a

    def offsets(self) -> dict[int, int]:
        """Request -> offset (read only; for checks and snapshots)."""
        return self._a

    def join(self, rid: int, kv_tokens: int, it: int, tokens_left: int) -> None:
        """Add a request holding ``kv_tokens`` of KV after iteration ``it``, which finishes
        after ``tokens_left`` more iterations."""
        a = kv_tokens - it
        self._a[rid] = a
        q, r = divmod(a + self.bs - 1, self.bs)
        self._q += q
        self._r[r] += 1
        self.n += 1
        self.sum_a += a
        fin = it + tokens_left
        self._fin[rid] = fin
        heapq.heappush(self.finish_heap, (fin, rid))

    def leave(self, rid: int, it: int) -> int:
        """Remove a request; return its KV tokens after iteration ``it``."""
        a = self._a.pop(rid)
        del self._fin[rid]
        q, r = divmod(a + self.bs - 1, self.bs)
        self._q -= q
        self._r[r] -= 1
        self.n -= 1
        self.sum_a -= a
        return a + it

    def kv_tokens(self, rid: int, it: int) -> int:
        """KV tokens the request holds after iteration ``it``."""
        return self._a[rid] + it

    def ctx_sum(self, it: int) -> int:
        """Context tokens the set attends in iteration ``it + 1``."""
        return self.sum_a + self.n * (it + 1)

    def blocks(self, x: int) -> int:
        """Blocks the set holds once each request has ``a + x`` tokens of KV."""
        bs = self.bs
        whole, rem = divmod(x, bs)
        total = self._q + self.n * whole
        if rem:
            total += sum(self._r[bs - rem:])
        return total

    def new_blocks(self, it: int) -> int:
        """Blocks iteration ``it + 1`` adds: requests whose KV length ``a + it`` starts a
        block (``a % bs == -it``; equivalently ``(a + bs - 1) % bs == (-it - 1) % bs``)."""
        return self._r[(-it - 1) % self.bs]

    def next_finish(self) -> int:
        """The earliest finish iteration (the set must not be empty)."""
        heap, fin = self.finish_heap, self._fin
        while fin.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0]

    def pop_finished(self, it: int) -> list[int]:
        """The requests that finish at or before iteration ``it`` (their heap entries are
        consumed; the caller removes them with ``leave``)."""
        heap, fin = self.finish_heap, self._fin
        done = []
        while heap and heap[0][0] <= it:
            end, rid = heapq.heappop(heap)
            if fin.get(rid) == end:
                done.append(rid)
        return done

    def drop_finish_entry(self, rid: int) -> None:
        """Remove a request's stale entries from the finish heap (after ``leave``).

        Needed only where the iteration counter can stand still (vLLM v0's prefill-only steps):
        a request that leaves and rejoins in the same iteration would otherwise have a stale
        entry equal to its new one, which ``pop_finished`` would return twice. O(set size),
        once per preemption or cancellation, never per iteration.
        """
        heap = self.finish_heap
        kept = [entry for entry in heap if entry[1] != rid]
        if len(kept) != len(heap):
            heap[:] = kept
            heapq.heapify(heap)
