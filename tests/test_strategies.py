"""Routing strategies: the contract every registered strategy meets, and each one's rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sim.policy  # noqa: F401
from sim.errors import UnknownNameError
from sim.policy.base import Strategy, strategies
from sim.registry import Registry
from sim.testing import REQUEST, check_choice, make_view


def build(name: str, seed: int = 0, **params) -> Strategy:
    cls = strategies.get(name)
    return cls(cls.Params(**params), np.random.default_rng(seed))


views = st.integers(1, 6).flatmap(lambda n: st.builds(
    make_view,
    inflight=st.lists(st.integers(0, 20), min_size=n, max_size=n),
    tokens=st.lists(st.integers(0, 5000), min_size=n, max_size=n),
    queued=st.lists(st.integers(0, 20), min_size=n, max_size=n),
    running=st.lists(st.integers(0, 8), min_size=n, max_size=n),
    kv=st.lists(st.integers(0, 100), min_size=n, max_size=n),
    accepting=st.lists(st.booleans(), min_size=n, max_size=n).filter(any)))


@pytest.mark.parametrize("name", strategies.names())
@settings(max_examples=40)
@given(view=views, seed=st.integers(0, 2**32 - 1))
def test_contract_every_strategy_returns_an_accepting_node_deterministically(name, view, seed):
    """Any registered strategy: default params build, it returns an accepting node id, and
    the same seed and history give the same choices (``sim.testing.check_choice``)."""
    check_choice(strategies.get(name), view, seed)


@pytest.mark.parametrize("name", strategies.names())
def test_contract_every_strategy_is_documented(name):
    """Each registered strategy explains itself in its docstring."""
    assert (strategies.get(name).__doc__ or "").strip()


def test_round_robin_cycles_and_skips_non_accepting_nodes():
    """Round robin visits nodes in order and skips those not accepting."""
    s = build("round_robin")
    view = make_view(inflight=(0, 0, 0, 0), accepting=(True, False, True, True))
    assert [s.choose(REQUEST, view) for _ in range(6)] == [0, 2, 3, 0, 2, 3]


def test_random_is_uniform_over_accepting_nodes():
    """Random spreads evenly over accepting nodes and never picks others."""
    s = build("random", seed=3)
    view = make_view(inflight=(0, 0, 0, 0), accepting=(True, True, False, True))
    counts = np.bincount([s.choose(REQUEST, view) for _ in range(6000)], minlength=4)
    assert counts[2] == 0
    assert np.all(np.abs(counts[[0, 1, 3]] - 2000) < 4 * np.sqrt(2000))


def test_least_loaded_picks_fewest_in_flight_with_random_or_lowest_ties():
    """least_loaded: fewest router-local in-flight; ties random (default) or lowest id."""
    view = make_view(inflight=(3, 1, 1, 4))
    assert build("least_loaded", tie_break="lowest_id").choose(REQUEST, view) == 1
    picks = {build("least_loaded", seed=s).choose(REQUEST, view) for s in range(30)}
    assert picks == {1, 2}


def test_token_aware_uses_outstanding_tokens_not_counts():
    """token_aware prefers fewer outstanding tokens even with more requests."""
    view = make_view(inflight=(1, 5), tokens=(9000, 800))
    assert build("token_aware").choose(REQUEST, view) == 1


def test_jsq_reads_reported_queue_plus_running():
    """jsq: shortest reported waiting + running queue (stale telemetry, not router counts)."""
    view = make_view(inflight=(0, 9, 9), queued=(5, 0, 2), running=(4, 3, 0))
    assert build("jsq").choose(REQUEST, view) == 2


def test_power_of_two_picks_the_lighter_of_two_samples():
    """power_of_two never picks the most loaded node of three (it loses every comparison)."""
    s = build("power_of_two", seed=1)
    view = make_view(inflight=(1, 7, 3))
    picks = [s.choose(REQUEST, view) for _ in range(300)]
    assert 1 not in picks
    assert {0, 2} <= set(picks)
    kv_view = make_view(inflight=(0, 0), kv=(90, 10))
    assert build("power_of_two", load="kv").choose(REQUEST, kv_view) == 1


def test_registry_refuses_duplicates_and_suggests_close_names():
    """Registering a name twice raises; an unknown name suggests the closest ones."""
    reg: Registry[type] = Registry("strategy")
    reg.register("alpha")(type("A", (), {}))
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha")(type("B", (), {}))
    with pytest.raises(UnknownNameError, match="did you mean 'power_of_two'"):
        strategies.get("power_of_too")


def test_bad_strategy_params_are_rejected():
    """Unknown or invalid parameters fail validation."""
    with pytest.raises(ValueError):
        strategies.get("power_of_two").Params(load="latency")
    with pytest.raises(ValueError):
        strategies.get("round_robin").Params(weights=[1, 2])


def test_argmin_random_tie_fast_path_makes_the_same_choices() -> None:
    """With every node a candidate, argmin_random_tie takes a C-speed path (issue 18); it must
    pick what the general path picks, draw for draw, ties included."""
    import random

    from sim.policy.base import argmin_random_tie
    from sim.rng import UniformDraws

    def general(values, candidates, draws):  # the definition, written out
        best = min(values[i] for i in candidates)
        ties = [i for i in candidates if values[i] == best]
        return ties[0] if len(ties) == 1 else ties[draws.index(len(ties))]

    pick = random.Random(0)
    for trial in range(500):
        n = pick.randint(1, 40)
        values = [pick.choice([0, 1, 2, 0.5, 3]) for _ in range(n)]
        seq = tuple(values) if trial % 2 else values
        fast = UniformDraws(np.random.default_rng(trial))
        slow = UniformDraws(np.random.default_rng(trial))
        for _ in range(5):
            assert argmin_random_tie(seq, list(range(n)), fast) == general(seq, list(range(n)),
                                                                            slow)
