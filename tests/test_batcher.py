"""vLLM-style iteration planning: chunked prefill, batch limits, preemption, prefix hits."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sim.model.batcher import BatcherConfig, ContinuousBatcher
from sim.model.kv_cache import KVCache
from sim.model.requests import COMPLETED, REJECTED, RequestTable
from sim.workload.base import Workload, unique_prompt_workload


def make(prompts, outputs, *, blocks=1000, bs=16, seqs=8, budget=512, chunked=True,
         max_len=None, max_out=None):
    n = len(prompts)
    wl = unique_prompt_workload(np.zeros(n), np.array(prompts), np.array(outputs),
                                None if max_out is None else np.array(max_out))
    table = RequestTable(wl)
    kv = KVCache(blocks, bs)
    return table, ContinuousBatcher(kv, table, BatcherConfig(seqs, budget, chunked, max_len))


def step(b: ContinuousBatcher, now: float, k: int = 1):
    """Plan and apply one iteration; record finished requests; return (plan, finished ids)."""
    plan = b.plan(now)
    if plan is None:
        return None, []
    outcomes = b.apply(plan, k, now)
    for outcome in outcomes:
        b.table.record(outcome)
    return plan, [o.request_id for o in outcomes]


def test_long_prompt_is_chunked_by_the_token_budget():
    """A 250-token prompt under a 100-token budget takes three iterations, then decodes."""
    table, b = make([250], [3], budget=100, seqs=4)
    b.enqueue(0, 0.0)
    chunks = []
    for t in (1.0, 2.0, 3.0):
        plan, _ = step(b, t)
        chunks.append([(c[1], c[2]) for c in plan.chunks])
    assert chunks == [[(100, 0)], [(100, 100)], [(50, 200)]]
    assert b.first_tokens == [0]
    plan, done = step(b, 4.0)
    assert (plan.decode_batch, plan.decode_ctx_sum, done) == (1, 251, [])
    plan, done = step(b, 5.0)
    assert done == [0] and table.finish_s[0] == 5.0 and table.status[0] == COMPLETED
    assert table.first_token_s[0] == 3.0 and table.generated_tokens[0] == 3
    b.check_invariants()


def test_prefill_pairs_count_causal_attention_work():
    """A chunk of c tokens after k cached ones attends c*k + c(c+1)/2 pairs."""
    _, b = make([250], [3], budget=100)
    b.enqueue(0, 0.0)
    first = step(b, 1.0)[0].prefill_pairs  # (a plan object is reused by the next plan)
    second = step(b, 2.0)[0].prefill_pairs
    assert first == 100 * 101 // 2
    assert second == 100 * 100 + 100 * 101 // 2


def test_batch_size_limit_holds_requests_back():
    """With max_num_seqs=2 the third request waits until one of the first two finishes."""
    _, b = make([10, 10, 10], [2, 5, 2], seqs=2)
    for rid in range(3):
        b.enqueue(rid, 0.0)
    plan, _ = step(b, 1.0)
    assert [c[0] for c in plan.chunks] == [0, 1]
    plan, done = step(b, 2.0)       # decode: request 0 emits its 2nd token and finishes
    assert done == [0] and not plan.chunks
    plan, _ = step(b, 3.0)          # now request 2 is admitted beside request 1's decode
    assert [c[0] for c in plan.chunks] == [2] and plan.decode_batch == 1
    assert b.in_flight(3.0)[-1].first_scheduled_s == 3.0


def test_without_chunking_a_prompt_that_does_not_fit_the_budget_waits():
    """Without chunked prefill the queue head waits for a step with enough budget."""
    _, b = make([40, 100], [5, 5], budget=120, chunked=False)
    b.enqueue(0, 0.0)
    step(b, 1.0)                     # request 0 prefills (40 tokens)
    b.enqueue(1, 1.5)
    plan, _ = step(b, 2.0)           # 1 decode token + 100 prefill tokens <= 120
    assert [c[:2] for c in plan.chunks] == [(1, 100)]


def test_request_that_can_never_fit_is_rejected():
    """Prompt plus max output beyond the KV cache (or max_model_len) is rejected at once."""
    _, b = make([100, 10], [10, 10], blocks=5, bs=16)   # 80 tokens of KV
    rejected = b.enqueue(0, 2.5)
    assert (rejected.status, rejected.finish_s) == (REJECTED, 2.5)
    assert b.enqueue(1, 2.5) is None
    _, b2 = make([10], [10], max_len=15)
    assert b2.enqueue(0, 0.0).status == REJECTED


def test_kv_exhaustion_preempts_newest_and_recomputes_it():
    """When decode growth runs out of blocks the newest request is preempted and recomputed."""
    # 8 blocks of 4 tokens = 32 tokens; two requests of 8 + 12 tokens cannot both finish
    table, b = make([8, 8], [12, 12], blocks=8, bs=4, budget=64)
    b.enqueue(0, 0.0)
    b.enqueue(1, 0.0)
    now, finished = 0.0, []
    while len(finished) < 2 and now < 100:
        now += 1.0
        _, done = step(b, now)
        finished += done
        b.check_invariants()
    assert finished == [0, 1]
    assert list(table.preemptions) == [0, 1]
    assert list(table.generated_tokens) == [12, 12]
    assert table.recomputed_tokens[1] > 0
    assert b.preemption_gaps and b.preemption_gaps[0][1] > 0


def shared_prefix_workload(n: int, prefix: int, own: int) -> Workload:
    """n requests that share the first ``prefix`` tokens (segment key 5), then own tokens."""
    return Workload(
        arrival_s=np.zeros(n), prompt_tokens=np.full(n, prefix + own),
        output_tokens=np.full(n, 4), max_output_tokens=np.full(n, 4),
        session_id=np.full(n, -1), prefix_group=np.zeros(n, dtype=np.int64),
        seg_ptr=np.arange(0, 2 * n + 1, 2), seg_key=np.tile([5, -1], n),
        seg_len=np.tile([prefix, own], n), output_key=np.full(n, -1),
        expected_rate_rps=1.0)


def test_second_request_hits_the_published_prefix():
    """A request admitted after another's prefill reuses the shared prefix blocks."""
    table = RequestTable(shared_prefix_workload(2, prefix=100, own=30))
    b = ContinuousBatcher(KVCache(100, 16), table, BatcherConfig(8, 512, True, None))
    b.enqueue(0, 0.0)
    step(b, 1.0)
    b.enqueue(1, 1.0)
    plan, _ = step(b, 2.0)
    assert [o.cached_tokens for o in b.in_flight(2.0)] == [0, 96]  # 6 blocks of the prefix
    assert plan.chunks == [(1, 130 - 96, 96)]
    assert b.kv.used_blocks == 9 + 3             # 9 blocks of request 0, 3 new for request 1


