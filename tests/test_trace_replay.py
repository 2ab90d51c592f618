"""Trace replay: every option of the workload.trace block, segments from block hashes, the
WorkloadSpec integration, and scenarios replaying a fixture end to end."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from sim.errors import ScenarioError, TraceError
from sim.workload import Workload, WorkloadSpec, build_workload, check_workload_spec
from sim.workload.replay import chain_keys
from sim.workload.trace_readers import FORMATS
from sim.workload.trace_stats import prefix_reuse
from sim.workload.traces import TraceSpec, read_table, trace_workload

from conftest import scenario_dict, write_scenario

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "traces"
FILES = {"azure": "azure_conv_fixture.csv", "mooncake": "mooncake_fixture.jsonl",
         "burstgpt": "burstgpt_fixture.csv", "vidur": "vidur_fixture.csv"}


def replay(fmt: str = "azure", scenario_s: float | None = None, seed: int = 0,
           **options: Any) -> Workload:
    """Replay the fixture of ``fmt`` with trace ``options`` for a scenario of ``scenario_s``."""
    spec = TraceSpec(format=fmt, path=str(FIXTURES / FILES[fmt]), **options)
    return trace_workload(spec, scenario_s, seed)


def table(fmt: str = "azure") -> Any:
    """The raw table of a fixture."""
    return read_table(FIXTURES / FILES[fmt], FORMATS[fmt])


@pytest.mark.parametrize("fmt", sorted(FILES))
def test_plain_replay_keeps_every_request(fmt: str) -> None:
    """Without options, a sorted trace replays as read, offsets from its first request."""
    raw, w = table(fmt), replay(fmt)
    w.validate()
    kept = raw.output_tokens > 0  # BurstGPT's failed requests are dropped by default
    assert len(w) == int(kept.sum())
    assert w.arrival_s[0] == 0.0
    assert np.allclose(w.arrival_s, raw.time_s[kept] - raw.time_s[kept][0])
    assert np.array_equal(w.prompt_tokens, raw.prompt_tokens[kept])
    assert np.array_equal(w.max_output_tokens, w.output_tokens)  # output_cap: own
    assert w.source.startswith(f"trace({fmt}: ")


def test_window_then_max_requests() -> None:
    """The window is in trace seconds from the first request; offsets restart in it."""
    raw = table()
    w = replay(start_offset_s=30.0, duration_s=20.0)
    inside = (raw.time_s >= 30.0) & (raw.time_s < 50.0)
    assert len(w) == int(inside.sum())
    assert np.allclose(w.arrival_s, raw.time_s[inside] - raw.time_s[inside][0])
    assert len(replay(start_offset_s=30.0, duration_s=20.0, max_requests=7)) == 7
    with pytest.raises(ScenarioError, match=r"workload\.trace\.start_offset_s: no request"):
        replay(start_offset_s=1e6)


def test_time_scale_and_target_rate() -> None:
    """time_scale divides offsets; target_rate_rps makes (n - 1) / span the target."""
    base, fast = replay(), replay(time_scale=4.0)
    assert np.allclose(fast.arrival_s, base.arrival_s / 4.0)
    target = replay(target_rate_rps=25.0)
    assert (len(target) - 1) / target.arrival_s[-1] == pytest.approx(25.0)
    assert target.expected_rate_rps == pytest.approx(25.0)
    with pytest.raises(ValidationError, match="at most one of time_scale and target_rate_rps"):
        TraceSpec(format="azure", path="x", time_scale=2.0, target_rate_rps=3.0)


def test_jitter_within_buckets_is_seeded() -> None:
    """Whole-second timestamps spread uniformly inside their second, reproducibly per seed."""
    plain = replay("burstgpt")
    a = replay("burstgpt", jitter_within_s=1.0, seed=3)
    assert np.array_equal(a.arrival_s, replay("burstgpt", jitter_within_s=1.0, seed=3).arrival_s)
    assert not np.array_equal(a.arrival_s,
                              replay("burstgpt", jitter_within_s=1.0, seed=4).arrival_s)
    assert np.array_equal(plain.arrival_s, np.floor(plain.arrival_s))
    assert not np.array_equal(a.arrival_s, np.floor(a.arrival_s))
    assert bool(np.all(np.diff(a.arrival_s) >= 0))
    # offsets restart at the first jittered request (at j0 in [0, 1) of the first second): some
    # j0 puts every request inside its own second, i.e. in [t, t + 1) of its plain offset t
    lowest = float(np.max(plain.arrival_s - a.arrival_s))
    highest = float(np.min(plain.arrival_s + 1.0 - a.arrival_s))
    assert 0.0 <= lowest < highest <= 1.0


def test_loop_fills_the_scenario_with_fresh_keys() -> None:
    """loop repeats the trace (period span + mean gap); copies share no prefix keys."""
    once = replay("mooncake")
    span = float(once.arrival_s[-1])
    period = span * len(once) / (len(once) - 1)
    looped = replay("mooncake", scenario_s=2.5 * period, loop=True)
    looped.validate()
    assert len(looped) > 2 * len(once)
    assert np.allclose(looped.arrival_s[len(once):2 * len(once)], once.arrival_s + period)
    n_seg = int(once.seg_ptr[-1])
    first, second = looped.seg_key[:n_seg], looped.seg_key[n_seg:2 * n_seg]
    assert not set(first[first >= 0].tolist()) & set(second[second >= 0].tolist())
    assert bool(np.all(looped.arrival_s < 2.5 * period))
    reuse_once = prefix_reuse(once)
    reuse_looped = prefix_reuse(looped)
    assert reuse_once is not None and reuse_looped is not None
    assert reuse_looped.shared == pytest.approx(reuse_once.shared, abs=0.05)


def test_duration_bounds_the_replay() -> None:
    """Requests at or after the scenario's duration_s are dropped (and the source says so)."""
    w = replay(scenario_s=10.0)
    assert bool(np.all(w.arrival_s < 10.0)) and len(w) == int((table().time_s < 10.0).sum())
    assert "requests at or after duration_s=10 dropped" in w.source


