"""vLLM v0's engine mode (``vllm_v0``): prefill-only or decode-only steps, prefill first, the
watermark, the padded budget, v0's preemption check, fast-forward equal to stepping."""

from __future__ import annotations

import re
import textwrap

import numpy as np
import pytest
import simpy
import yaml
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sim import app
from sim.metrics.recorder import Recorder
from sim.model.batcher import BatcherConfig, ContinuousBatcher, batchers
from sim.model.batcher_v0 import V0Batcher, V0BatcherConfig
from sim.model.cluster import Cluster, NodeSpec
from sim.model.cost import cost_models
from sim.model.kv_cache import KVCache
from sim.model.requests import COMPLETED, REJECTED, RequestTable
from sim.model.router import Router
from sim.policy.base import strategies
from sim.runner import simulate, workload_for
from sim.workload.base import Workload, unique_prompt_workload

from conftest import REPO, scenario_dict, write_scenario

LINEAR = cost_models.get("linear")


def v0_config(seqs: int = 8, budget: int = 4096, watermark: float = 0.0, pad: bool = False,
              max_paddings: int = 256) -> V0BatcherConfig:
    return V0BatcherConfig(seqs, budget, False, None, watermark, pad, max_paddings)


def make(prompts, outputs, *, blocks=1000, bs=16, caching=False,
         **config) -> tuple[RequestTable, V0Batcher]:
    """A v0 batcher over requests at time 0 (prefix caching off: v0's default)."""
    n = len(prompts)
    wl = unique_prompt_workload(np.zeros(n), np.array(prompts), np.array(outputs))
    table = RequestTable(wl)
    return table, V0Batcher(KVCache(blocks, bs, caching), table, v0_config(**config))


def step(b: V0Batcher, now: float):
    """Plan and apply one step; check the invariants; return (plan, finished ids)."""
    plan = b.plan(now)
    if plan is None:
        return None, []
    shape = (list(plan.chunks), plan.decode_batch)
    outcomes = b.apply(plan, 1, now)
    for outcome in outcomes:
        b.table.record(outcome)
    b.check_invariants()
    assert all(st.computed is None for st in b.reqs.values()), \
        "a v0 prefill step completes every prompt it starts"
    return shape, [o.request_id for o in outcomes]


# -- the step rules -------------------------------------------------------------------------

def test_a_step_is_prefill_only_whenever_a_waiting_request_fits():
    """A decoding request stalls for the whole step in which a newcomer is prefilled."""
    _, b = make([40, 30], [4, 2])
    b.enqueue(0, 0.0)
    assert step(b, 0.0)[0] == ([(0, 40, 0)], 0)
    assert step(b, 1.0)[0] == ([], 1)
    b.enqueue(1, 1.5)
    assert step(b, 2.0)[0] == ([(1, 30, 0)], 0)     # request 0 does not decode here
    assert step(b, 3.0) == (([], 2), [1])
    assert step(b, 4.0) == (([], 1), [0])
    assert b.plan(5.0) is None and b.is_idle()


def test_the_token_budget_counts_whole_prompts_and_stops_at_the_first_misfit():
    """FCFS admission under max_num_batched_tokens: the head that does not fit blocks the rest."""
    _, b = make([300, 500, 100], [3, 3, 3], budget=700)
    for rid in range(3):
        b.enqueue(rid, 0.0)
    assert step(b, 0.0)[0] == ([(0, 300, 0)], 0)    # 300 + 500 > 700; 100 waits behind 500
    assert step(b, 1.0)[0] == ([(1, 500, 0), (2, 100, 0)], 0)


def test_max_num_seqs_counts_the_running_requests():
    """v0 adds every running request to the batch size before it admits prefills."""
    _, b = make([10, 10, 10], [3, 3, 3], seqs=2)
    for rid in range(3):
        b.enqueue(rid, 0.0)
    assert step(b, 0.0)[0] == ([(0, 10, 0), (1, 10, 0)], 0)
    assert step(b, 1.0)[0] == ([], 2)


def test_padding_counts_the_longest_prompt_times_the_batch():
    """pad_prefill (v0.2-0.3): [100, 400, 300] is 1200 padded tokens, over a 1000 budget;
    unpadded it is 800 and all three start."""
    for pad, admitted in ((False, [0, 1, 2]), (True, [0, 1])):
        _, b = make([100, 400, 300], [2, 2, 2], budget=1000, pad=pad, max_paddings=10_000)
        for rid in range(3):
            b.enqueue(rid, 0.0)
        chunks, _ = step(b, 0.0)[0]
        assert [c[0] for c in chunks] == admitted
        assert sum(c[1] for c in chunks) == sum([100, 400, 300][i] for i in admitted)