def test_whole_prompt_cached_still_computes_one_token():
    """A prompt fully in cache recomputes its last block: hits stop before the last token."""
    wl = Workload(arrival_s=np.zeros(2), prompt_tokens=np.full(2, 64),
                  output_tokens=np.full(2, 4), max_output_tokens=np.full(2, 4),
                  session_id=np.full(2, -1), prefix_group=np.zeros(2, dtype=np.int64),
                  seg_ptr=np.arange(3), seg_key=np.full(2, 5), seg_len=np.full(2, 64),
                  output_key=np.full(2, -1), expected_rate_rps=1.0)
    wl.validate()
    table = RequestTable(wl)
    b = ContinuousBatcher(KVCache(100, 16), table, BatcherConfig(8, 512, True, None))
    b.enqueue(0, 0.0)
    step(b, 1.0)
    b.enqueue(1, 1.0)
    plan, _ = step(b, 2.0)
    assert b.in_flight(2.0)[1].cached_tokens == 48   # (64 - 1) // 16 = 3 blocks
    assert plan.chunks == [(1, 16, 48)]


@settings(max_examples=60)
@given(prompts=st.lists(st.integers(1, 90), min_size=1, max_size=12),
       outputs=st.lists(st.integers(1, 40), min_size=12, max_size=12),
       blocks=st.integers(12, 60), seqs=st.integers(1, 6), budget=st.integers(6, 80),
       chunked=st.booleans(), jumps=st.lists(st.integers(1, 50), min_size=400, max_size=400))
def test_random_workloads_finish_with_consistent_books(prompts, outputs, blocks, seqs, budget,
                                                       chunked, jumps):
    """Any workload drains: every request is rejected or completes all its tokens, and the
    block accounting is consistent after every iteration and decode run."""
    n = len(prompts)
    table, b = make(prompts, outputs[:n], blocks=blocks, bs=4, seqs=seqs,
                    budget=max(budget, seqs), chunked=chunked)
    accepted = [rid for rid in range(n) if b.enqueue(rid, 0.0) is None]
    now, done = 0.0, []
    for jump in jumps:
        plan = b.plan(now)
        if plan is None:
            break
        k = min(jump, b.decode_run_limit()) if not plan.chunks else 1
        now += 1.0
        for outcome in b.apply(plan, k, now):
            table.record(outcome)
            done.append(outcome.request_id)
        b.check_invariants()
    assert sorted(done) == accepted
    assert b.is_idle() and b.kv.used_blocks == 0
    assert all(table.generated_tokens[r] == table.output_tokens[r] for r in accepted)