def test_model_map_failed_and_zero_tokens() -> None:
    """Models map to served names (null drops); failed requests are dropped or kept."""
    raw = table("burstgpt")
    w = replay("burstgpt", model_map={"ChatGPT": "llama-3-8b", "GPT-4": None})
    chat = (raw.model_code == 0) & (raw.output_tokens > 0)
    assert len(w) == int(chat.sum())
    assert set(w.extra["model"].tolist()) == {"llama-3-8b"}
    both = replay("burstgpt", model_map={"ChatGPT": "small", "GPT-4": "large"})
    assert sorted(set(both.extra["model"].tolist())) == ["large", "small"]
    with pytest.raises(ScenarioError, match=r"model_map: the trace has model\(s\) \['GPT-4'\]"):
        replay("burstgpt", model_map={"ChatGPT": "x"})
    kept = replay("burstgpt", keep_failed=True)
    assert len(kept) == 300 and int((kept.output_tokens == 1).sum()) >= 13
    assert "13 failed requests kept with 1 output token" in kept.source
    with pytest.raises(ValidationError, match="keep_failed applies to burstgpt only"):
        TraceSpec(format="azure", path="x", keep_failed=True)
    with pytest.raises(ValidationError, match="model_map needs a model column"):
        TraceSpec(format="azure", path="x", model_map={"a": "b"})


def test_zero_token_policies(tmp_path: Path) -> None:
    """zero_tokens: error (located), drop, or one."""
    path = tmp_path / "z.csv"
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,5,0\n1,0,4\n2,3,3\n",
                    encoding="utf-8")
    spec = {"format": "vidur", "path": str(path)}
    with pytest.raises(TraceError, match=r"line 2, column 'num_decode_tokens': 0 tokens"):
        trace_workload(TraceSpec(**spec), None, 0)
    assert len(trace_workload(TraceSpec(**spec, zero_tokens="drop"), None, 0)) == 1
    one = trace_workload(TraceSpec(**spec, zero_tokens="one"), None, 0)
    assert one.prompt_tokens.tolist() == [5, 1, 3] and one.output_tokens.tolist() == [1, 4, 3]


def test_output_cap_own_max_and_number(caplog: pytest.LogCaptureFixture) -> None:
    """The cap defaults to each request's own output (what a replaying client sends); ``max``
    is the trace's largest output; a number cuts larger outputs, counts and says so."""
    raw = table()
    own = replay()
    assert np.array_equal(own.max_output_tokens, own.output_tokens)
    assert own.accounting["capped"] == 0 and own.accounting["output_cap"] == "own"
    assert bool(np.all(replay(output_cap="max").max_output_tokens == raw.output_tokens.max()))
    over = int((raw.output_tokens > 100).sum())
    for options in ({"output_cap": 100}, {"max_output_tokens": 100}):
        with caplog.at_level(logging.WARNING, logger="sim.workload.replay"):
            w = replay(**options)
        assert int(w.output_tokens.max()) == 100 and bool(np.all(w.max_output_tokens == 100))
        assert f"{over} outputs cut to output_cap=100" in w.source
        assert w.accounting["capped"] == over
    assert f"{over} of 400 outputs cut" in caplog.text
    with pytest.raises(ValidationError, match="at most one of output_cap and max_output"):
        TraceSpec(format="azure", path="x", output_cap=5, max_output_tokens=5)


