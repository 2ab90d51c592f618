"""vLLM v0's default scheduler: prefill-prioritised steps, chunked prefill off.

``V0Batcher`` (registered as ``vllm_v0``) keeps ``ContinuousBatcher``'s bookkeeping (KV cache,
prefix hits, decode set, preemption by recompute, outcomes) and replaces its planning with the
rules of ``vllm/core/scheduler.py`` ``Scheduler._schedule_default`` (v0.4-v0.6, the
``enable_chunked_prefill=False`` path, v0's default):

1. **Prefill first.** ``_schedule_prefills`` admits waiting requests FCFS while the token budget
   (``max_num_batched_tokens``), the batch size (``max_num_seqs``, counting the running
   requests: ``budget.add_num_seqs`` for every running group before prefills) and the block
   manager allow. A prompt is prefilled whole in one step; the first request that does not fit
   stops admission (``break``). If any request was admitted the step is **prefill-only**: "Don't
   schedule decodes if prefills are scheduled", so every running decode stalls for that step.
2. **Otherwise decode-only** (``_schedule_running``): every running request gets one token.
3. **Token budget**: the sum of the admitted prompts' lengths (``SchedulingBudget.
   can_schedule``). A preempted request's prompt is its prompt plus the tokens generated so far
   (recompute treats them as a new prompt). With prefix caching the whole sequence still counts
   (``get_num_new_tokens`` ignores cached blocks; only the last 0.6.x releases budgeted the
   uncached tokens) while only the uncached part is computed.
   ``pad_prefill=True`` reproduces the v0.2-v0.3 releases (``vllm/core/scheduler.py``
   ``_schedule`` from about 0.2.2, when prompts ran as a padded 2-D batch): the batch counts
   ``len(prompts) * max(prompt lengths)`` tokens against the budget, and admission also stops
   once the padding (that count minus the real tokens) would exceed ``max_paddings`` (256 in
   those versions). The v0.4 line flattened the inputs to 1-D and dropped both. Padding
   changes the budget only: the iteration is priced and recorded with its real tokens.
4. **Watermark** (``BlockSpaceManager.can_allocate``, ``vllm/core/block_manager_v1.py`` and
   ``block_manager_v2.py``): a prompt needing ``b`` blocks (all its blocks: v0 does not credit
   prefix hits there; free blocks include evictable cached ones) is admitted only if
   ``free - b >= watermark_blocks = int(watermark * total_blocks)`` (the block manager's
   ``watermark=0.01`` constructor default, which the engine never overrode). A
   prompt with ``total - b < watermark_blocks`` could never be admitted (``AllocStatus.NEVER``,
   the request is ignored); here such requests are rejected at arrival, and ``max_model_len``
   is capped at ``(total - watermark_blocks) * block_size`` so an admitted request can always
   be readmitted after a preemption.
5. **Decode growth and preemption** (``_schedule_running`` with ``_can_append_slots``): running
   requests are visited in running order (admission order; 0.4.x sorted them by arrival with
   the FCFS policy, 0.6.x no longer sorts); each needs at least one free block at its turn
   (block manager v1: "at least one free block for each sequence"; v2:
   ``get_num_blocks_touched_by_append_slots`` is 1 for a one-token append), even if its token
   still fits its last block. When it has none, the newest running request is preempted by
   recompute (``running_queue.pop()``; the request itself when it is the last one). Over the
   batch this is: keep the oldest requests while ``new_blocks - newest_needs_one < free``
   (one block stricter than v1's ``new_blocks <= free`` when the newest request needs no block).
   Preempted requests go back to the head of the queue (``waiting.extendleft``) and are
   recomputed as prefills; there is no swap-to-CPU (v0's default mode for single-sequence
   groups was recompute, ``_preempt``).

The request's first token comes at the end of its prefill step; a recomputation samples the
next token too. Not modelled: v0's chunked-prefill scheduler (``_schedule_chunked_prefill``:
decodes first, then the partial and new prefills under one budget; use the ``continuous``
batcher, whose rules it shares except the watermark and the one-block-per-decode check), the
``delay_factor`` prefill delay (0 by default), beam search / ``n > 1``, swapping, and the
0.4.x arrival-time sorting of the running queue.

It plugs into ``ContinuousBatcher`` through public methods and hooks (``sim.model.batcher``):
it replaces ``plan``, ``apply`` (a prefill-only step does not advance the decode clock) and
``decode_run_limit``, and sets ``decode_clock_stalls``.

**Fast-forward.** During a run of decode steps nothing makes the queue head admissible: the
budget and the batch size do not change, free blocks only shrink (evicting a cached block does
not change ``free_blocks``, which counts evictable blocks) and v0 ignores prefix hits when it
admits. So a run ends when a request finishes, after a step that preempted (the freed blocks
may admit the queue head), at an arrival that could be admitted (``can_take_new_work``), or
before a step whose block check could fail (``decode_run_limit`` keeps the run's growth within
``free - 1`` blocks, which is sufficient for every step's check; the next plan does the exact
check). Fast-forward therefore equals stepping (``tests/test_engine_v0.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from sim.model.batcher import BatcherConfig, ContinuousBatcher, Plan, batchers
from sim.model.kv_cache import KVCache
from sim.model.requests import Outcome, RequestTable
from sim.spec import StrictModel

#: vLLM v0's floor for the default ``max_num_batched_tokens`` without chunked prefill
#: (``vllm/config.py`` ``SchedulerConfig``: ``max(max_model_len, 2048)``)
V0_MIN_BATCHED_TOKENS = 2048


@dataclass(frozen=True, slots=True)
class V0BatcherConfig(BatcherConfig):
    """Engine limits plus v0's admission rules (chunked prefill is always off)."""

    watermark: float = 0.01
    pad_prefill: bool = False
    max_paddings: int = 256


