"""Per-request columns shared by the router, the nodes and the measurement pass.

The workload's numpy columns are turned into Python lists once (list indexing is several times
cheaper than numpy scalar indexing on the hot path). The same table holds the per-request
records the run fills in: one slot per request, no per-request objects.
"""

from __future__ import annotations

import math
from array import array

from sim.outcome import (  # noqa: F401  (re-exported for the model)
    CANCELLED,
    COMPLETED,
    FAILED,
    REJECTED,
    STATUS_NAMES,
    UNFINISHED,
    Outcome,
)
from sim.workload.base import MAX_SEGMENT_KEY, OFFSET_BITS, Workload


class RequestTable:
    """Request inputs (from the workload) and per-request records (filled by the run)."""

    def __init__(self, workload: Workload):
        n = len(workload)
        self.n = n
        self.arrival_s: list[float] = workload.arrival_s.tolist()
        self.prompt_tokens: list[int] = workload.prompt_tokens.tolist()
        self.output_tokens: list[int] = workload.output_tokens.tolist()
        self.max_output_tokens: list[int] = workload.max_output_tokens.tolist()
        self.session_id: list[int] = workload.session_id.tolist()
        self.prefix_group: list[int] = workload.prefix_group.tolist()
        self._seg_ptr: list[int] = workload.seg_ptr.tolist()
        self._seg_key: list[int] = workload.seg_key.tolist()
        self._seg_len: list[int] = workload.seg_len.tolist()
        self._output_key: list[int] = workload.output_key.tolist()
        models = workload.extra.get("model")
        #: the model each request asks for ("" = any), from ``Workload.extra["model"]``
        self.model: list[str] = [""] * n if models is None else [str(m) for m in models]
        sheddable = workload.extra.get("sheddable")
        #: requests admission control may drop, from ``Workload.extra["sheddable"]``
        self.sheddable: list[bool] = ([False] * n if sheddable is None
                                      else [bool(s) for s in sheddable])
        #: tokens a request may hold at most (prompt + output cap), the router's in-flight load
        self.request_tokens: list[int] = [p + m for p, m in zip(
            self.prompt_tokens, self.max_output_tokens, strict=True)]
        nan = math.nan
        # records
        # records: written once per request, read as numpy without a copy (machine-size
        # values, 8 bytes each, instead of a Python object per entry)
        self.node = array("q", [-1]) * n
        self.first_scheduled_s = array("d", [nan]) * n
        self.first_token_s = array("d", [nan]) * n
        self.finish_s = array("d", [nan]) * n
        self.status = array("q", [UNFINISHED]) * n
        self.preemptions = array("q", [0]) * n
        self.cached_tokens = array("q", [0]) * n
        self.recomputed_tokens = array("q", [0]) * n
        self.generated_tokens = array("q", [0]) * n
        #: seconds a request waited at the client for its concurrency cap (router)
        self.client_wait_s = array("d", [0.0]) * n

    def pull(self) -> bool:
        """Load the next chunk of requests, if the table streams them; True when it loaded
        some (a whole-workload table has none to load: ``sim.model.requests_stream``)."""
        return False

    def record(self, outcome: Outcome) -> None:
        """Store an attempt's outcome as the request's record."""
        rid = outcome.request_id
        self.node[rid] = outcome.node_id
        self.status[rid] = outcome.status
        self.first_scheduled_s[rid] = outcome.first_scheduled_s
        self.first_token_s[rid] = outcome.first_token_s
        self.finish_s[rid] = outcome.finish_s
        self.generated_tokens[rid] = outcome.generated_tokens
        self.cached_tokens[rid] = outcome.cached_tokens
        self.recomputed_tokens[rid] = outcome.recomputed_tokens
        self.preemptions[rid] = outcome.preemptions

    def has_shareable_prefix(self, rid: int) -> bool:
        """True when the first prompt segment may be shared with other requests."""
        return self._seg_key[self._seg_ptr[rid]] >= 0

    def prompt_spans(self, rid: int, block_size: int) -> list[tuple[int, int]]:
        """The request's shareable full prompt blocks as ``(segment key, n_blocks)`` spans.

        Block ``j`` of key ``K`` is the ``j``-th block whose last token lies in segment ``K``;
        since keys are path-unique, ``(K, j)`` identifies the block and everything before it
        (a chained block hash). Stops at the first unshareable segment.
        """
        return self._spans(rid, block_size, self.prompt_tokens[rid], own=False)

    def sequence_spans(self, rid: int, block_size: int, n_tokens: int) -> list[tuple[int, int]]:
        """Spans of the prompt followed by the generated tokens, when a later request reuses
        them (a session's next turn); empty otherwise. ``n_tokens``: tokens with KV."""
        if self._output_key[rid] < 0:
            return []
        return self._spans(rid, block_size, n_tokens, own=False)

    def own_spans(self, rid: int, block_size: int, n_tokens: int) -> list[tuple[int, int]]:
        """Spans of all full blocks of the first ``n_tokens`` tokens of the sequence.

        Content unique to the request gets a private key (``MAX_SEGMENT_KEY + rid``), so that
        after a preemption the request can hit the blocks it computed itself while they stay
        cached, as in vLLM v1, where every full block is hashed.
        """
        return self._spans(rid, block_size, n_tokens, own=True)

    def prompt_block_ids(self, rid: int, block_size: int,
                         max_blocks: int | None = None) -> list[int]:
        """One integer id per shareable full prompt block (``key << OFFSET_BITS | index``),
        the first ``max_blocks`` at most, for strategies that track which blocks went where."""
        ids: list[int] = []
        for key, n in self.prompt_spans(rid, block_size):
            if max_blocks is not None:
                n = min(n, max_blocks - len(ids))
            base = key << OFFSET_BITS
            ids.extend(range(base, base + n))
            if max_blocks is not None and len(ids) >= max_blocks:
                break
        return ids

    def _spans(self, rid: int, bs: int, n_tokens: int, own: bool) -> list[tuple[int, int]]:
        keys, lens = self._seg_key, self._seg_len
        spans = []
        start = 0
        last = self._seg_ptr[rid + 1]
        for s in range(self._seg_ptr[rid], last + 1):
            # the prompt's segments, then the output as one more segment
            if s < last:
                key, length = keys[s], lens[s]
            else:
                key, length = self._output_key[rid], self.output_tokens[rid]
            if key < 0:
                if not own:
                    break
                # everything from here on is this request's own content: one private segment
                key, length = MAX_SEGMENT_KEY + rid, n_tokens - start
            end = start + length
            if end > n_tokens:
                end = n_tokens
            blocks = end // bs - start // bs
            if blocks > 0:
                spans.append((key, blocks))
            if end >= n_tokens:
                break
            start += length
        return spans
