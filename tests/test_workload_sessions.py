"""Multi-turn sessions: prompt structure, path-unique keys, request rate with its edge effect."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from sim.errors import ScenarioError
from sim.workload.base import Workload
from sim.workload.spec import WorkloadSpec, build_workload, check_workload_spec

GROUPS = 4
TURNS = {"name": "uniform", "params": {"low_tokens": 1, "high_tokens": 6}}


def session_spec(rate_rps: float = 1.0, think_time_s: float = 20.0,
                 with_prefixes: bool = True) -> WorkloadSpec:
    """A session workload with lognormal messages and outputs."""
    raw: dict[str, object] = {
        "arrivals": {"name": "poisson", "params": {"rate_rps": rate_rps}},
        "prompt_tokens": {"name": "lognormal",
                          "params": {"median_tokens": 60.0, "sigma": 0.7, "max_tokens": 900}},
        "output_tokens": {"name": "uniform", "params": {"low_tokens": 1, "high_tokens": 200}},
        "sessions": {"name": "multi_turn",
                     "params": {"turns": TURNS, "think_time_s": think_time_s}},
    }
    if with_prefixes:
        raw["prefixes"] = {"name": "shared_prefix", "params": {
            "groups": GROUPS, "zipf_s": 1.0, "prefix_tokens": 32, "fraction": 0.5}}
    return WorkloadSpec.model_validate(raw)


def segs(w: Workload, i: int) -> list[tuple[int, int]]:
    """The (key, length) segments of request i."""
    lo, hi = w.seg_ptr[i], w.seg_ptr[i + 1]
    return list(zip(w.seg_key[lo:hi].tolist(), w.seg_len[lo:hi].tolist(), strict=True))


@pytest.fixture(scope="module")
def workload() -> Workload:
    """A small session workload with shared prefixes."""
    return build_workload(session_spec(), 600.0, seed=3)


def test_next_turn_extends_prompt_with_output_and_message(workload: Workload) -> None:
    """Turn k+1 = turn k's segments + its output segment + one new message."""
    w = workload
    for sid in np.unique(w.session_id):
        turns = np.flatnonzero(w.session_id == sid)
        for a, b in itertools.pairwise(turns):
            before, after = segs(w, a), segs(w, b)
            assert before == after[: len(before)]
            assert (int(w.output_key[a]), int(w.output_tokens[a])) == after[len(before)]
            assert len(before) + 2 == len(after)
            assert w.prompt_tokens[a] + w.output_tokens[a] + after[-1][1] == w.prompt_tokens[b]
        assert w.output_key[turns[-1]] == -1 and segs(w, turns[-1])[-1][0] == -1
        assert bool(np.all(w.output_key[turns[:-1]] >= 0))


def test_first_turn_is_prefix_plus_message(workload: Workload) -> None:
    """A session's first turn is its group prefix (if any) then its message."""
    w = workload
    first = np.unique(w.session_id, return_index=True)[1]
    for i in first:
        group = int(w.prefix_group[i])
        expected_count = 2 if group >= 0 else 1
        assert expected_count == len(segs(w, i))
        if group >= 0:
            assert (group, 32) == segs(w, i)[0]
        assert bool(np.all(w.prefix_group[w.session_id == w.session_id[i]] == group))


def test_keys_are_path_unique(workload: Workload) -> None:
    """Every key always comes with the same tokens before it and the same length."""
    w = workload
    seen: dict[int, list[tuple[int, int]]] = {}
    for i in range(len(w)):
        path = segs(w, i) + ([(int(w.output_key[i]), int(w.output_tokens[i]))]
                             if w.output_key[i] >= 0 else [])
        for end, (key, _) in enumerate(path):
            if key >= 0:
                assert seen.setdefault(key, path[: end + 1]) == path[: end + 1]
    group_keys = {k for k in seen if k < GROUPS}
    assert all(seen[k] == [(k, 32)] for k in group_keys)
    assert len(seen) > 100


def test_turns_are_ordered_and_inside_the_window(workload: Workload) -> None:
    """Each session's turns arrive in order, at most 6 of them, all before duration_s."""
    w = workload
    assert float(w.arrival_s.max()) < 600.0
    counts = np.bincount(w.session_id)
    assert int(counts.min()) >= 1 and int(counts.max()) <= 6
    assert int(w.session_id.min()) == 0
    w.validate()


def test_request_rate_with_edge_effect() -> None:
    """N(0, T) matches session_rate * (T E[K] - think E[K(K-1)] / 2) within 4 SE."""
    rate, think, duration = 10.0, 80.0, 4_000.0
    w = build_workload(session_spec(rate, think, with_prefixes=False), duration, seed=4)
    mean_k, second_k = 3.5, 91 / 6
    assert pytest.approx(rate * mean_k) == w.expected_rate_rps
    expected = rate * (duration * mean_k - think * (second_k - mean_k) / 2)
    se = math.sqrt(rate * duration * second_k)  # compound Poisson
    assert abs(len(w) - expected) < 4 * se
    assert abs(len(w) - rate * duration * mean_k) > 2 * se  # the edge effect is visible


def test_bad_turns_spec_names_the_nested_path() -> None:
    """An invalid turn-count distribution is reported under sessions.params.turns."""
    raw = session_spec().model_dump()
    raw["sessions"]["params"]["turns"] = {"name": "uniform",
                                          "params": {"low_tokens": 3, "high_tokens": 2}}
    with pytest.raises(ScenarioError,
                       match=r"^workload\.sessions\.params\.turns\.params\.high_tokens:"):
        check_workload_spec(WorkloadSpec.model_validate(raw))
    raw["sessions"]["params"]["turns"] = {"name": "unifrom"}
    with pytest.raises(ScenarioError, match="did you mean 'uniform'"):
        check_workload_spec(WorkloadSpec.model_validate(raw))
