"""The batcher's structure (docs/model.md §2, "The batcher's code"): named per-request state,
batch policies that plug in through public methods and hooks, a policy written on the hooks."""

from __future__ import annotations

import inspect
import math

import numpy as np

from sim.model.batcher import BatcherConfig, ContinuousBatcher, batchers
from sim.model.kv_cache import KVCache
from sim.model.request_state import RequestState
from sim.model.requests import COMPLETED, RequestTable
from sim.workload.base import unique_prompt_workload


def make(cls, prompts, outputs, *, seqs=8, budget=512):
    n = len(prompts)
    wl = unique_prompt_workload(np.zeros(n), np.array(prompts), np.array(outputs), None)
    table = RequestTable(wl)
    return table, cls(KVCache(1000, 16), table, BatcherConfig(seqs, budget, True, None))


def run(b: ContinuousBatcher, n: int) -> dict[int, float]:
    """Step until every request finished; return each request's first-scheduled time."""
    first: dict[int, float] = {}
    t = 0.0
    while len(first) < n:
        t += 1.0
        plan = b.plan(t)
        assert plan is not None
        for outcome in b.apply(plan, 1, t):
            assert outcome.status == COMPLETED
            first[outcome.request_id] = outcome.first_scheduled_s
        b.check_invariants()
    return first


def test_the_per_request_record_is_slotted():
    st = RequestState(10, 0.0)
    assert not hasattr(st, "__dict__")
    assert st.seq == 10 and st.computed is None and math.isnan(st.first_scheduled_s)


def test_batch_policies_override_no_private_method_of_the_continuous_batcher():
    base = {name for cls in ContinuousBatcher.__mro__ for name in vars(cls)
            if name.startswith("_") and not name.startswith("__")}
    for name in batchers.names():
        cls = batchers.get(name)
        for klass in cls.__mro__:
            if klass in ContinuousBatcher.__mro__:
                break
            overridden = {n for n in vars(klass) if n in base}
            assert not overridden, (name, klass.__name__, overridden)


def test_engine_limits_come_from_make_config_and_config_is_only_the_instance_attribute():
    assert "config" not in vars(ContinuousBatcher)
    for name in batchers.names():
        cls = batchers.get(name)
        assert inspect.ismethod(cls.make_config)
        config = cls.make_config(cls.Params(), 4096)
        assert isinstance(config, BatcherConfig)
        b = cls(KVCache(1000, 16), RequestTable(unique_prompt_workload(
            np.zeros(1), np.array([8]), np.array([2]), None)), config)
        assert b.config is config


class OneAtATime(ContinuousBatcher):
    """A policy on the hooks alone: one request runs at a time (admission window of one,
    reopened when the running request leaves)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.admit_window = 1
        self.left: list[int] = []

    def on_leave(self, rid: int, waiting: bool) -> None:
        self.left.append(rid)
        if not waiting:
            self.admit_window = 1


def test_a_policy_written_on_the_hooks_serialises_the_requests():
    _, b = make(OneAtATime, [40, 40, 40], [3, 3, 3])
    for rid in range(3):
        b.enqueue(rid, 0.0)
    first = run(b, 3)
    assert b.left == [0, 1, 2]
    # each starts only after the previous one finished (prefill 1 step + 2 decode steps)
    assert first == {0: 1.0, 1: 4.0, 2: 7.0}
    _, c = make(ContinuousBatcher, [40, 40, 40], [3, 3, 3])
    for rid in range(3):
        c.enqueue(rid, 0.0)
    assert run(c, 3) == {0: 1.0, 1: 1.0, 2: 1.0}