def test_padding_is_also_capped_by_max_paddings():
    """[100, 400] pads 300 tokens: over max_paddings=256, so 400 waits for the next step."""
    _, b = make([100, 400], [2, 2], budget=1000, pad=True, max_paddings=256)
    b.enqueue(0, 0.0)
    b.enqueue(1, 0.0)
    assert [c[0] for c in step(b, 0.0)[0][0]] == [0]
    assert [c[0] for c in step(b, 1.0)[0][0]] == [1]


def test_the_watermark_refuses_a_prompt_that_would_leave_too_few_free_blocks():
    """100 blocks, watermark 0.05 = 5 blocks: after a 60-block prompt, a 36-block prompt
    leaves 4 < 5 free and waits (v1's rule would admit it); a 35-block one is admitted."""
    for second, admitted in ((36 * 16, [0]), (35 * 16, [0, 1])):
        _, b = make([60 * 16, second], [2, 2], blocks=100, watermark=0.05)
        b.enqueue(0, 0.0)
        b.enqueue(1, 0.0)
        assert [c[0] for c in step(b, 0.0)[0][0]] == admitted
    table = RequestTable(unique_prompt_workload(np.zeros(2), np.array([60 * 16, 36 * 16]),
                                                np.array([2, 2])))
    v1 = ContinuousBatcher(KVCache(100, 16), table, BatcherConfig(8, 4096, False, None))
    v1.enqueue(0, 0.0)
    v1.enqueue(1, 0.0)
    assert [c[0] for c in v1.plan(0.0).chunks] == [0, 1]


def test_a_prompt_the_watermark_never_admits_is_rejected_on_arrival():
    """A request that cannot fit in total minus watermark blocks is refused at once
    (vLLM v0: ``AllocStatus.NEVER``, the request is ignored)."""
    _, b = make([95 * 16 - 1, 95 * 16 - 8], [1, 16], blocks=100, watermark=0.05)
    assert b.max_model_len == 95 * 16
    assert b.enqueue(0, 0.0) is None
    rejected = b.enqueue(1, 0.0)
    assert rejected is not None and rejected.status == REJECTED


def test_preemption_uses_v0s_one_free_block_per_decode_check():
    """bs=4, 6 blocks, two 8-token prompts. Decode 1 takes the last 2 blocks. At decode 2
    neither request needs a block, but v0 wants one free block per running request: the
    newest (1) is preempted, then recomputed with its 2 generated tokens (v1 would not
    preempt here)."""
    table, b = make([8, 8], [6, 6], blocks=6, bs=4)
    b.enqueue(0, 0.0)
    b.enqueue(1, 0.0)
    assert step(b, 0.0)[0] == ([(0, 8, 0), (1, 8, 0)], 0)
    assert step(b, 1.0)[0] == ([], 2) and b.kv.free_blocks == 0
    assert step(b, 2.0)[0] == ([], 1)
    assert b.preemptions == 1 and list(b.waiting) == [1]
    assert b.kv.free_blocks == 3
    assert step(b, 3.0)[0] == ([(1, 10, 0)], 0)          # prompt 8 + 2 generated
    for t in range(4, 20):
        step(b, float(t))
    assert list(table.status) == [COMPLETED, COMPLETED]
    assert table.preemptions[1] >= 1 and table.recomputed_tokens[1] >= 10
    assert list(table.generated_tokens) == [6, 6]

    v1_table = RequestTable(unique_prompt_workload(np.zeros(2), np.array([8, 8]),
                                                   np.array([6, 6])))
    v1 = ContinuousBatcher(KVCache(6, 4), v1_table, BatcherConfig(8, 4096, False, None))
    v1.enqueue(0, 0.0)
    v1.enqueue(1, 0.0)
    for t in range(3):
        v1.apply(v1.plan(float(t)), 1, float(t))
    assert v1.preemptions == 0


def test_a_lone_request_preempted_is_readmitted_in_the_same_plan():
    """When v0's check preempts every running request, the same plan prefills the queue head
    (v0's next step would) instead of leaving the node idle. bs=4, 3 blocks, prompt 8, 4
    tokens: decode 1 takes the last block; at decode 2 no block is free, so the request
    preempts itself and is recomputed (10 tokens), and again at its next decode (11)."""
    table, b = make([8], [4], blocks=3, bs=4)
    b.enqueue(0, 0.0)
    shapes = []
    for t in range(10):
        shape, _ = step(b, float(t))
        if shape is None:
            break
        shapes.append(shape)
    assert shapes == [([(0, 8, 0)], 0), ([], 1), ([(0, 10, 0)], 0), ([(0, 11, 0)], 0)]
    assert table.status[0] == COMPLETED and table.generated_tokens[0] == 4
    assert table.preemptions[0] == 2 and table.recomputed_tokens[0] == 21


