"""Trace replay loses nothing silently: every input row is replayed or dropped for a counted
reason, caps and context limits behave like a real client and server, and the shipped
scenarios' defaults reject only requests that cannot fit (issue 12, items 1, 2 and 5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sim.app import load
from sim.runner import simulate, workload_for
from sim.workload import Workload
from sim.workload.replay import (
    DROP_REASONS,
    loss_lines,
    node_limits,
    replay,
    request_limits,
)
from sim.workload.spec import expected_losses
from sim.workload.traces import TraceSpec, read_trace

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "traces"
FILES = {"azure": "azure_conv_fixture.csv", "mooncake": "mooncake_fixture.jsonl",
         "burstgpt": "burstgpt_fixture.csv", "vidur": "vidur_fixture.csv",
         "azure_code": "azure_code_fixture.csv"}
SHARED_FORMATS = {".csv": "azure", ".jsonl": "mooncake"}
#: replay options that drop rows for every reason the replay has
OPTIONS: list[dict[str, Any]] = [
    {}, {"start_offset_s": 20.0, "duration_s": 30.0}, {"max_requests": 50},
    {"start_offset_s": 5.0, "max_requests": 40, "time_scale": 2.0},
    {"jitter_within_s": "auto", "target_rate_rps": 20.0},
]


def replay_file(path: Path, fmt: str, scenario_s: float | None = None, seed: int = 0,
                limits: Any = None, **options: Any) -> Workload:
    """Replay ``path`` with trace ``options``."""
    spec = TraceSpec(format=fmt, path=str(path), **options)
    return replay(read_trace(spec), spec, scenario_s, seed, limits)


def assert_conserved(w: Workload, rows: int) -> None:
    """Input rows = rows replayed + every drop; the workload holds what ``replayed`` says."""
    acc = w.accounting
    assert acc["trace_rows"] == rows
    assert set(acc["dropped"]) == set(DROP_REASONS)
    assert acc["trace_rows"] == acc["replayed_rows"] + sum(acc["dropped"].values())
    assert acc["dropped_total"] == sum(acc["dropped"].values())
    assert acc["replayed"] == len(w)
    assert acc["replayed_rows"] <= acc["replayed"]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "plain")
@pytest.mark.parametrize("name", sorted(FILES))
def test_every_fixture_row_is_counted(name: str, options: dict[str, Any]) -> None:
    """Each shipped fixture, under windows, request limits, scaling, jitter and a scenario
    duration that cuts the replay: conservation against the input row count."""
    fmt = "azure" if name == "azure_code" else name
    path = FIXTURES / FILES[name]
    rows = len(read_trace(TraceSpec(format=fmt, path=str(path))))
    for scenario_s in (None, 15.0):
        assert_conserved(replay_file(path, fmt, scenario_s, **options), rows)
    looped = replay_file(path, fmt, 1e4, loop=True, max_requests=30)
    assert_conserved(looped, rows)
    assert looped.accounting["loop_copies"] > 1 and looped.accounting["replayed"] > 30


def test_drop_reasons_of_burstgpt() -> None:
    """Failed rows, an unmapped model and the scenario's end each have their count."""
    path = FIXTURES / FILES["burstgpt"]
    w = replay_file(path, "burstgpt", 20.0, model_map={"ChatGPT": "m", "GPT-4": None})
    dropped = w.accounting["dropped"]
    assert dropped["failed"] == 13 and dropped["unmapped_model"] == 56
    assert dropped["after_duration"] > 0
    assert_conserved(w, 300)
    kept = replay_file(path, "burstgpt", keep_failed=True, model_map={"ChatGPT": "m",
                                                                      "GPT-4": "n"})
    assert kept.accounting["failed_kept"] == 13 and kept.accounting["dropped_total"] == 0


def test_zero_token_rows_dropped_or_raised_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "z.csv"
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,5,1\n1,0,4\n2,3,0\n",
                    encoding="utf-8")
    drop = replay_file(path, "vidur", zero_tokens="drop")
    assert drop.accounting["dropped"]["zero_tokens"] == 2
    assert_conserved(drop, 3)
    assert replay_file(path, "vidur", zero_tokens="one").accounting["raised_to_one"] == 2


def test_shared_traces_every_row_is_counted(shared_dir: Path) -> None:
    """The reference traces, whole and cut by a window and a scenario duration."""
    files = sorted(p for p in (shared_dir / "traces").iterdir() if p.suffix in SHARED_FORMATS)
    assert files
    for path in files:
        fmt = SHARED_FORMATS[path.suffix]
        rows = len(read_trace(TraceSpec(format=fmt, path=str(path))))
        assert_conserved(replay_file(path, fmt), rows)
        cut = replay_file(path, fmt, 100.0, start_offset_s=60.0, duration_s=300.0)
        assert_conserved(cut, rows)
        assert cut.accounting["dropped"]["before_window"] > 0
        assert cut.accounting["dropped"]["after_duration"] > 0


