"""WorkloadSpec: validation with field paths, seeded determinism and independent streams."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from sim.errors import ScenarioError
from sim.workload import Workload, WorkloadSpec, build_workload
from sim.workload.spec import check_workload_spec

ARRIVALS = {
    "poisson": {"rate_rps": 20.0},
    "gamma": {"rate_rps": 20.0, "cv": 3.0},
    "mmpp2": {"low_rps": 5.0, "high_rps": 60.0, "mean_low_s": 20.0, "mean_high_s": 5.0},
    "piecewise": {"rates_rps": [5.0, 40.0, 0.0], "durations_s": [30.0, 10.0, 20.0]},
}
PREFIXES = {"name": "shared_prefix",
            "params": {"groups": 8, "zipf_s": 1.2, "prefix_tokens": 256, "fraction": 0.7}}
SESSIONS = {"name": "multi_turn", "params": {
    "turns": {"name": "geometric", "params": {"mean_tokens": 3.0}}, "think_time_s": 15.0}}


def raw_spec(**changes: Any) -> dict[str, Any]:
    """A plain workload dict, with top-level keys replaced by ``changes``."""
    raw: dict[str, Any] = {
        "arrivals": {"name": "poisson", "params": {"rate_rps": 20.0}},
        "prompt_tokens": {"name": "lognormal",
                          "params": {"median_tokens": 500.0, "sigma": 0.9, "max_tokens": 4096}},
        "output_tokens": {"name": "lognormal",
                          "params": {"median_tokens": 120.0, "sigma": 0.8, "max_tokens": 1024}},
    }
    raw.update(changes)
    return raw


def build(seed: int = 1, duration_s: float = 300.0, **changes: Any) -> Workload:
    """Build a workload from ``raw_spec(**changes)``."""
    return build_workload(WorkloadSpec.model_validate(raw_spec(**changes)), duration_s, seed)


@pytest.mark.parametrize(("arrival", "prefixes", "sessions"),
                         list(itertools.product(sorted(ARRIVALS), [None, PREFIXES],
                                                [None, SESSIONS])))
def test_every_combination_validates(arrival: str, prefixes: Any, sessions: Any) -> None:
    """Every arrival process, with and without prefixes and sessions, gives a valid workload."""
    w = build(arrivals={"name": arrival, "params": ARRIVALS[arrival]}, prefixes=prefixes,
              sessions=sessions)
    w.validate()
    assert len(w) > 100
    assert bool(np.all(w.max_output_tokens == 1024))
    assert w.source.startswith(f"synthetic(arrivals={arrival}")
    assert (sessions is not None) == bool(np.all(w.session_id >= 0))
    assert (prefixes is not None) == bool(np.any(w.prefix_group >= 0))


def test_same_seed_same_fingerprint() -> None:
    """The same seed gives an identical stream; another seed a different one."""
    kwargs = {"prefixes": PREFIXES, "sessions": SESSIONS}
    assert build(seed=5, **kwargs).fingerprint() == build(seed=5, **kwargs).fingerprint()
    assert build(seed=5, **kwargs).fingerprint() != build(seed=6, **kwargs).fingerprint()


def test_changing_one_component_leaves_the_others_draws_alone() -> None:
    """Output, prompt and prefix changes leave the other columns' draws unchanged."""
    base = build(prefixes=PREFIXES)
    other_output = build(prefixes=PREFIXES, output_tokens={"name": "fixed",
                                                           "params": {"tokens": 9}})
    other_prompt = build(prefixes=PREFIXES, prompt_tokens={"name": "fixed",
                                                           "params": {"tokens": 9}})
    no_prefix = build()
    assert np.array_equal(base.arrival_s, other_output.arrival_s)
    assert np.array_equal(base.prompt_tokens, other_output.prompt_tokens)
    assert np.array_equal(base.output_tokens, other_prompt.output_tokens)
    assert np.array_equal(base.prefix_group, other_prompt.prefix_group)
    assert np.array_equal(base.output_tokens, no_prefix.output_tokens)
    assert np.array_equal(base.prompt_tokens - 256 * (base.prefix_group >= 0),
                          no_prefix.prompt_tokens)


def test_session_arrivals_do_not_depend_on_lengths() -> None:
    """With sessions, changing the output distribution keeps every arrival time."""
    base = build(sessions=SESSIONS)
    other = build(sessions=SESSIONS, output_tokens={"name": "fixed", "params": {"tokens": 9}})
    assert np.array_equal(base.arrival_s, other.arrival_s)
    assert np.array_equal(base.session_id, other.session_id)


