"""KV-cache bookkeeping of a node's batcher: a request's blocks from admission to release.

``KVBookkeeping`` is the bottom layer of ``sim.model.batcher.ContinuousBatcher`` (and so of
every batch policy; ``KVBookkeeping`` <- ``RequestLifecycle`` <- ``ContinuousBatcher``). It
turns the scheduler's decisions into ``KVCache`` calls and keeps the request's record
(``sim.model.request_state.RequestState``) in step.

* **Admission** (``_start_prefill``): the request's prefix hit is acquired (shared blocks, held),
  its new blocks allocated, and it starts its prefill phase with the hit as computed tokens.
* **Publication** (``_publish``): as prefill chunks complete, the request's newly full,
  shareable prompt blocks become hittable by others.
* **Release** (``_release``): at completion, hand-off, cancellation or preemption its blocks are
  freed; full blocks that a later request can reuse stay cached (evictable).
"""

from __future__ import annotations

from collections import deque

from sim.model.kv_cache import KVCache
from sim.model.request_state import RequestState
from sim.model.requests import RequestTable


class KVBookkeeping:
    """Admission, publication and release of a request's KV blocks (the batcher's bottom layer)."""

    # state owned by the batcher (declared for the type checker)
    kv: KVCache
    table: RequestTable
    waiting: deque[int]
    running: dict[int, None]
    waiting_tokens: int
    admit_window: int

    def _prefix_spans(self, rid: int, st: RequestState) -> list[tuple[int, int]]:
        """The request's shareable prompt spans (derived once; [] without prefix caching)."""
        spans = st.spans
        if spans is None:
            if self.kv.prefix_caching and self.table.has_shareable_prefix(rid):
                spans = self.table.prompt_spans(rid, self.kv.block_size)
            else:
                spans = []
            st.spans = spans
        return spans

    def _start_prefill(self, rid: int, st: RequestState, spans: list[tuple[int, int]],
                       hit: int, cached: int, new_blocks: int, now: float) -> None:
        """Admit the queue head ``rid``: hold its ``hit`` cached blocks (``cached`` tokens),
        allocate ``new_blocks``, and start its prefill phase."""
        kv = self.kv
        self.waiting.popleft()
        self.admit_window -= 1
        self.waiting_tokens -= st.seq
        st.holding = kv.acquire(spans, hit)
        kv.allocate(new_blocks)
        st.held = hit + new_blocks
        st.computed = cached
        self.running[rid] = None
        if st.first_scheduled_s != st.first_scheduled_s:  # NaN: first admission
            st.first_scheduled_s = now
            st.cached_tokens = cached
        else:
            st.recomputed_tokens += st.seq - cached

    def _publish(self, st: RequestState, computed: int) -> None:
        """Make the request's newly full, shareable prompt blocks hittable by others."""
        spans = st.spans
        if spans:
            self.kv.publish(st.holding, spans, computed // self.kv.block_size)

    def _release(self, rid: int, st: RequestState, kv_tokens: int, held: int | None = None,
                 preempted: bool = False) -> None:
        """Free a request's blocks (``held``, default: the blocks of ``kv_tokens``), leaving
        reusable full blocks cached.

        On completion only blocks a later request reuses (a session's next turn) are cached;
        on preemption all full blocks are, so the recomputation can hit what survives.
        """
        kv = self.kv
        if held is None:
            held = kv.blocks_for(kv_tokens)
        holding = st.holding
        private = held
        for _, n in holding:
            private -= n
        if kv.prefix_caching:
            table = self.table
            if preempted:
                spans = table.own_spans(rid, kv.block_size, kv_tokens)
                st.spans = spans
            else:
                spans = table.sequence_spans(rid, kv.block_size, kv_tokens)
                st.spans = None
            if spans:
                private -= kv.publish(holding, spans, kv_tokens // kv.block_size, ref=0)
        kv.free(private)
        if holding:
            kv.release(holding)
        if preempted:
            st.holding = []  # the record outlives the release (the request waits again)