def test_a_request_cancelled_and_sent_back_finishes_once():
    """Cancelled right after its prefill and queued here again (a retry), a request rejoins
    the decode set with the finish step of its old entry; it must finish once, in time."""
    _, b = make([10, 10], [4, 4])
    b.enqueue(0, 0.0)
    b.enqueue(1, 0.0)
    step(b, 0.0)
    assert b.cancel(0, 0.5) is not None
    b.enqueue(0, 0.6)
    assert step(b, 1.0)[0] == ([(0, 10, 0)], 0)
    done = [sorted(step(b, float(t))[1]) for t in range(2, 6)]
    assert done == [[], [], [0, 1], []]     # 1 stalled for 0's prefill: both end together
    assert b.is_idle()


def pool_workload(n: int = 40) -> Workload:
    """Requests with shared prefixes (keys 1 and 2, key 2 extending key 1) and own tails
    (as in tests/test_batcher.py)."""
    rng = np.random.default_rng(11)
    seg_ptr, seg_key, seg_len, prompt = [0], [], [], []
    for i in range(n):
        own = int(rng.integers(1, 30))
        segs = {0: [(-1, own)], 1: [(1, 12), (-1, own)], 2: [(1, 12), (2, 9), (-1, own)],
                3: [(1, 12), (2, 9)]}[i % 4]
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


class V0Machine(RuleBasedStateMachine):
    """Random arrivals, steps, decode runs, cancellations and retries keep the v0 batcher
    within its limits and consistent; every accepted request finishes once, with its tokens.
    A small cache with shared prefixes, a watermark and padding make every rule fire."""

    def __init__(self) -> None:
        super().__init__()
        self.table = RequestTable(pool_workload())
        self.config = v0_config(seqs=4, budget=64, watermark=0.05, pad=True, max_paddings=16)
        self.b = V0Batcher(KVCache(24, 4), self.table, self.config)
        self.next_rid, self.now, self.live, self.done = 0, 0.0, set(), []

    @precondition(lambda self: self.next_rid < 40)
    @rule()
    def arrive(self) -> None:
        if self.b.enqueue(self.next_rid, self.now) is None:
            self.live.add(self.next_rid)
        self.next_rid += 1

    @rule(jump=st.integers(1, 30))
    def iterate(self, jump: int) -> None:
        plan = self.b.plan(self.now)
        if plan is None:
            assert self.b.is_idle(), "work left but nothing planned"
            return
        assert not (plan.chunks and plan.decode_batch), "a v0 step is prefill or decode"
        assert plan.prefill_tokens <= self.config.max_num_batched_tokens
        k = 1 if plan.chunks else min(jump, self.b.decode_run_limit())
        self.now += 1.0
        self._record(self.b.apply(plan, k, self.now))

    @precondition(lambda self: self.live)
    @rule(pick=st.integers(0, 39), again=st.booleans())
    def cancel(self, pick: int, again: bool) -> None:
        rid = sorted(self.live)[pick % len(self.live)]
        outcome = self.b.cancel(rid, self.now)
        assert outcome is not None
        self.live.discard(rid)
        if again and self.b.enqueue(rid, self.now) is None:   # a retry, back here
            self.live.add(rid)

    def _record(self, outcomes) -> None:
        for outcome in outcomes:
            self.table.record(outcome)
            self.done.append(outcome.request_id)
            self.live.discard(outcome.request_id)

    @invariant()
    def consistent(self) -> None:
        self.b.check_invariants()

    def teardown(self) -> None:
        for _ in range(5000):
            plan = self.b.plan(self.now)
            if plan is None:
                break
            self.now += 1.0
            self._record(self.b.apply(plan, 1, self.now))
        assert not self.live and self.b.is_idle() and self.b.kv.used_blocks == 0
        assert len(self.done) == len(set(self.done)), "a request finished twice"
        assert all(self.table.generated_tokens[r] == self.table.output_tokens[r]
                   for r in self.done)


TestV0Machine = V0Machine.TestCase


# -- whole simulations ----------------------------------------------------------------------

def linear_cost(**params):
    return LINEAR(LINEAR.Params(**params))