def test_sessions_sort_stably_with_segments() -> None:
    """Interleaved sessions come out in arrival order with each request's own segments."""
    w = build(duration_s=200.0, sessions=SESSIONS, prefixes=PREFIXES)
    assert bool(np.all(np.diff(w.arrival_s) >= 0))
    assert bool(np.any(np.diff(w.session_id) < 0))  # sessions really interleave
    sums = np.add.reduceat(w.seg_len, w.seg_ptr[:-1])
    assert np.array_equal(w.prompt_tokens, sums)
    first_of_session = np.unique(w.session_id, return_index=True)[1]
    assert bool(np.all(np.diff(w.seg_ptr)[first_of_session] <= 2))


def test_expected_rate_and_empty_window() -> None:
    """expected_rate_rps is the analytic rate; duration 0 gives a valid empty workload."""
    assert build().expected_rate_rps == 20.0
    assert pytest.approx(60.0) == build(sessions=SESSIONS).expected_rate_rps
    empty = build(duration_s=0.0, sessions=SESSIONS, prefixes=PREFIXES)
    empty.validate()
    assert (len(empty), empty.seg_ptr.tolist()) == (0, [0])


def test_unbounded_output_needs_a_cap_and_is_cut_to_it(caplog: pytest.LogCaptureFixture) -> None:
    """Geometric outputs need max_output_tokens; outputs above it are cut, and it says so."""
    geometric = {"name": "geometric", "params": {"mean_tokens": 50.0}}
    with pytest.raises(ScenarioError, match=r"^workload\.max_output_tokens: required"):
        check_workload_spec(WorkloadSpec.model_validate(raw_spec(output_tokens=geometric)))
    with caplog.at_level(logging.WARNING, logger="sim.workload.spec"):
        w = build(output_tokens=geometric, max_output_tokens=60)
    cut = int(np.count_nonzero(w.output_tokens == 60))
    assert cut > 0 and int(w.output_tokens.max()) == 60
    assert "outputs cut to max_output_tokens=60" in w.source
    assert "cut to max_output_tokens=60" in caplog.text


def test_cap_above_the_bound_is_kept() -> None:
    """An explicit cap at or above the output upper bound is what the router sees."""
    assert bool(np.all(build(max_output_tokens=2048).max_output_tokens == 2048))


@pytest.mark.parametrize(("changes", "pattern"), [
    ({"arrivals": {"name": "poisson", "params": {"rate_rps": -3.0}}},
     r"^workload\.arrivals\.params\.rate_rps: Input should be greater than 0"),
    ({"arrivals": {"name": "poison", "params": {"rate_rps": 3.0}}},
     r"^workload\.arrivals\.name: unknown arrivals 'poison'; did you mean 'poisson'\?"),
    ({"prompt_tokens": {"name": "lognormal",
                        "params": {"median_tokens": 9.0, "sigma": 0, "max_tokens": 9}}},
     r"^workload\.prompt_tokens\.params\.sigma:"),
    ({"output_tokens": {"name": "lognormal", "params": {"median_tokens": 9.0, "sigma": 1.0}}},
     r"^workload\.output_tokens\.params\.max_tokens: Field required"),
    ({"max_output_tokens": 1000},
     r"^workload\.max_output_tokens: 1000 is below the upper bound 1024"),
    ({"prefixes": {"name": "shared_prefix", "params": {"groups": 2, "prefix_tokens": 0}}},
     r"^workload\.prefixes\.params\.prefix_tokens:"),
    ({"sessions": {"name": "multi_turn", "params": {"turns": {"name": "fixed", "params": {
        "tokens": 2}}, "think_time_s": 0.0}}},
     r"^workload\.sessions\.params\.think_time_s:"),
])
def test_bad_spec_names_the_path(changes: dict[str, Any], pattern: str) -> None:
    """check_workload_spec and build_workload raise ScenarioError naming the field."""
    spec = WorkloadSpec.model_validate(raw_spec(**changes))
    with pytest.raises(ScenarioError, match=pattern):
        check_workload_spec(spec)
    with pytest.raises(ScenarioError, match=pattern):
        build_workload(spec, 10.0, seed=1)


def test_spec_rejects_unknown_keys() -> None:
    """The workload block itself forbids unknown keys."""
    with pytest.raises(ValidationError, match="promt_tokens"):
        WorkloadSpec.model_validate(raw_spec(promt_tokens={"name": "fixed"}))


def test_check_uses_the_given_path() -> None:
    """The path prefix is the caller's (e.g. a scenario nesting the workload elsewhere)."""
    spec = WorkloadSpec.model_validate(raw_spec(max_output_tokens=5))
    with pytest.raises(ScenarioError, match=r"^scenario\.workload\.max_output_tokens:"):
        check_workload_spec(spec, path="scenario.workload")
