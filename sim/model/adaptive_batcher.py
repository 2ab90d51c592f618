"""The seed document's adaptive batching as a node batch policy: static batches of adaptive size.

``AdaptiveBatcher`` keeps vLLM's iteration mechanics (``ContinuousBatcher``: token budget,
chunked prefill, KV cache, preemption by recompute) but forms *static* batches, as
pre-continuous-batching servers did (Triton's dynamic batcher, TF-Serving):

* A batch is formed only when the node has no running batch, from the head of the FCFS queue,
  once the queue holds at least the current batch size or the oldest waiting request has
  waited ``max_wait_s`` (the node is woken for that timeout through ``next_wakeup``). It takes
  up to ``batch_size`` requests.
* The batch runs, prefill then decode, until all its members finish; nothing else is admitted
  meanwhile. Members that the token budget or the KV cache cannot start at once, or that are
  preempted, wait at the head of the queue and join as soon as they fit (still members).
* After each batch the size adapts (the seed's rule, in steps of ``step`` = 8): if the
  batch's mean decode iteration time exceeded ``target_iteration_s``, it shrinks by ``step``
  (not below ``min_batch``); otherwise, if more than ``queue_threshold`` (20) requests wait,
  and more than the current size, it grows by ``step`` (not above ``max_batch``).

The mean decode iteration time is the time between a decoding member's tokens, averaged over
its tokens: every iteration (``observe_run``) weighted by the members decoding in it, so the
mixed iterations in which some members decode while others prefill count too. That makes the
seed's "target latency" a TPOT target, which a smaller batch meets. Two fixes to the seed's
rule as issue 3 states it: growth needs more waiting requests than the current size (else the
size drifts up unused while every batch takes the whole queue, and a later burst forms one
huge batch); and pure-decode-only timing would ignore the prefill stalls that dominate a
static batch's TPOT. The price of static batches is TTFT (arrivals wait for the whole batch)
and throughput (slots of finished members idle until the longest member ends). Between batches
the node is idle or waiting, so a fast-forwarded decode run is never cut by an arrival
(``can_take_new_work`` is False) and fast-forward equals stepping (tested).

It plugs into ``ContinuousBatcher`` through the batch-policy hooks (``sim.model.batcher``):
``plan`` forms and closes batches, ``admit_window`` limits admission to the members waiting
at the head of the queue, ``on_leave`` forgets members, ``observe_run`` times the decodes and
``next_wakeup`` asks for the ``max_wait_s`` timeout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import Field, model_validator

from sim.model.batcher import BatcherConfig, ContinuousBatcher, Plan, batchers
from sim.model.kv_cache import KVCache
from sim.model.requests import RequestTable


@dataclass(frozen=True, slots=True)
class AdaptiveBatcherConfig(BatcherConfig):
    """Engine limits plus the adaptive batch-size rule."""

    min_batch: int = 8
    max_batch: int = 64
    initial_batch: int = 8
    step: int = 8
    target_iteration_s: float = 0.05
    queue_threshold: int = 20
    max_wait_s: float = 0.5


@batchers.register("adaptive")
class AdaptiveBatcher(ContinuousBatcher):
    """Static batches whose size adapts to a decode-iteration time target (the seed's
    AdaptiveBatcher); see the module docstring for the rules."""

    class Params(ContinuousBatcher.Params):
        """vLLM engine limits and the adaptive batch-size rule."""

        min_batch: int = Field(8, ge=1, description="smallest batch size")
        max_batch: int = Field(64, ge=1, description="largest batch size (<= max_num_seqs)")
        initial_batch: int | None = Field(None, ge=1, description="first batch size; null: "
                                                                  "min_batch")
        step: int = Field(8, ge=1, description="size change after a batch")
        target_iteration_s: float = Field(
            0.05, gt=0, description="mean time between a decoding member's tokens (s) above "
                                    "which the next batch is smaller")
        queue_threshold: int = Field(20, ge=0, description="waiting requests above which "
                                                           "(and above the size) it grows")
        max_wait_s: float = Field(0.5, ge=0, description="oldest request's wait that forms a "
                                                         "batch smaller than the size, s")

        @model_validator(mode="after")
        def _sizes(self) -> AdaptiveBatcher.Params:
            if self.min_batch > self.max_batch:
                raise ValueError(f"min_batch ({self.min_batch}) must not exceed max_batch "
                                 f"({self.max_batch})")
            if self.max_batch > self.max_num_seqs:
                raise ValueError(f"max_batch ({self.max_batch}) must not exceed max_num_seqs "
                                 f"({self.max_num_seqs})")
            first = self.initial_batch
            if first is not None and not self.min_batch <= first <= self.max_batch:
                raise ValueError(f"initial_batch ({first}) must lie in [min_batch, max_batch]")
            return self

    @classmethod
    def make_config(cls, params: Params, max_model_len: int | None) -> AdaptiveBatcherConfig:
        """Engine limits and batch-size rule from validated parameters."""
        return AdaptiveBatcherConfig(
            params.max_num_seqs, params.max_num_batched_tokens, params.chunked_prefill,
            max_model_len, params.min_batch, params.max_batch,
            params.initial_batch or params.min_batch, params.step,
            params.target_iteration_s, params.queue_threshold, params.max_wait_s)

    observes_runs = True

    def __init__(self, kv: KVCache, table: RequestTable, config: BatcherConfig,
                 node_id: int = 0):
        if not isinstance(config, AdaptiveBatcherConfig):
            config = AdaptiveBatcherConfig(config.max_num_seqs, config.max_num_batched_tokens,
                                           config.chunked_prefill, config.max_model_len)
        super().__init__(kv, table, config, node_id)
        self.rule: AdaptiveBatcherConfig = config
        #: the current batch size
        self.batch_size = config.initial_batch
        #: sizes of the batches formed so far, in order
        self.batch_sizes: list[int] = []
        self._batch_open = False
        self._members: set[int] = set()    # members of the open batch not finished
        # admission takes only the open batch's members that wait, a prefix of the queue
        # (``admit_window``: admitting one takes one, a preemption puts one back)
        self.admit_window = 0
        self._decode_s = 0.0
        self._decode_tokens = 0

    def can_take_new_work(self) -> bool:
        """Never: a running batch admits no one, and between batches the node is not in a
        decode run."""
        return False

    # -- planning ---------------------------------------------------------------------------

    def plan(self, now: float) -> Plan | None:
        if self._batch_open and not self.running and not self.admit_window:
            self._batch_open = False
            self._adapt()
        if not self._batch_open:
            if not self._should_form(now):
                return None
            self._form_batch()
        return super().plan(now)

    def _should_form(self, now: float) -> bool:
        if not self.waiting:
            return False
        return (len(self.waiting) >= self.batch_size
                or now >= self.reqs[self.waiting[0]].enqueued_s + self.rule.max_wait_s)

    def _form_batch(self) -> None:
        size = min(self.batch_size, len(self.waiting))
        self._members = {self.waiting[i] for i in range(size)}
        self.admit_window = size
        self._batch_open = True
        self.batch_sizes.append(size)
        self._decode_s = 0.0
        self._decode_tokens = 0

    def _adapt(self) -> None:
        """The seed's rule, once per finished batch."""
        rule = self.rule
        if self._decode_tokens and self._decode_s / self._decode_tokens > rule.target_iteration_s:
            self.batch_size = max(rule.min_batch, self.batch_size - rule.step)
        elif len(self.waiting) > max(rule.queue_threshold, self.batch_size):
            self.batch_size = min(rule.max_batch, self.batch_size + rule.step)

    # -- batch-policy hooks -----------------------------------------------------------------

    def next_wakeup(self, now: float) -> float | None:
        """When the oldest waiting request will have waited ``max_wait_s``."""
        if self.running or self.admit_window or not self.waiting:
            return None
        return self.reqs[self.waiting[0]].enqueued_s + self.rule.max_wait_s

    def observe_run(self, iterations: int, duration_s: float, decode_batch: int) -> None:
        """Accumulate the time decoding requests waited per token in this batch."""
        self._decode_s += decode_batch * duration_s
        self._decode_tokens += decode_batch * iterations

    def on_leave(self, rid: int, waiting: bool) -> None:
        """A member that leaves is no longer one; one that leaves from the queue shrinks
        the admission window."""
        if rid in self._members:
            self._members.discard(rid)
            if waiting:
                self.admit_window -= 1

    def check_invariants(self) -> None:
        """The continuous batcher's invariants, plus: only members run, and the members
        waiting are exactly the head of the queue."""
        super().check_invariants()
        assert set(self.running) <= self._members, (self.running, self._members)
        head = set(list(self.waiting)[: self.admit_window])
        assert head == self._members - set(self.running), (head, self._members)
        assert self.rule.min_batch <= self.batch_size <= self.rule.max_batch
        assert math.isfinite(self._decode_s)