def run_nodes(cls, config, arrivals, prompts, outputs, *, kv_tokens=100_000, nodes=1,
              fast_forward=True, cost=None, seed=0) -> tuple[RequestTable, list]:
    """Run a workload through ``nodes`` nodes of one batcher class under round robin."""
    cost = cost or linear_cost(step_s=0.01, prefill_token_s=2e-5, decode_seq_s=2e-4,
                               ctx_token_s=1e-7)
    wl = unique_prompt_workload(np.asarray(arrivals, float), np.asarray(prompts),
                                np.asarray(outputs))
    env = simpy.Environment()
    table = RequestTable(wl)
    spec = NodeSpec("g", "linear", cost, kv_tokens // 16, 16, True, config, batcher_cls=cls)
    cluster = Cluster(env, [spec] * nodes, table, Recorder(nodes, (0, 1e9)), fast_forward)
    rr = strategies.get("round_robin")
    router = Router(env, cluster, table, [rr(rr.Params(), np.random.default_rng(seed))], 0.0)
    router.start()
    env.run(until=router.drained)
    return table, [node.batcher for node in cluster.nodes]


HAND = {"step_s": 0.01, "prefill_token_s": 0.001}   # prefill 10 ms + 1 ms/token; decode 10 ms


def test_hand_computed_times_v0_stalls_the_decode_that_v1_mixes_with_the_prefill():
    """A: prompt 100, 5 tokens, at 0. B: prompt 200, 2 tokens, at 0.115 (during A's decode).

    v0: A prefill [0, 0.11]; A decodes [0.11, 0.12]; B prefill-only [0.12, 0.33] (A stalls);
    A+B decode [0.33, 0.34] (B done); A [0.34, 0.35], [0.35, 0.36] done.
    v1: the step at 0.12 mixes B's prefill with A's decode, so A is done one step earlier.
    """
    args = ([0.0, 0.115], [100, 200], [5, 2])
    cfg = v0_config(budget=4096)
    for ff in (True, False):
        t0, _ = run_nodes(V0Batcher, cfg, *args, cost=linear_cost(**HAND), fast_forward=ff)
        assert t0.first_token_s == pytest.approx([0.11, 0.33])
        assert t0.finish_s == pytest.approx([0.36, 0.34])
    t1, _ = run_nodes(ContinuousBatcher, BatcherConfig(8, 4096, True, None), *args,
                      cost=linear_cost(**HAND))
    assert t1.first_token_s == pytest.approx([0.11, 0.33])
    assert t1.finish_s == pytest.approx([0.35, 0.34])


def random_load(n=500, seed=3, rate=14.0):
    rng = np.random.default_rng(seed)
    return (np.cumsum(rng.exponential(1 / rate, n)), rng.integers(20, 600, n),
            rng.integers(1, 250, n))


def test_fast_forward_equals_stepping_with_preemption_and_watermark():
    """Closed-form decode runs give the per-request times, preemptions and tokens of stepping
    every step, with a small KV cache that forces preemptions."""
    cfg = v0_config(seqs=32, budget=2048, watermark=0.01)
    runs = [run_nodes(V0Batcher, cfg, *random_load(), kv_tokens=4000, nodes=2,
                      fast_forward=ff) for ff in (True, False)]
    (a, ba), (b, _) = runs
    for col in ("node", "status", "preemptions", "generated_tokens", "recomputed_tokens"):
        assert getattr(a, col) == getattr(b, col), col
    for col in ("first_scheduled_s", "first_token_s", "finish_s"):
        np.testing.assert_allclose(getattr(a, col), getattr(b, col), rtol=1e-9, atol=1e-9)
    assert sum(x.preemptions for x in ba) > 0, "the case must exercise preemption"
    assert all(s == COMPLETED for s in a.status)


def test_tokens_are_conserved_and_invariants_hold_under_pressure():
    """Every request completes with exactly its output tokens; the bookkeeping stays
    consistent after every step (checked at the end and while stepping a node by hand)."""
    arrivals, prompts, outputs = random_load(n=300, seed=5, rate=30.0)
    table, bs = run_nodes(V0Batcher, v0_config(seqs=16, budget=1024, watermark=0.02),
                          arrivals, prompts, outputs, kv_tokens=3000)
    assert all(s == COMPLETED for s in table.status)
    assert list(table.generated_tokens) == list(outputs)
    assert bs[0].is_idle() and bs[0].kv.used_blocks == 0
    bs[0].check_invariants()
    assert sum(table.preemptions) > 0


def test_v0_decodes_slower_per_token_than_v1_under_the_same_load():
    """Decodes stall behind prefill-only steps: TPOT is higher in v0 than in v1 (chunked
    prefill, decodes and prefill chunks in one step), while v0's prefills start sooner."""
    arrivals, prompts, outputs = random_load(n=400, seed=11, rate=12.0)
    outputs = np.maximum(outputs, 2)
    t0, _ = run_nodes(V0Batcher, v0_config(seqs=64, budget=2048), arrivals, prompts, outputs)
    t1, _ = run_nodes(ContinuousBatcher, BatcherConfig(64, 2048, True, None), arrivals,
                      prompts, outputs)

    def tpot(t):
        return np.mean((np.array(t.finish_s) - np.array(t.first_token_s))
                       / (np.array(t.output_tokens) - 1))

    def ttft(t):
        return np.mean(np.array(t.first_token_s) - np.array(t.arrival_s))

    assert tpot(t0) > 1.1 * tpot(t1)        # about 1.2 here
    assert ttft(t0) < ttft(t1)


def test_determinism():
    """The same inputs give identical records."""
    load = random_load(n=200, seed=2, rate=20.0)
    a, _ = run_nodes(V0Batcher, v0_config(seqs=16, budget=1024), *load, kv_tokens=3000)
    b, _ = run_nodes(V0Batcher, v0_config(seqs=16, budget=1024), *load, kv_tokens=3000)
    for col in ("node", "first_token_s", "finish_s", "preemptions"):
        assert getattr(a, col) == getattr(b, col)


# -- scenarios ------------------------------------------------------------------------------

def v0_scenario() -> dict:
    raw = scenario_dict(duration_s=30.0)
    group = raw["cluster"]["node_groups"][0]
    group["kv_capacity_tokens"] = 6000
    group["batcher"] = {"name": "vllm_v0", "params": {"max_num_seqs": 24,
                                                      "max_num_batched_tokens": 2048}}
    raw["workload"]["arrivals"]["params"]["rate_rps"] = 14.0
    raw["workload"]["prefixes"] = {"name": "shared_prefix", "params": {
        "groups": 4, "zipf_s": 1.0, "prefix_tokens": 256, "fraction": 0.6}}
    raw["router"]["strategies"] = [{"name": "round_robin"}, {"name": "least_loaded"},
                                   {"name": "retry", "params": {"max_s": 0.3}}]
    return raw


def test_scenario_fast_forward_equals_stepping_with_prefix_caching(tmp_path):
    """Through the scenario path (``batcher: {name: vllm_v0}``), with shared prefixes and
    retries (withdrawn attempts cut decode runs and come back to the nodes)."""
    path = write_scenario(tmp_path, v0_scenario())
    ff = app.load(path, ["cluster.fast_forward=true"])
    st = app.load(path, ["cluster.fast_forward=false"])
    workload = workload_for(ff, 0)
    assert ff.node_specs[0].batcher_cls is V0Batcher
    for c_ff, c_st in zip(ff.strategies, st.strategies, strict=True):
        run_ff, run_st = simulate(ff, c_ff, 0, workload), simulate(st, c_st, 0, workload)
        if c_ff.label != "retry":   # (retry timers are events too)
            assert run_ff.events < run_st.events / 2, "fast-forward should save most events"
        a, b = run_ff.requests, run_st.requests
        for col in ("node", "status", "preemptions", "cached_tokens", "generated_tokens"):
            assert np.array_equal(a[col], b[col]), col
        for col in ("first_token_s", "finish_s"):
            np.testing.assert_allclose(a[col], b[col], rtol=1e-9, atol=1e-9)
        assert a["cached_tokens"].sum() > 0


def test_the_registry_knows_vllm_v0_and_defaults_the_budget_like_v0():
    """``max_num_batched_tokens`` defaults to max(max_model_len, 2048), as in vLLM v0."""
    cls = batchers.get("vllm_v0")
    assert cls is V0Batcher
    params = cls.Params()
    assert cls.make_config(params, 8192).max_num_batched_tokens == 8192
    assert cls.make_config(params, 1024).max_num_batched_tokens == 2048
    assert cls.make_config(params, None).max_num_batched_tokens == 2048
    assert cls.make_config(params, None).chunked_prefill is False


def test_the_documented_v0_snippet_validates(tmp_path):
    """The ``vllm_v0`` example in docs/model.md §2 loads as a scenario's cluster."""
    doc = (REPO / "docs" / "model.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(\s*cluster:.*?)```", doc, re.S)
    assert block is not None
    cluster = yaml.safe_load(textwrap.dedent(block.group(1)))["cluster"]
    raw = scenario_dict(cluster=cluster)
    resolved = app.load(write_scenario(tmp_path, raw))
    spec = resolved.node_specs[0]
    assert spec.batcher_cls is V0Batcher
    assert spec.batcher == V0BatcherConfig(256, 8192, False, 8192, 0.01, False, 256)
