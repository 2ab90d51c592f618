"""Iteration planning of one GPU node: vLLM v1's continuous-batching scheduler.

``ContinuousBatcher`` owns a node's waiting queue, its running batch and its KV cache, and
decides what the next iteration runs. It is pure Python (no SimPy): ``GpuNode`` calls
``plan()`` at an iteration boundary, asks the cost model how long the plan takes, and calls
``apply()`` when that time has passed.

Scheduling rules (vLLM v1 ``Scheduler.schedule``, FCFS policy, one partial prefill at a time):

1. Running requests first, oldest first. Every decoding request gets one token. If the KV cache
   cannot hold the decodes' new blocks, the newest running request is preempted (its blocks are
   freed and it goes back to the front of the queue, to be recomputed later: vLLM's default
   "recompute" preemption), until the rest fit.
2. A request still in its prefill (a partial chunk of the last iteration) gets
   ``min(remaining, budget)`` tokens; if its blocks do not fit it is preempted itself.
3. Unless step 1 or 2 preempted a request, waiting requests are admitted in FCFS order while
   the token budget (``max_num_batched_tokens``), the batch size (``max_num_seqs``) and the KV
   cache allow. A request's prefix-cache hit covers whole blocks, at most ``seq - 1`` tokens,
   so at least one token is computed. Without chunked prefill a prompt must fit the remaining
   budget whole. The first request that does not fit stops admission (head-of-line blocking,
   as in vLLM).

A request's *sequence* is its prompt plus the tokens generated so far. When an iteration
computes the last token of a sequence, a new token is sampled: the first one ends the TTFT,
the last one finishes the request. A preempted request keeps its generated tokens and later
recomputes prompt plus output so far (vLLM v1), then continues.

Decoding requests need O(1) work per iteration (``sim.model.decode_set``: with an iteration
counter, sums over the batch and a heap of finish iterations replace per-request loops). This
also gives the length of a run of identical decode iterations in closed form
(``decode_run_limit``), which the node fast-forwards.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from pydantic import Field

from sim.model.decode_set import DecodeSet
from sim.model.kv_cache import KVCache
from sim.model.requests import CANCELLED, COMPLETED, REJECTED, UNFINISHED, Outcome, RequestTable
from sim.registry import Registry
from sim.spec import StrictModel

batchers: Registry[type[ContinuousBatcher]] = Registry("batcher")


@dataclass(slots=True)
class Plan:
    """What one iteration (or a run of identical decode iterations) computes."""

    #: prefill chunks: (request id, tokens computed now, tokens computed before)
    chunks: list[tuple[int, int, int]] = field(default_factory=list)
    prefill_tokens: int = 0
    prefill_pairs: int = 0
    decode_batch: int = 0
    #: context tokens attended by the decodes, summed, in the (first) iteration
    decode_ctx_sum: int = 0


@dataclass(frozen=True, slots=True)
class BatcherConfig:
    """Engine limits of a node (vLLM names)."""

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    chunked_prefill: bool = True
    #: longest prompt + max_output_tokens the engine accepts (vLLM ``max_model_len``)
    max_model_len: int | None = None


@batchers.register("continuous")
class ContinuousBatcher:
    """Waiting queue, running batch and KV cache of one node (continuous batching)."""

    class Params(StrictModel):
        """vLLM engine limits. Defaults: vLLM v1's online-serving values for an H100-class GPU
        (they vary by version: 2048-8192 batched tokens, 256-1024 sequences)."""

        max_num_seqs: int = Field(256, ge=1)
        max_num_batched_tokens: int = Field(8192, ge=1)
        chunked_prefill: bool = True

    @classmethod
    def config(cls, params: Params, max_model_len: int | None) -> BatcherConfig:
        """Engine limits from validated parameters."""
        return BatcherConfig(params.max_num_seqs, params.max_num_batched_tokens,
                             params.chunked_prefill, max_model_len)

    def __init__(self, kv: KVCache, table: RequestTable, config: BatcherConfig,
                 node_id: int = 0):
        if config.max_num_batched_tokens < config.max_num_seqs:
            raise ValueError("max_num_batched_tokens must be >= max_num_seqs (as vLLM requires)")
        self.kv = kv
        self.table = table
        self.config = config
        self.node_id = node_id
        bs = kv.block_size
        limit = kv.total_blocks * bs
        if config.max_model_len is not None:
            limit = min(limit, config.max_model_len)
        if not config.chunked_prefill:
            limit = min(limit, config.max_num_batched_tokens)
        #: longest prompt + max_output_tokens this node can ever serve
        self.max_model_len = limit
        self.waiting: deque[int] = deque()
        #: running requests in admission order (dict as an ordered set)
        self.running: dict[int, None] = {}
        self.partial: int | None = None
        self.it = 0
        # per-request state of requests on this node
        self._seq: dict[int, int] = {}          # prompt + generated tokens
        self._computed: dict[int, int] = {}     # tokens with KV, prefill phase
        self._held: dict[int, int] = {}         # blocks held, prefill phase
        self._spans: dict[int, list[tuple[int, int]]] = {}  # shareable blocks (kv_cache.Span)
        self._holding: dict[int, list[list[int]]] = {}       # cached blocks held (kv_cache)
        self._preempted_at: dict[int, float] = {}
        #: per request on this node: [first scheduled s, first token s, cached tokens,
        #: recomputed tokens, preemptions, computed tokens, KV tokens when decoding began]
        self._meta: dict[int, list] = {}
        #: requests whose first token came in the last ``apply``
        self.first_tokens: list[int] = []
        self._dec = DecodeSet(bs)
        self._plan = Plan()
        #: inter-token gaps caused by preemption: (time the token came, gap in s)
        self.preemption_gaps: list[tuple[float, float]] = []
        self.preemptions = 0
        self.preempted_in_plan = False
        #: tokens the waiting requests still have to prefill (prompt, or prompt + output so
        #: far for a preempted request), for telemetry
        self.waiting_tokens = 0
        #: exponentially weighted recent TTFT and E2E of completions (weight 0.1), for telemetry
        self.recent_ttft_s = math.nan
        self.recent_e2e_s = math.nan
        #: requests whose prompt KV arrived from a prefill node (disaggregated serving):
        #: request id -> prompt tokens with KV, until admitted
        self._remote: dict[int, int] = {}

    # -- queue ------------------------------------------------------------------------------

    def enqueue(self, rid: int, now: float) -> Outcome | None:
        """Queue a request; if this engine can never serve it, return its rejection."""
        t = self.table
        if t.prompt_tokens[rid] + t.max_output_tokens[rid] > self.max_model_len:
            nan = math.nan
            return Outcome(rid, self.node_id, REJECTED, nan, nan, now, 0, 0, 0, 0, 0)
        self.waiting.append(rid)
        self._seq[rid] = t.prompt_tokens[rid]
        self.waiting_tokens += t.prompt_tokens[rid]
        self._meta[rid] = [math.nan, math.nan, 0, 0, 0, 0, 0]
        return None

    def enqueue_transferred(self, rid: int, now: float, outcome: Outcome) -> Outcome | None:
        """Queue a request whose prompt was prefilled on another node (``outcome``, its
        hand-off there) and whose KV cache has arrived: admitted FCFS like any request when
        the prompt's blocks fit, it computes the first token's KV and then decodes
        (disaggregated serving, ``sim.model.transfer``). Returns its rejection if this
        engine can never serve it."""
        t = self.table
        prompt = t.prompt_tokens[rid]
        if prompt + t.max_output_tokens[rid] > self.max_model_len:
            return Outcome(rid, self.node_id, REJECTED, outcome.first_scheduled_s,
                           outcome.first_token_s, now, outcome.generated_tokens,
                           outcome.cached_tokens, outcome.recomputed_tokens,
                           outcome.preemptions, outcome.computed_tokens)
        self.waiting.append(rid)
        self._seq[rid] = prompt + 1
        self.waiting_tokens += prompt + 1
        self._meta[rid] = [outcome.first_scheduled_s, outcome.first_token_s,
                           outcome.cached_tokens, outcome.recomputed_tokens,
                           outcome.preemptions, outcome.computed_tokens, 0]
        self._remote[rid] = prompt
        return None

    def _admit_transferred(self, plan: Plan, rid: int) -> bool:
        """Admit the queue head whose prompt KV was transferred here, if its blocks fit."""
        kv = self.kv
        prompt = self._remote[rid]
        need = kv.blocks_for(prompt + 1)
        if need > kv.free_blocks:
            return False
        del self._remote[rid]
        self.waiting.popleft()
        self.waiting_tokens -= prompt + 1
        self._spans[rid] = []
        self._holding[rid] = []
        kv.allocate(need)
        self._held[rid] = need
        self._computed[rid] = prompt
        self.running[rid] = None
        self._add_chunk(plan, rid, 1, prompt)
        return True

    @property
    def decode_batch(self) -> int:
        """Number of requests in the decode phase."""
        return self._dec.n

    def is_idle(self) -> bool:
        """True when nothing is queued or running."""
        return not self.running and not self.waiting

    def can_take_new_work(self) -> bool:
        """Whether an arrival could join at the next boundary of a pure-decode run.

        During such a run a non-empty queue stays blocked (its head did not fit and nothing
        frees room before a request finishes), so only the first waiting request matters.
        """
        c = self.config
        return (len(self.waiting) == 1 and len(self.running) < c.max_num_seqs
                and self._dec.n < c.max_num_batched_tokens)

    # -- planning ---------------------------------------------------------------------------

    def plan(self, now: float) -> Plan | None:
        """Schedule the next iteration; None when there is nothing to run.

        The returned plan object is reused by the next call (the node applies a plan before
        it asks for the next one).
        """
        preempted = self.preemptions
        dec = self._dec
        if dec.n:
            self._reserve_decode_growth(now)
        plan = self._plan
        plan.chunks = []
        plan.prefill_tokens = plan.prefill_pairs = 0
        plan.decode_batch = dec.n
        budget = self.config.max_num_batched_tokens - dec.n
        if self.partial is not None and budget > 0:
            budget = self._continue_partial(plan, budget, now)
        # vLLM admits no waiting request in a step that preempted one
        self.preempted_in_plan = self.preemptions != preempted
        if self.waiting and self.partial is None and not self.preempted_in_plan:
            self._admit(plan, budget, now)
        if not plan.chunks and not plan.decode_batch:
            return None
        plan.decode_ctx_sum = dec.sum_a + dec.n * (self.it + 1)
        return plan

    def _reserve_decode_growth(self, now: float) -> None:
        """Allocate the decodes' new blocks for the next iteration, preempting if needed."""
        while self._dec.n:
            need = self._dec.new_blocks(self.it)
            if need <= self.kv.free_blocks:
                if need:
                    self.kv.allocate(need)
                return
            self._preempt(next(reversed(self.running)), now)

    def _continue_partial(self, plan: Plan, budget: int, now: float) -> int:
        rid = self.partial
        assert rid is not None
        done = self._computed[rid]
        chunk = min(self._seq[rid] - done, budget)
        extra = self.kv.blocks_for(done + chunk) - self._held[rid]
        if extra > self.kv.free_blocks:
            self._preempt(rid, now)
            return budget
        self.kv.allocate(extra)
        self._held[rid] += extra
        self._add_chunk(plan, rid, chunk, done)
        return budget - chunk

    def _admit(self, plan: Plan, budget: int, now: float) -> None:
        kv, config = self.kv, self.config
        while self.waiting and budget > 0 and len(self.running) < config.max_num_seqs:
            rid = self.waiting[0]
            if self._remote and rid in self._remote:
                if not self._admit_transferred(plan, rid):
                    return
                budget -= 1
                continue
            seq = self._seq[rid]
            spans = self._prefix_spans(rid)
            hit = kv.match(spans, (seq - 1) // kv.block_size) if spans else 0
            cached = hit * kv.block_size
            todo = seq - cached
            if not config.chunked_prefill and todo > budget:
                return
            chunk = min(todo, budget)
            new_blocks = kv.blocks_for(cached + chunk) - hit
            free = kv.free_blocks
            # hit blocks that sit in the evictable pool also take free blocks
            if new_blocks + hit > free and new_blocks + kv.evictable_among(spans, hit) > free:
                return
            self.waiting.popleft()
            self.waiting_tokens -= seq
            self._holding[rid] = kv.acquire(spans, hit)
            kv.allocate(new_blocks)
            self._held[rid] = hit + new_blocks
            self._computed[rid] = cached
            self.running[rid] = None
            meta = self._meta[rid]
            if meta[0] != meta[0]:  # NaN: first admission
                meta[0] = now
                meta[2] = cached
            else:
                meta[3] += todo
            self._add_chunk(plan, rid, chunk, cached)
            budget -= chunk
            if chunk < todo:
                self.partial = rid
                return

    @staticmethod
    def _add_chunk(plan: Plan, rid: int, chunk: int, done: int) -> None:
        plan.chunks.append((rid, chunk, done))
        plan.prefill_tokens += chunk
        plan.prefill_pairs += chunk * done + chunk * (chunk + 1) // 2

    def _prefix_spans(self, rid: int) -> list[tuple[int, int]]:
        spans = self._spans.get(rid)
        if spans is None:
            if self.kv.prefix_caching and self.table.has_shareable_prefix(rid):
                spans = self.table.prompt_spans(rid, self.kv.block_size)
            else:
                spans = []
            self._spans[rid] = spans
        return spans

    # -- fast-forward -----------------------------------------------------------------------

    def decode_run_limit(self) -> int:
        """Iterations the current pure-decode batch can run unchanged (>= 1).

        The run ends when the first request finishes or when the KV cache could not hold the
        next iteration's blocks (the plan already reserved the first iteration's blocks); with
        requests waiting, also before an iteration whose blocks would evict cached ones.
        """
        if self.preempted_in_plan:
            return 1  # the next step may admit again; stepping would try it
        k = self._dec.next_finish() - self.it
        # With requests waiting, the run also ends before growth would evict cached blocks:
        # an eviction can shrink the queue head's prefix hit and so make it admissible.
        free = self.kv.empty if self.waiting else self.kv.free_blocks
        # each request needs at most one block per block_size iterations (+1 partial)
        if self._dec.n * ((k - 1) // self.kv.block_size + 1) <= free:
            return k
        start = self._dec.blocks(self.it + 1)
        lo, hi = 1, k  # largest j in [lo, hi] with growth(j) <= free
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._dec.blocks(self.it + mid) - start <= free:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def kv_used_during_run(self, iterations_started: int) -> int:
        """KV blocks in use once ``iterations_started`` iterations of a decode run began."""
        if iterations_started <= 1:
            return self.kv.used_blocks
        return (self.kv.used_blocks + self._dec.blocks(self.it + iterations_started)
                - self._dec.blocks(self.it + 1))

    # -- applying ---------------------------------------------------------------------------

    def apply(self, plan: Plan, iterations: int, now: float) -> list[Outcome]:
        """Account for ``iterations`` finished iterations of ``plan``; return the requests
        that finished (requests whose first token came are left in ``first_tokens``)."""
        first = self.it + 1
        self.it += iterations
        if iterations > 1:
            self.kv.allocate(self._dec.blocks(self.it) - self._dec.blocks(first))
        finished: list[Outcome] = []
        if self.first_tokens:
            self.first_tokens.clear()
        heap = self._dec.finish_heap
        if heap and heap[0][0] <= self.it:
            for rid in self._dec.pop_finished(self.it):
                self._leave_decode(rid)
                finished.append(self._finish(rid, self._seq[rid] - 1, now))
        for rid, chunk, done in plan.chunks:
            self._meta[rid][5] += chunk
            outcome = self._complete_chunk(rid, done + chunk, now)
            if outcome is not None:
                finished.append(outcome)
        return finished

    def _complete_chunk(self, rid: int, computed: int, now: float) -> Outcome | None:
        """Record a computed chunk; return the outcome if the request finished."""
        self._publish(rid, computed)
        seq = self._seq[rid]
        if computed < seq:
            self._computed[rid] = computed
            return None
        if self.partial == rid:
            self.partial = None
        table = self.table
        generated = seq - table.prompt_tokens[rid] + 1
        self._seq[rid] = seq + 1
        if generated == 1:
            self._meta[rid][1] = now
            self.first_tokens.append(rid)
        elif rid in self._preempted_at:
            self.preemption_gaps.append((now, now - self._preempted_at.pop(rid)))
        held = self._held.pop(rid)
        del self._computed[rid]
        if generated == table.output_tokens[rid]:
            return self._finish(rid, seq, now, held)
        if self.prefill_only:
            return self._hand_off(rid, seq, now, held)
        self._join_decode(rid, seq)
        return None

    #: a prefill node of a disaggregated cluster: a request leaves at its first token
    prefill_only = False

    def _hand_off(self, rid: int, kv_tokens: int, now: float, held: int) -> Outcome:
        """The first token is out: the request leaves this prefill node (its blocks freed,
        shareable ones staying cached) with status COMPLETED and one token generated; the
        cluster moves its KV to a decode node."""
        self._release(rid, kv_tokens, held)
        del self.running[rid]
        del self._seq[rid]
        ttft = self._meta[rid][1] - self.table.arrival_s[rid]
        if self.recent_ttft_s != self.recent_ttft_s:  # NaN: first hand-off
            self.recent_ttft_s = ttft
        else:
            self.recent_ttft_s += 0.1 * (ttft - self.recent_ttft_s)
        return self._outcome(rid, COMPLETED, now, 1)

    def _publish(self, rid: int, computed: int) -> None:
        """Make the request's newly full, shareable prompt blocks hittable by others."""
        spans = self._spans.get(rid)
        if spans:
            self.kv.publish(self._holding[rid], spans, computed // self.kv.block_size)

    def _join_decode(self, rid: int, kv_tokens: int) -> None:
        # the request holds blocks_for(kv_tokens) blocks (check_invariants verifies it)
        self._meta[rid][6] = kv_tokens
        table = self.table
        generated = kv_tokens - table.prompt_tokens[rid] + 1
        self._dec.join(rid, kv_tokens, self.it, table.output_tokens[rid] - generated)

    def _leave_decode(self, rid: int) -> int:
        """Remove a request from the decode set; return its KV token count."""
        kv_tokens = self._dec.leave(rid, self.it)
        self._seq[rid] = kv_tokens + 1
        meta = self._meta[rid]
        meta[5] += kv_tokens - meta[6]  # one token computed per decode iteration
        return kv_tokens

    def _release(self, rid: int, kv_tokens: int, held: int | None = None,
                 preempted: bool = False) -> None:
        """Free a request's blocks, leaving reusable full blocks cached.

        On completion only blocks a later request reuses (a session's next turn) are cached;
        on preemption all full blocks are, so the recomputation can hit what survives.
        """
        kv = self.kv
        if held is None:
            held = kv.blocks_for(kv_tokens)
        holding = self._holding.pop(rid, ())
        private = held
        for _, n in holding:
            private -= n
        if kv.prefix_caching:
            table = self.table
            if preempted:
                spans = table.own_spans(rid, kv.block_size, kv_tokens)
                self._spans[rid] = spans
            else:
                spans = table.sequence_spans(rid, kv.block_size, kv_tokens)
                self._spans.pop(rid, None)
            if spans:
                private -= kv.publish(holding, spans, kv_tokens // kv.block_size, ref=0)
        kv.free(private)
        if holding:
            kv.release(holding)

    def _finish(self, rid: int, kv_tokens: int, now: float, held: int | None = None) -> Outcome:
        self._release(rid, kv_tokens, held)
        del self.running[rid]
        del self._seq[rid]
        arrival = self.table.arrival_s[rid]
        if self.recent_e2e_s != self.recent_e2e_s:  # NaN: first completion
            self.recent_e2e_s = now - arrival
            self.recent_ttft_s = self._meta[rid][1] - arrival
        else:
            self.recent_e2e_s += 0.1 * (now - arrival - self.recent_e2e_s)
            self.recent_ttft_s += 0.1 * (self._meta[rid][1] - arrival - self.recent_ttft_s)
        return self._outcome(rid, COMPLETED, now, self.table.output_tokens[rid])

    def _outcome(self, rid: int, status: int, finish_s: float, generated: int) -> Outcome:
        meta = self._meta.pop(rid)
        self._preempted_at.pop(rid, None)
        return Outcome(rid, self.node_id, status, meta[0], meta[1], finish_s, generated,
                       meta[2], meta[3], meta[4], meta[5])

    def cancel(self, rid: int, now: float) -> Outcome | None:
        """Withdraw a request from this node (at an iteration boundary), freeing its blocks.

        Returns its outcome (status CANCELLED, with the work it cost), or None if it is not
        here any more.
        """
        if rid not in self._meta:
            return None
        generated = self.generated(rid)
        if rid in self.running:
            if rid == self.partial:
                self.partial = None
                self._release(rid, self._computed.pop(rid), self._held.pop(rid))
            else:
                self._release(rid, self._leave_decode(rid))
            del self.running[rid]
        else:
            self.waiting.remove(rid)
            self.waiting_tokens -= self._seq[rid]
            self._spans.pop(rid, None)
            self._remote.pop(rid, None)
        del self._seq[rid]
        return self._outcome(rid, CANCELLED, now, generated)

    def take_waiting(self, rid: int) -> bool:
        """Remove a request that is queued here and has never started (for rebalancing)."""
        meta = self._meta.get(rid)
        if meta is None or meta[0] == meta[0] or rid in self.running:
            return False
        self.waiting.remove(rid)
        self.waiting_tokens -= self._seq.pop(rid)
        del self._meta[rid]
        self._spans.pop(rid, None)
        return True

    def _preempt(self, rid: int, now: float) -> None:
        """Free a running request's blocks and put it back at the head of the queue."""
        if rid == self.partial:
            self.partial = None
            kv_tokens = self._computed.pop(rid)
            self._release(rid, kv_tokens, self._held.pop(rid), preempted=True)
        else:
            kv_tokens = self._leave_decode(rid)
            self._release(rid, kv_tokens, preempted=True)
            self._preempted_at[rid] = now
        del self.running[rid]
        self.waiting.appendleft(rid)
        self.waiting_tokens += self._seq[rid]
        self._meta[rid][4] += 1
        self.preemptions += 1

    # -- hooks for batch policies that adapt or wait -------------------------------------

    #: True for policies that use ``observe_run`` (the node skips the call otherwise)
    observes_runs = False

    def observe_run(self, iterations: int, duration_s: float, decode_batch: int) -> None:
        """Told after each iteration or decode run how long it took (for adaptive policies)."""

    def next_wakeup(self, now: float) -> float | None:
        """When ``plan`` returned None with requests waiting: the time at which the policy
        wants to plan again (a batching timeout), or None. Continuous batching never waits."""
        return None

    # -- observation ------------------------------------------------------------------------

    def in_flight(self, now: float) -> list[Outcome]:
        """Snapshots of the requests still here (status UNFINISHED), for the end of a run."""
        out = []
        for rid in [*self.waiting, *self.running]:
            meta = self._meta[rid]
            done = meta[5] + (self._dec.kv_tokens(rid, self.it) - meta[6]
                              if rid in self._dec else 0)
            out.append(Outcome(rid, self.node_id, UNFINISHED, meta[0], meta[1], math.nan,
                               self.generated(rid), meta[2], meta[3], meta[4], done))
        return out

    def generated(self, rid: int) -> int:
        """Tokens generated so far by a request on this node."""
        if rid in self._dec:
            return self._dec.kv_tokens(rid, self.it) - self.table.prompt_tokens[rid] + 1
        return self._seq[rid] - self.table.prompt_tokens[rid]

    def check_invariants(self) -> None:
        """Raise AssertionError when the batcher's bookkeeping is inconsistent."""
        self.kv.check_invariants()
        assert self.partial is None or self.partial in self.running
        assert not (set(self.waiting) & set(self.running))
        offsets = self._dec.offsets()
        decoders = set(offsets)
        prefilling = set(self._computed) - set(self.waiting)
        assert decoders | prefilling == set(self.running), (decoders, prefilling, self.running)
        assert len(self.running) <= self.config.max_num_seqs
        held = sum(self.kv.blocks_for(a + self.it) for a in offsets.values())
        held += sum(self._held[r] for r in prefilling)
        shared = sum(n for r in self.running for _, n in self._holding.get(r, []))
        assert held - shared == self.kv.private, (held, shared, self.kv.private)
        assert self._dec.blocks(self.it) == sum(
            self.kv.blocks_for(a + self.it) for a in offsets.values())
        assert self._dec.sum_a == sum(offsets.values())
        assert self.waiting_tokens == sum(self._seq[r] for r in self.waiting)