def test_unsorted_sorted_with_count_or_strict(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """Unsorted timestamps: a stable sort and a warning with the count, or strict's error."""
    path = tmp_path / "u.csv"
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n"
                    "3,30,1\n1,10,1\n2,20,1\n2,21,1\n0.5,5,1\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="sim.workload.replay"):
        w = trace_workload(TraceSpec(format="vidur", path=str(path)), None, 0)
    assert "2 requests arrive earlier than the request before them" in caplog.text
    assert w.prompt_tokens.tolist() == [5, 10, 20, 21, 30]
    assert w.arrival_s.tolist() == [0.0, 0.5, 1.5, 1.5, 2.5]
    with pytest.raises(TraceError, match=r"line 3, column 'arrived_at': timestamp earlier"):
        trace_workload(TraceSpec(format="vidur", path=str(path), strict=True), None, 0)


def test_chain_keys_are_prefix_ids() -> None:
    """Equal id prefixes give equal keys; a differing earlier id changes every later key."""
    ptr = np.array([0, 3, 5, 8, 8])
    ids = np.array([7, 8, 9, 7, 8, 1, 8, 9])
    keys = chain_keys(ptr, ids)
    assert keys[0] == keys[3] and keys[1] == keys[4]  # [7, 8] shared
    assert keys[7] != keys[2]  # 9 after [1, 8] is not 9 after [7, 8]
    assert len(set(keys.tolist())) == 6


def test_mooncake_segments() -> None:
    """Blocks of 512 tokens with chained keys, the last one partial; groups = shared blocks."""
    raw, w = table("mooncake"), replay("mooncake")
    assert np.array_equal(np.diff(w.seg_ptr), np.diff(raw.hash_ptr))
    assert w.seg_len[:6].tolist() == [512] * 5 + [2782 - 5 * 512]
    assert bool(np.all(w.seg_key >= 0))
    # requests 2 and 3 share ids 313..316, so their first four keys are equal
    s2, s3 = w.seg_key[w.seg_ptr[2]:w.seg_ptr[3]], w.seg_key[w.seg_ptr[3]:w.seg_ptr[4]]
    assert s2[:3].tolist() == s3[:3].tolist() and w.prefix_group[2] == w.prefix_group[3] >= 0


def test_prompt_scale_keeps_the_sharing() -> None:
    """prompt_scale shrinks prompts and blocks alike: reuse at the scaled block is unchanged."""
    full, small = replay("mooncake"), replay("mooncake", prompt_scale=0.125)
    assert small.seg_len[0] == 64
    assert small.prompt_tokens.sum() == pytest.approx(full.prompt_tokens.sum() / 8, rel=0.01)
    a = prefix_reuse(full, block_tokens=512)
    b = prefix_reuse(small, block_tokens=64)
    assert a is not None and b is not None  # (rounded partial blocks may match more)
    assert a.shared == pytest.approx(b.shared, abs=0.005)
    plain = replay("azure", prompt_scale=0.5)
    assert np.array_equal(plain.prompt_tokens,
                          np.maximum(np.rint(table().prompt_tokens * 0.5), 1).astype(int))
    with pytest.raises(ValidationError, match="whole number of tokens"):
        TraceSpec(format="mooncake", path="x", prompt_scale=0.3)


def test_workload_spec_trace_or_synthetic() -> None:
    """A workload block is a trace or synthetic components, never both, never neither."""
    trace = {"format": "azure", "path": "x.csv"}
    with pytest.raises(ValidationError, match="either a trace block or the synthetic"):
        WorkloadSpec.model_validate({"trace": trace, "arrivals": {"name": "poisson"}})
    with pytest.raises(ValidationError, match="missing arrivals, prompt_tokens, output_tokens"):
        WorkloadSpec.model_validate({})
    with pytest.raises(ValidationError, match="columns"):
        WorkloadSpec.model_validate({"trace": {"format": "csv", "path": "x.csv"}})
    with pytest.raises(ValidationError, match="extra"):
        WorkloadSpec.model_validate({"trace": {**trace, "laod": 1}})


def test_relative_paths_start_at_base_dir(tmp_path: Path) -> None:
    """A relative path is resolved against base_dir; a missing file names the field."""
    spec = WorkloadSpec.model_validate({"trace": {"format": "vidur",
                                                  "path": "fixtures/traces/vidur_fixture.csv"}})
    check_workload_spec(spec, base_dir=REPO / "tests")
    w = build_workload(spec, 30.0, 1, base_dir=REPO / "tests")
    assert len(w) == int((table("vidur").time_s < 30.0).sum())
    with pytest.raises(ScenarioError, match=r"workload\.trace\.path: trace file not found"):
        check_workload_spec(spec, base_dir=tmp_path)


def test_check_reads_only_the_head(tmp_path: Path) -> None:
    """check_workload_spec parses the first records only; the full read finds later errors."""
    rows = [f"{i},10,5" for i in range(150)] + ["150,oops,5"]
    path = tmp_path / "v.csv"
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n" + "\n".join(rows) + "\n",
                    encoding="utf-8")
    spec = WorkloadSpec.model_validate({"trace": {"format": "vidur", "path": str(path)}})
    check_workload_spec(spec)
    with pytest.raises(TraceError, match=r"line 152, column 'num_prefill_tokens'"):
        build_workload(spec, 1000.0, 0)


