"""Trace statistics: definitions on hand-made streams, prefix-reuse bounds, the real samples
(64 % / 23 % for the Mooncake trace), and ``simlb trace stats`` as a table, JSON and a plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sim.cli import main
from sim.workload import WorkloadSpec, build_workload
from sim.workload.base import unique_prompt_workload
from sim.workload.trace_stats import length_summary, prefix_reuse, trace_stats
from sim.workload.traces import TraceSpec, trace_workload

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "traces"


def stream(arrival_s: np.ndarray, prompt: np.ndarray | None = None) -> object:
    """A workload with the given arrivals (prompts 100 tokens unless given, outputs 10)."""
    n = arrival_s.shape[0]
    prompt = np.full(n, 100) if prompt is None else prompt
    return unique_prompt_workload(arrival_s.astype(float), prompt, np.full(n, 10))


def test_regular_arrivals() -> None:
    """One request a second: rate 1, CV 0, dispersion 0, peaks 1 req/s."""
    s = trace_stats(stream(np.arange(100.0)))
    assert (s.rows, s.span_s, s.mean_rate_rps) == (100, 99.0, 1.0)
    assert s.interarrival_cv == 0.0
    assert s.index_of_dispersion["1s"] == 0.0 and s.index_of_dispersion["10s"] == 0.0
    assert math.isnan(s.index_of_dispersion["60s"])  # one whole minute only
    assert s.peak_rate_rps == {"60s": 1.0, "10s": 1.0}
    assert s.prefix_reuse is None


def test_pairs_double_the_dispersion() -> None:
    """Requests in simultaneous pairs every 2 s: gap CV about 1, 10-s counts all 10."""
    s = trace_stats(stream(np.repeat(np.arange(50) * 2.0, 2)))
    assert s.interarrival_cv == pytest.approx(1.0, abs=0.02)  # 50 gaps of 0, 49 of 2
    assert s.index_of_dispersion["10s"] == 0.0
    assert s.index_of_dispersion["1s"] == pytest.approx(1.0)  # counts 2, 0, 2, 0, ...
    assert s.peak_rate_rps["10s"] == 1.0


def test_length_summary_percentiles() -> None:
    """Mean, linear-interpolation percentiles and max."""
    summary = length_summary(np.arange(1, 101))
    assert (summary.mean, summary.p50, summary.max) == (50.5, 50.5, 100.0)
    assert summary.p90 == pytest.approx(90.1) and summary.p99 == pytest.approx(99.01)


def test_prefix_reuse_by_hand(tmp_path: Path) -> None:
    """[1, 2], [1, 2, 3], [4] at 512 tokens: 2 of 6 blocks reused; one node = shared cache."""
    path = tmp_path / "m.jsonl"
    rows = [(0, 1024, [1, 2]), (1000, 1536, [1, 2, 3]), (2000, 512, [4])]
    path.write_text("".join(json.dumps({"timestamp": t, "input_length": n, "output_length": 3,
                                        "hash_ids": h}) + "\n" for t, n, h in rows),
                    encoding="utf-8")
    w = trace_workload(TraceSpec(format="mooncake", path=str(path)), None, 0)
    one = prefix_reuse(w, nodes=1)
    assert one is not None and one.shared == pytest.approx(2 / 6)
    assert one.random == pytest.approx(2 / 6)
    at_16 = prefix_reuse(w, block_tokens=16)
    assert at_16 is not None and at_16.shared == pytest.approx(64 / (64 + 96 + 32))


def test_prefix_reuse_of_a_synthetic_workload() -> None:
    """One 512-token prefix on every request: every first block but the first is reused."""
    spec = WorkloadSpec.model_validate({
        "arrivals": {"name": "poisson", "params": {"rate_rps": 5.0}},
        "prompt_tokens": {"name": "uniform", "params": {"low_tokens": 1, "high_tokens": 900}},
        "output_tokens": {"name": "fixed", "params": {"tokens": 4}},
        "prefixes": {"name": "shared_prefix",
                     "params": {"groups": 1, "prefix_tokens": 512, "fraction": 1.0}}})
    w = build_workload(spec, 100.0, 1)
    r = prefix_reuse(w, block_tokens=512, nodes=4)
    blocks = int(np.sum(-(-w.prompt_tokens // 512)))
    assert r is not None and r.shared == pytest.approx((len(w) - 1) / blocks)
    assert r.random == pytest.approx((len(w) - 4) / blocks, abs=1e-9)


@pytest.mark.shared
def test_real_azure_samples(shared_dir: Path) -> None:
    """The Azure samples: SOURCES.md's figures (conv CV about 1.1, outputs capped at 1000;
    code CV about 13)."""
    conv = trace_stats(trace_workload(TraceSpec(
        format="azure", path=str(shared_dir / "traces/AzureLLMInferenceTrace_conv.sample.csv")),
        None, 0))
    assert conv.rows == 2867 and conv.span_s == pytest.approx(599.971336)
    assert conv.interarrival_cv == pytest.approx(1.1, abs=0.05)
    assert conv.output_tokens.max == 1000.0
    code = trace_stats(trace_workload(TraceSpec(
        format="azure", path=str(shared_dir / "traces/AzureLLMInferenceTrace_code.sample.csv")),
        None, 0))
    assert code.rows == 1482 and 10.0 < code.interarrival_cv < 15.0
    assert code.output_tokens.p50 == 13.0
    assert code.prompt_tokens.mean == pytest.approx(2077, rel=0.01)


@pytest.mark.shared
def test_real_mooncake_reuse_bounds(shared_dir: Path) -> None:
    """The full Mooncake synthetic trace: 64 % reuse with one cache, about 23 % with random
    routing over 8 nodes (SOURCES.md)."""
    w = trace_workload(TraceSpec(format="mooncake",
                                 path=str(shared_dir / "traces/synthetic_trace.jsonl")), None, 0)
    s = trace_stats(w, nodes=8)
    assert s.rows == 3993
    assert s.prefix_reuse is not None
    assert s.prefix_reuse.shared == pytest.approx(0.64, abs=0.005)
    assert s.prefix_reuse.random == pytest.approx(0.23, abs=0.015)


def test_cli_table_json_and_plot(tmp_path: Path) -> None:
    """simlb trace stats prints a table, --json the same figures, --plot a PNG."""
    path = FIXTURES / "mooncake_fixture.jsonl"
    table = CliRunner().invoke(main, ["trace", "stats", str(path)])
    assert table.exit_code == 0, table.output
    for text in ("requests", "285", "mean rate", "peak rate (1 min windows)",
                 "inter-arrival CV", "index of dispersion (1 s)",
                 "prefix reuse, shared cache (512-token blocks)",
                 "random routing over 8 nodes", "prompt", "p99"):
        assert text in table.stdout, text
    out = CliRunner().invoke(main, ["trace", "stats", str(path), "--json", "--nodes", "4",
                                    "--plot", str(tmp_path / "s.png")])
    assert out.exit_code == 0, out.output
    body = json.loads(out.stdout)
    assert body["format"] == "mooncake" and body["rows"] == 285
    assert set(body) >= {"span_s", "mean_rate_rps", "peak_rate_rps", "interarrival_cv",
                         "index_of_dispersion", "prompt_tokens", "output_tokens", "prefix_reuse"}
    assert body["prefix_reuse"]["nodes"] == 4
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    azure = CliRunner().invoke(main, ["trace", "stats", str(FIXTURES / "azure_conv_fixture.csv"),
                                      "--json"])
    assert json.loads(azure.stdout)["prefix_reuse"] is None
    assert json.loads(azure.stdout)["index_of_dispersion"]["60s"] is None  # NaN -> null


@pytest.mark.parametrize("name", ["burstgpt_fixture.csv", "vidur_fixture.csv",
                                  "azure_code_fixture.csv"])
def test_cli_guesses_each_published_format(name: str) -> None:
    """Without --format, the format is told from the first line."""
    result = CliRunner().invoke(main, ["trace", "stats", str(FIXTURES / name), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["format"] == name.split("_")[0]


def test_timestamp_rounding_and_the_jitter_hint() -> None:
    """trace stats finds the grid timestamps are rounded to (a 3-s grid here, BurstGPT's whole
    seconds, the Mooncake fixture's 100 ms) and points at jitter_within_s; continuous
    timestamps (Azure) have none."""
    grid3 = trace_stats(stream(np.array([0.0, 0.0, 3.0, 9.0, 9.0, 27.0]))).timestamp_rounding
    assert grid3 is not None and grid3.grid_s == 3.0
    assert grid3.simultaneous_share == pytest.approx(4 / 6)
    assert "3-s grid" in grid3.hint and "jitter_within_s" in grid3.hint
    def grid(fmt: str, name: str) -> float | None:
        spec = TraceSpec(format=fmt, path=str(FIXTURES / name))
        rounding = trace_stats(trace_workload(spec, None, 0)).timestamp_rounding
        assert rounding is not None
        return rounding.grid_s

    assert grid("burstgpt", "burstgpt_fixture.csv") == 1.0
    assert grid("mooncake", "mooncake_fixture.jsonl") == pytest.approx(0.1)
    assert grid("azure", "azure_conv_fixture.csv") is None
    azure = trace_workload(TraceSpec(format="azure", path=str(FIXTURES / "azure_conv_fixture.csv")),
                           None, 0)
    rounding = trace_stats(azure).timestamp_rounding
    assert rounding is not None and rounding.grid_s is None and "identical" in rounding.hint
    assert "timestamp_rounding" not in "".join(trace_stats(azure).flat())
    body = json.loads(CliRunner().invoke(
        main, ["trace", "stats", str(FIXTURES / "burstgpt_fixture.csv"), "--json"]).stdout)
    assert body["timestamp_rounding"]["grid_s"] == 1.0