def pool_workload(n: int = 40) -> Workload:
    """Requests with shared prefixes (keys 1 and 2, key 2 extending key 1) and own tails."""
    rng = np.random.default_rng(11)
    seg_ptr, seg_key, seg_len, prompt = [0], [], [], []
    for i in range(n):
        kind = i % 4
        own = int(rng.integers(1, 30))
        segs = {0: [(-1, own)], 1: [(1, 12), (-1, own)], 2: [(1, 12), (2, 9), (-1, own)],
                3: [(1, 12), (2, 9)]}[kind]
        seg_key += [k for k, _ in segs]
        seg_len += [n_ for _, n_ in segs]
        seg_ptr.append(len(seg_key))
        prompt.append(sum(n_ for _, n_ in segs))
    out = rng.integers(1, 25, n)
    return Workload(arrival_s=np.zeros(n), prompt_tokens=np.array(prompt),
                    output_tokens=out, max_output_tokens=out.copy(),
                    session_id=np.full(n, -1), prefix_group=np.full(n, -1),
                    seg_ptr=np.array(seg_ptr), seg_key=np.array(seg_key),
                    seg_len=np.array(seg_len), output_key=np.full(n, -1),
                    expected_rate_rps=1.0)


class BatcherMachine(RuleBasedStateMachine):
    """Random arrivals and iterations keep the batcher within its limits and consistent."""

    def __init__(self) -> None:
        super().__init__()
        self.table = RequestTable(pool_workload())
        self.config = BatcherConfig(max_num_seqs=4, max_num_batched_tokens=24,
                                    chunked_prefill=True, max_model_len=None)
        self.b = ContinuousBatcher(KVCache(22, 4), self.table, self.config)
        self.next_rid, self.now, self.accepted, self.done = 0, 0.0, [], []

    @precondition(lambda self: self.next_rid < 40)
    @rule()
    def arrive(self) -> None:
        if self.b.enqueue(self.next_rid, self.now) is None:
            self.accepted.append(self.next_rid)
        self.next_rid += 1

    @rule(jump=st.integers(1, 30))
    def iterate(self, jump: int) -> None:
        plan = self.b.plan(self.now)
        if plan is None:
            assert self.b.is_idle(), "work left but nothing planned"
            return
        assert plan.prefill_tokens + plan.decode_batch <= self.config.max_num_batched_tokens
        k = 1 if plan.chunks else min(jump, self.b.decode_run_limit())
        self.now += 1.0
        self._record(self.b.apply(plan, k, self.now))

    def _record(self, outcomes) -> None:
        for outcome in outcomes:
            self.table.record(outcome)
            self.done.append(outcome.request_id)

    @invariant()
    def consistent(self) -> None:
        self.b.check_invariants()
        assert len(self.b.running) <= self.config.max_num_seqs

    def teardown(self) -> None:
        for _ in range(5000):
            plan = self.b.plan(self.now)
            if plan is None:
                break
            self.now += 1.0
            self._record(self.b.apply(plan, 1, self.now))
        assert sorted(self.done) == sorted(self.accepted)
        assert all(self.table.generated_tokens[r] == self.table.output_tokens[r]
                   for r in self.accepted)
        assert self.b.kv.used_blocks == 0


TestBatcherMachine = BatcherMachine.TestCase


def test_cancel_withdraws_a_request_wherever_it_is_and_frees_its_blocks():
    """cancel() removes a decoding, prefilling or waiting request, frees its KV and reports
    the work it cost; a request that already left is ignored."""
    from sim.outcome import CANCELLED

    _, b = make([40, 300, 20], [30, 5, 5], budget=64, seqs=2)
    for rid in range(3):
        b.enqueue(rid, 0.0)
    step(b, 1.0)                          # 0 prefills whole, 1 starts a 24-token chunk
    step(b, 2.0)                          # 0 decodes; 1 continues its prefill
    assert b.partial == 1 and list(b.waiting) == [2]
    out = {rid: b.cancel(rid, 3.0) for rid in (0, 1, 2)}
    assert all(o.status == CANCELLED and o.finish_s == 3.0 for o in out.values())
    assert out[0].generated_tokens == 2 and out[0].computed_tokens == 40 + 1
    assert out[1].generated_tokens == 0 and out[1].computed_tokens == 24 + 63
    assert out[2].computed_tokens == 0
    assert b.cancel(0, 4.0) is None
    assert b.is_idle() and b.kv.used_blocks == 0
    b.check_invariants()


def test_take_waiting_only_moves_requests_that_never_started():
    """A queued request that never ran can be taken away; a running one cannot."""
    _, b = make([10, 10, 10], [5, 5, 5], seqs=1)
    for rid in range(3):
        b.enqueue(rid, 0.0)
    step(b, 1.0)
    assert b.take_waiting(0) is False     # running
    assert b.take_waiting(2) is True
    assert list(b.waiting) == [1]
    b.check_invariants()