def test_over_context_rejects_or_trims_and_counts() -> None:
    """Reject: requests beyond the context are counted (the nodes reject them). Trim: their
    prompts are cut from the end to fit, shared first blocks keep their keys."""
    path = FIXTURES / FILES["mooncake"]
    limits = (("", 3000),)
    plain = replay_file(path, "mooncake")
    over = plain.prompt_tokens + plain.output_tokens > 3000
    assert over.any()
    reject = replay_file(path, "mooncake", limits=limits)
    assert reject.accounting["over_context"] == int(over.sum())
    assert reject.accounting["context_tokens"] == 3000
    assert reject.accounting["trimmed"] == 0
    trim = replay_file(path, "mooncake", limits=limits, over_context="trim")
    trim.validate()
    acc = trim.accounting
    assert acc["trimmed"] == int(over.sum()) and acc["over_context"] == 0
    assert acc["trimmed_prompt_tokens"] == int(plain.prompt_tokens.sum()
                                               - trim.prompt_tokens.sum())
    assert bool(np.all(trim.prompt_tokens + trim.max_output_tokens <= 3000))
    first = trim.seg_ptr[:-1]
    assert np.array_equal(trim.seg_key[first], plain.seg_key[plain.seg_ptr[:-1]])
    assert np.array_equal(trim.prompt_tokens[~over], plain.prompt_tokens[~over])


def test_request_limits_follow_the_model_served() -> None:
    """A request's context is the smallest among the nodes that serve its model."""
    w = replay_file(FIXTURES / FILES["burstgpt"], "burstgpt",
                    model_map={"ChatGPT": "a", "GPT-4": "b"})
    limits = request_limits(w, (("a", 4000), ("b", 2000), ("", 3000)))
    models = w.extra["model"]
    assert set(limits[models == "a"]) == {3000} and set(limits[models == "b"]) == {2000}


def trace_scenarios() -> list[str]:
    """The shipped scenarios that replay a trace."""
    return sorted(p.stem for p in (REPO / "scenarios").glob("*.yaml")
                  if "\n  trace:" in p.read_text(encoding="utf-8"))


def wrongly_rejected(name: str, *overrides: str) -> tuple[int, Workload]:
    """Requests of scenario ``name`` that fit their context with their own output, yet whose
    prompt + max_output_tokens exceeds it (a real deployment serves them; the replay's cap
    would have them rejected)."""
    resolved = load(REPO / "scenarios" / f"{name}.yaml", overrides)
    w = workload_for(resolved, 0)
    context = request_limits(w, node_limits(resolved.node_specs))
    fits = w.prompt_tokens + w.output_tokens <= context
    return int((fits & (w.prompt_tokens + w.max_output_tokens > context)).sum()), w


@pytest.mark.parametrize("name", trace_scenarios())
def test_shipped_defaults_reject_only_what_cannot_fit(name: str) -> None:
    """A default that rejects requests a real deployment would serve is a bug."""
    wrong, w = wrongly_rejected(name)
    assert wrong == 0
    assert_conserved(w, w.accounting["trace_rows"])


def test_the_old_default_cap_fails_the_check(shared_dir: Path) -> None:
    """The trace's largest output as every request's cap (the old default) rejects Azure code
    requests that fit an 8k context: the check above catches such a default."""
    path = shared_dir / "traces" / "AzureLLMInferenceTrace_code.sample.csv"
    wrong, _ = wrongly_rejected("trace_azure_code", f"workload.trace.path={path}",
                                "workload.trace.output_cap=max")
    assert wrong > 0
    assert wrongly_rejected("trace_azure_code", f"workload.trace.path={path}")[0] == 0


def test_expected_losses_and_their_lines() -> None:
    """What validate warns about: drops by reason, requests beyond the context, identical
    replications."""
    resolved = load(REPO / "scenarios" / "trace_burstgpt.yaml", ["duration_s=3"])
    acc = expected_losses(resolved)
    lines = loss_lines(acc, replications=3)
    assert acc["dropped"]["failed"] == 13 and acc["dropped"]["after_duration"] > 0
    assert any("13 failed" in line and "after duration" in line for line in lines)
    assert not any("identical" in line for line in lines)  # jitter_within_s: 1
    mooncake = load(REPO / "scenarios" / "trace_mooncake.yaml",
                    ["cluster.node_groups.0.max_model_len_tokens=600"])
    acc = expected_losses(mooncake)
    assert acc["over_context"] > 0
    lines = loss_lines(acc, replications=2)
    assert any("exceed the 600-token context" in line for line in lines)
    assert any("identical" in line for line in lines)
    assert loss_lines(expected_losses(load(REPO / "scenarios" / "smoke.yaml"))) == []


def test_jitter_auto_varies_replications_and_says_so() -> None:
    """auto jitters within the trace's own grid (the fixture's 100 ms), seeded per
    replication; without jitter the block says the replications are identical."""
    path = FIXTURES / FILES["mooncake"]
    plain = replay_file(path, "mooncake")
    assert plain.accounting["replications_identical"] is True
    assert plain.accounting["timestamp_grid_s"] == pytest.approx(0.1)
    a = replay_file(path, "mooncake", seed=1, jitter_within_s="auto")
    b = replay_file(path, "mooncake", seed=2, jitter_within_s="auto")
    assert a.accounting["replications_identical"] is False
    assert a.accounting["jitter_s"] == pytest.approx(0.1)
    assert not np.array_equal(a.arrival_s, b.arrival_s)
    shift = a.arrival_s - plain.arrival_s
    assert bool(np.all((shift > -0.1) & (shift < 0.1)))  # first request moves too


def test_summary_carries_the_input_block() -> None:
    """A run's summary has the ``input`` block of its workload."""
    resolved = load(REPO / "scenarios" / "trace_mooncake.yaml", ["duration_s=5"],
                    strategies=("round_robin",))
    w = workload_for(resolved, 0)
    summary = simulate(resolved, resolved.strategies[0], 0, w).summary
    block = summary["input"]
    assert block["trace_rows"] == 285 and block["replayed"] == len(w)
    assert block["dropped"]["after_duration"] == 285 - len(w)
