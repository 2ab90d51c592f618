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

The batcher is split by concern:

* this module: the engine limits, the plan, queueing, planning (what the next iteration
  runs), fast-forward, applying finished iterations, and the batch-policy hooks;
* ``sim.model.request_state``: the per-request record (``RequestState``, slotted);
* ``sim.model.batcher_kv``: KV bookkeeping (admission's blocks, publication, release);
* ``sim.model.batcher_lifecycle``: decode phase, preemption, finishing, cancellation;
* ``sim.model.decode_set``: the decoding requests in aggregate.

**Batch-policy hooks.** A batch policy (``sim.model.adaptive_batcher``,
``sim.model.batcher_v0``) subclasses ``ContinuousBatcher`` and overrides only public methods
(``plan``, ``apply``, ``can_take_new_work``, ``decode_run_limit``, ``check_invariants``) and
these hooks: ``admit_window`` (how many requests at the head of the queue admission may take),
``on_leave`` (a request left the node), ``observe_run`` with ``observes_runs`` (how long an
iteration or run took), ``next_wakeup`` (when to plan again while waiting on purpose) and
``decode_clock_stalls`` (prefill steps do not advance the decode clock).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from pydantic import Field

from sim.model.batcher_lifecycle import RequestLifecycle
from sim.model.decode_set import DecodeSet
from sim.model.kv_cache import KVCache
from sim.model.request_state import RequestState
from sim.model.requests import REJECTED, Outcome, RequestTable
from sim.registry import Registry
from sim.spec import StrictModel

batchers: Registry[type[ContinuousBatcher]] = Registry("batcher")

#: ``admit_window`` of a policy that does not restrict admission
UNLIMITED = 1 << 62


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
class ContinuousBatcher(RequestLifecycle):
    """Waiting queue, running batch and KV cache of one node (continuous batching)."""

    class Params(StrictModel):
        """vLLM engine limits. Defaults: vLLM v1's online-serving values for an H100-class GPU
        (they vary by version: 2048-8192 batched tokens, 256-1024 sequences)."""

        max_num_seqs: int = Field(256, ge=1)
        max_num_batched_tokens: int = Field(8192, ge=1)
        chunked_prefill: bool = True

    @classmethod
    def make_config(cls, params: Params, max_model_len: int | None) -> BatcherConfig:
        """Engine limits from validated parameters (the instance keeps them as ``config``)."""
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
        #: the running request whose prefill continues in the next iteration, if any
        self.partial: int | None = None
        #: the decode clock: iterations in which the decode set decoded
        self.it = 0
        #: the record of every request on this node (queued or running)
        self.reqs: dict[int, RequestState] = {}
        #: batch-policy hook: how many requests at the head of the queue admission may take
        #: (admitting one takes one, a preemption gives one back); unlimited here
        self.admit_window = UNLIMITED
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

    # -- queue ------------------------------------------------------------------------------

    def enqueue(self, rid: int, now: float) -> Outcome | None:
        """Queue a request; if this engine can never serve it, return its rejection."""
        t = self.table
        prompt = t.prompt_tokens[rid]
        if prompt + t.max_output_tokens[rid] > self.max_model_len:
            nan = math.nan
            return Outcome(rid, self.node_id, REJECTED, nan, nan, now, 0, 0, 0, 0, 0)
        self.waiting.append(rid)
        self.reqs[rid] = RequestState(prompt, now)
        self.waiting_tokens += prompt
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
        st = RequestState(prompt + 1, now)
        st.first_scheduled_s = outcome.first_scheduled_s
        st.first_token_s = outcome.first_token_s
        st.cached_tokens = outcome.cached_tokens
        st.recomputed_tokens = outcome.recomputed_tokens
        st.preemptions = outcome.preemptions
        st.computed_tokens = outcome.computed_tokens
        st.remote_prompt = prompt
        self.reqs[rid] = st
        self.waiting_tokens += prompt + 1
        return None

    def _admit_transferred(self, plan: Plan, rid: int, st: RequestState) -> bool:
        """Admit the queue head whose prompt KV was transferred here, if its blocks fit."""
        kv = self.kv
        prompt = st.remote_prompt
        assert prompt is not None
        need = kv.blocks_for(prompt + 1)
        if need > kv.free_blocks:
            return False
        st.remote_prompt = None
        self.waiting.popleft()
        self.admit_window -= 1
        self.waiting_tokens -= prompt + 1
        st.spans = []
        kv.allocate(need)
        st.held = need
        st.computed = prompt
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
        st = self.reqs[rid]
        done = st.computed
        assert done is not None
        chunk = min(st.seq - done, budget)
        extra = self.kv.blocks_for(done + chunk) - st.held
        if extra > self.kv.free_blocks:
            self._preempt(rid, now)
            return budget
        self.kv.allocate(extra)
        st.held += extra
        self._add_chunk(plan, rid, chunk, done)
        return budget - chunk

    def _admit(self, plan: Plan, budget: int, now: float) -> None:
        kv, config, reqs = self.kv, self.config, self.reqs
        while (self.waiting and budget > 0 and len(self.running) < config.max_num_seqs
               and self.admit_window > 0):
            rid = self.waiting[0]
            st = reqs[rid]
            if st.remote_prompt is not None:
                if not self._admit_transferred(plan, rid, st):
                    return
                budget -= 1
                continue
            seq = st.seq
            spans = self._prefix_spans(rid, st)
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
            self._start_prefill(rid, st, spans, hit, cached, new_blocks, now)
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

    # -- batch-policy hooks -----------------------------------------------------------------

    #: True for policies that use ``observe_run`` (the node skips the call otherwise)
    observes_runs = False

    #: True for policies whose prefill steps do not advance the decode clock ``it`` (vLLM v0's
    #: prefill-only steps): a request leaving the decode set early then drops its finish entry
    decode_clock_stalls = False

    def observe_run(self, iterations: int, duration_s: float, decode_batch: int) -> None:
        """Told after each iteration or decode run how long it took (for adaptive policies)."""

    def next_wakeup(self, now: float) -> float | None:
        """When ``plan`` returned None with requests waiting: the time at which the policy
        wants to plan again (a batching timeout), or None. Continuous batching never waits."""
        return None

    def on_leave(self, rid: int, waiting: bool) -> None:
        """Told when a request leaves this node (finished, handed off, cancelled or taken
        back; ``waiting``: it left from the queue). Its record is already gone."""

    # -- checks -----------------------------------------------------------------------------

    def check_invariants(self) -> None:
        """Raise AssertionError when the batcher's bookkeeping is inconsistent."""
        self.kv.check_invariants()
        reqs = self.reqs
        assert self.partial is None or self.partial in self.running
        assert not (set(self.waiting) & set(self.running))
        assert set(reqs) == set(self.waiting) | set(self.running)
        offsets = self._dec.offsets()
        decoders = set(offsets)
        prefilling = {r for r, st in reqs.items() if st.computed is not None}
        assert not prefilling & set(self.waiting)
        assert decoders | prefilling == set(self.running), (decoders, prefilling, self.running)
        assert len(self.running) <= self.config.max_num_seqs
        held = sum(self.kv.blocks_for(a + self.it) for a in offsets.values())
        held += sum(reqs[r].held for r in prefilling)
        shared = sum(n for r in self.running for _, n in reqs[r].holding)
        assert held - shared == self.kv.private, (held, shared, self.kv.private)
        assert self._dec.blocks(self.it) == sum(
            self.kv.blocks_for(a + self.it) for a in offsets.values())
        assert self._dec.sum_a == sum(offsets.values())
        assert self.waiting_tokens == sum(reqs[r].seq for r in self.waiting)