@batchers.register("vllm_v0")
class V0Batcher(ContinuousBatcher):
    """vLLM v0's default scheduler: a step is prefill-only or decode-only, prefill first.

    See the module docstring for the rules and their sources.
    """

    class Params(StrictModel):
        """vLLM v0 engine limits (``EngineArgs`` names and defaults, v0.4-v0.6)."""

        max_num_seqs: int = Field(256, ge=1, description="most running requests (a prefill "
                                                         "step admits only up to it)")
        max_num_batched_tokens: int | None = Field(
            None, ge=1, description="token budget of a prefill step; null: vLLM v0's default "
                                    "max(max_model_len, 2048) (2048 without a max_model_len)")
        watermark: float = Field(0.01, ge=0, lt=1, description="fraction of KV blocks a "
                                                               "prompt's admission must leave "
                                                               "free")
        pad_prefill: bool = Field(False, description="count prompts padded to the longest in "
                                                     "the step against the budget (v0.2-0.3)")
        max_paddings: int = Field(256, ge=0, description="with pad_prefill: most padding "
                                                         "tokens a prefill step may hold")

    @classmethod
    def make_config(cls, params: Params, max_model_len: int | None) -> V0BatcherConfig:
        """Engine limits from validated parameters."""
        budget = params.max_num_batched_tokens
        if budget is None:
            budget = max(max_model_len or 0, V0_MIN_BATCHED_TOKENS)
        return V0BatcherConfig(params.max_num_seqs, budget, False, max_model_len,
                               params.watermark, params.pad_prefill, params.max_paddings)

    def __init__(self, kv: KVCache, table: RequestTable, config: BatcherConfig,
                 node_id: int = 0):
        if not isinstance(config, V0BatcherConfig):
            config = V0BatcherConfig(config.max_num_seqs, config.max_num_batched_tokens,
                                     False, config.max_model_len)
        elif config.chunked_prefill:
            raise ValueError("vllm_v0 models v0's scheduler without chunked prefill")
        super().__init__(kv, table, config, node_id)
        self.v0: V0BatcherConfig = config
        #: blocks a prompt's admission must leave free (``BlockSpaceManager.watermark_blocks``)
        self.watermark_blocks = int(config.watermark * kv.total_blocks)
        self.max_model_len = min(self.max_model_len,
                                 (kv.total_blocks - self.watermark_blocks) * kv.block_size)

    def can_take_new_work(self) -> bool:
        """Whether an arrival could start a prefill step at the next boundary of a decode run.

        Only a lone waiting request can (a blocked head stays blocked for the whole run); the
        token budget does not involve the decodes, so only the batch size is checked here,
        and a cut that admits nothing just re-plans the same decode run.
        """
        return len(self.waiting) == 1 and len(self.running) < self.config.max_num_seqs

    # -- planning ---------------------------------------------------------------------------

    def plan(self, now: float) -> Plan | None:
        """A prefill-only step if a waiting request can be admitted, else a decode-only step.

        The returned plan object is reused by the next call.
        """
        plan = self._plan
        plan.chunks = []
        plan.prefill_tokens = plan.prefill_pairs = 0
        self.preempted_in_plan = False
        if self.waiting and self._admit_prefills(plan, now):
            return plan
        dec = self._dec
        if not dec.n:
            return None
        preempted = self.preemptions
        self._reserve_v0_decode_growth(now)
        if self.preemptions != preempted:
            self.preempted_in_plan = True
            if not dec.n:
                # every running request was preempted: v0's step is empty and the next one
                # prefills the queue head, which now fits (the cache is free); run that one
                return plan if self._admit_prefills(plan, now) else None
        plan.decode_batch = dec.n
        plan.decode_ctx_sum = dec.sum_a + dec.n * (self.it + 1)
        return plan

    def _admit_prefills(self, plan: Plan, now: float) -> bool:
        """``_schedule_prefills`` without chunking; True when a request was admitted (the
        plan is then prefill-only)."""
        kv, v0 = self.kv, self.v0
        bs = kv.block_size
        seqs_left = v0.max_num_seqs - len(self.running)
        budget = v0.max_num_batched_tokens
        watermark = self.watermark_blocks
        total = longest = n = 0
        while self.waiting and seqs_left > n:
            rid = self.waiting[0]
            st = self.reqs[rid]
            seq = st.seq
            if kv.free_blocks - kv.blocks_for(seq) < watermark:
                break  # AllocStatus.LATER
            if v0.pad_prefill:
                widest = max(longest, seq)
                padded = widest * (n + 1)
                if padded > budget or padded - total - seq > v0.max_paddings:
                    break
                longest = widest
            elif total + seq > budget:
                break
            total += seq
            n += 1
            spans = self._prefix_spans(rid, st)
            hit = kv.match(spans, (seq - 1) // bs) if spans else 0
            cached = hit * bs
            self._start_prefill(rid, st, spans, hit, cached, kv.blocks_for(seq) - hit, now)
            self._add_chunk(plan, rid, seq - cached, cached)
        if not n:
            return False
        plan.decode_batch = 0
        plan.decode_ctx_sum = 0
        return True

    def _reserve_v0_decode_growth(self, now: float) -> None:
        """Allocate the decodes' new blocks, preempting the newest running request while v0's
        one-free-block-per-decode check fails (see the module docstring, rule 5)."""
        dec, kv = self._dec, self.kv
        while dec.n:
            need = dec.new_blocks(self.it)
            free = kv.free_blocks
            if need < free or (need == free and self._newest_needs_block()):
                if need:
                    kv.allocate(need)
                return
            self._preempt(next(reversed(self.running)), now)

    def _newest_needs_block(self) -> bool:
        """Whether the newest running request's next token starts a new block."""
        rid = next(reversed(self.running))
        return (self._dec.kv_tokens(rid, self.it)) % self.kv.block_size == 0

    #: prefill-only steps stall the decodes (see ``apply``)
    decode_clock_stalls = True

    def apply(self, plan: Plan, iterations: int, now: float) -> list[Outcome]:
        """As ``ContinuousBatcher.apply``; a prefill-only step does not advance the decode
        clock ``it`` (the decode set counts the steps in which its requests decode, and they
        stall in this one)."""
        if plan.chunks:
            self.it -= iterations
        return super().apply(plan, iterations, now)

    # -- fast-forward -----------------------------------------------------------------------

    def decode_run_limit(self) -> int:
        """Decode steps the current batch can run unchanged (>= 1).

        The run ends when the first request finishes, after a step that preempted, or before
        the step whose block check could fail: the growth of the run's later steps is kept
        within ``free - 1`` blocks (sufficient for v0's check; the next plan checks exactly).
        """
        if self.preempted_in_plan:
            return 1  # the freed blocks may admit the queue head at the next step
        dec = self._dec
        k = dec.next_finish() - self.it
        spare = self.kv.free_blocks - 1
        if spare < 0:
            return 1
        if dec.n * ((k - 1) // self.kv.block_size + 1) <= spare:
            return k
        start = dec.blocks(self.it + 1)
        lo, hi = 1, k  # largest j in [lo, hi] with growth(2..j) <= spare
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if dec.blocks(self.it + mid) - start <= spare:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def check_invariants(self) -> None:
        """The continuous batcher's invariants, plus: nothing is ever partially prefilled."""
        super().check_invariants()
        assert self.partial is None
        assert len(self.running) <= self.config.max_num_seqs
