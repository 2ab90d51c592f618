"""Per-request state of the requests on one node's batcher: one slotted record per request.

A record is created when a request is queued on a node (``ContinuousBatcher.enqueue``) and
dropped when it leaves (finished, handed off, cancelled or taken back for rebalancing). Its
fields fall in three groups:

* **engine state**: the sequence length, and while the request is in its prefill phase the
  tokens with KV and the blocks it holds; its prefix-cache spans and holding;
* **accounting** that ends up in the request's ``Outcome`` (and so in ``requests.parquet``);
* **markers**: when it was last preempted out of its decode phase, and the prompt length of a
  request whose KV arrived from a prefill node (disaggregated serving) until it is admitted.

The decode phase keeps no per-request state here beyond ``decode_kv_tokens``: the decode set
(``sim.model.decode_set``) tracks decoding requests in aggregate.
"""

from __future__ import annotations

import math


class RequestState:
    """What a node's batcher knows about one of its requests (a slotted record)."""

    __slots__ = ("cached_tokens", "computed", "computed_tokens", "decode_kv_tokens",
                 "enqueued_s", "first_scheduled_s", "first_token_s", "held", "holding",
                 "preempted_s", "preemptions", "recomputed_tokens", "remote_prompt", "seq",
                 "spans")

    def __init__(self, seq: int, enqueued_s: float) -> None:
        #: prompt + generated tokens (the tokens a prefill, or a recomputation, must cover)
        self.seq = seq
        #: time it was queued on this node
        self.enqueued_s = enqueued_s
        #: prefill phase only: tokens with KV so far (None outside the prefill phase)
        self.computed: int | None = None
        #: prefill phase only: KV blocks held (hit + allocated)
        self.held = 0
        #: prompt spans for prefix caching (``kv_cache.Span``); None: not derived yet
        self.spans: list[tuple[int, int]] | None = None
        #: cached blocks held while running (``KVCache.acquire``), for publish and release
        self.holding: list[list[int]] = []
        #: time it was preempted out of its decode phase, until its next token (None: not)
        self.preempted_s: float | None = None
        #: -- accounting, copied into the request's ``Outcome`` --
        #: time it was first scheduled (NaN: never admitted on this node)
        self.first_scheduled_s = math.nan
        #: time its first token came (NaN: not yet)
        self.first_token_s = math.nan
        #: prompt tokens its first admission found in the prefix cache
        self.cached_tokens = 0
        #: tokens recomputed after preemptions
        self.recomputed_tokens = 0
        self.preemptions = 0
        #: tokens computed on this node (prefill chunks, then one per decode iteration)
        self.computed_tokens = 0
        #: KV tokens when it last joined the decode set (its decode tokens are counted from it)
        self.decode_kv_tokens = 0
        #: disaggregated serving: prompt tokens whose KV arrived from a prefill node, until it
        #: is admitted here (None for a request that prefills here)
        self.remote_prompt: int | None = None