# --- scenarios --------------------------------------------------------------------------------

def trace_scenario(tmp_path: Path, trace: dict[str, Any], **changes: Any) -> Path:
    """A small scenario replaying ``trace`` (absolute path) on the test cluster."""
    raw = scenario_dict(workload={"trace": trace}, duration_s=30.0, warmup_s=0.0, **changes)
    return write_scenario(tmp_path, raw)


def test_scenario_replays_a_fixture_end_to_end(tmp_path: Path) -> None:
    """sim.app.load + run_all on a scenario replaying the Azure fixture (absolute path)."""
    from sim import app

    path = trace_scenario(tmp_path, {"format": "azure",
                                     "path": str(FIXTURES / FILES["azure"]),
                                     "target_rate_rps": 10.0})
    resolved = app.load(path)
    results = app.run_all(resolved, tmp_path / "out")
    assert len(results) == 1
    summary = results[0].summary
    assert summary["requests"]["arrived"] == len(replay(target_rate_rps=10.0, scenario_s=30.0))
    assert summary["requests"]["completed"] > 0


def test_validate_reports_a_bad_trace_in_one_line(tmp_path: Path) -> None:
    """simlb validate on a scenario whose trace has a bad record: one line, exit 2."""
    from click.testing import CliRunner

    from sim.cli import main

    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2024-01-01 00:00:00,12,x\n",
                   encoding="utf-8")
    path = trace_scenario(tmp_path, {"format": "azure", "path": str(bad)})
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"{bad}: line 2, column 'GeneratedTokens': not a number ('x')" in lines[0]


SHIPPED = sorted((REPO / "scenarios").glob("trace_*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_trace_scenarios_validate(path: Path) -> None:
    """Each shipped trace scenario points at an existing fixture and validates."""
    from sim import app
    from sim.scenario import parse_scenario, read_raw

    scenario = parse_scenario(read_raw(path), str(path))
    check_workload_spec(scenario.workload, base_dir=path.parent)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# Question: ")
    assert "--set workload.trace.path=" in path.read_text(encoding="utf-8")
    app.load(path)  # a relative trace path starts from the scenario's folder


def test_shipped_scenario_runs(tmp_path: Path) -> None:
    """scenarios/trace_azure_conv.yaml runs on its fixture, its relative trace path taken from
    the scenario's folder (by validation and by the run)."""
    from sim import app

    path = REPO / "scenarios" / "trace_azure_conv.yaml"
    resolved = app.load(path, ["duration_s=20", "router.strategies=[{name: round_robin}]"])
    results = app.run_all(resolved, tmp_path / "out")
    assert results[0].summary["requests"]["arrived"] > 0


def test_generic_jsonl_with_16_token_blocks_and_sessions(tmp_path: Path) -> None:
    """A column mapping, hash_block_tokens and session ids (Qwen-Bailian-like JSON lines)."""
    path = tmp_path / "q.jsonl"
    rows = [{"t": 0.0, "in": 40, "out": 2, "ids": [5, 6, 7], "chat": "a"},
            {"t": 0.5, "in": 33, "out": 2, "ids": [5, 6, 9], "chat": "b"},
            {"t": 1.0, "in": 20, "out": 2, "ids": [5, 6], "chat": "a"}]
    path.write_text("".join(f"{json.dumps(r)}\n" for r in rows), encoding="utf-8")
    spec = TraceSpec(format="jsonl", path=str(path), hash_block_tokens=16,
                     columns={"arrival": "t", "prompt_tokens": "in", "output_tokens": "out",
                              "hash_ids": "ids", "session_id": "chat"})
    w = trace_workload(spec, None, 0)
    assert w.seg_len.tolist() == [16, 16, 8, 16, 16, 1, 16, 4]
    keys = w.seg_key.tolist()
    assert keys[0] == keys[3] == keys[6] and keys[1] == keys[4] == keys[7]
    assert keys[2] != keys[5]
    assert w.session_id.tolist() == [0, 1, 0]
    reuse = prefix_reuse(w, block_tokens=16, nodes=1)
    # 8 blocks; reused: request 1's first two, request 2's first (its second ends at token 20,
    # a block no earlier request had)
    assert reuse is not None and reuse.shared == pytest.approx(3 / 8)
