"""``simlb trace stats`` shows bursts, length correlation and timestamp rounding; ``simlb trace
fit`` warns when the twin misses the trace beyond tolerance and takes the rescaling options
(issue 12.3, 12.5)."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from sim.cli import main

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "traces"
MOONCAKE = FIXTURES / "mooncake_fixture.jsonl"


def test_stats_table_shows_bursts_correlation_and_rounding() -> None:
    result = CliRunner().invoke(main, ["trace", "stats", str(MOONCAKE)])
    assert result.exit_code == 0, result.output
    for row in ("requests in bursts (gaps <= 5 ms)", "mean burst size",
                "prompt-output length correlation", "timestamp grid",
                "same instant"):
        assert row in result.output, row
    assert "0.1 s" in result.output  # the fixture's timestamps lie on a 0.1-s grid
    assert "jitter_within_s" in result.output  # the hint


def test_fit_warns_and_fails_on_a_miss_when_asked(tmp_path: Path) -> None:
    """Without burst modelling the twin loses the trace's simultaneous arrivals: a warning,
    kept in the twin's header, and exit code 1 with --fail-on-miss (the twin is written)."""
    out = tmp_path / "twin.yaml"
    args = ["trace", "fit", str(MOONCAKE), "-o", str(out), "--no-bursts"]
    warned = CliRunner().invoke(main, args)
    assert warned.exit_code == 0, warned.output
    assert "simlb: warning: twin's bursts.share" in warned.stderr
    assert "# WARNING: twin's bursts.share" in out.read_text()
    failed = CliRunner().invoke(main, [*args, "--fail-on-miss"])
    assert failed.exit_code == 1 and "--fail-on-miss" in failed.stderr
    clean = CliRunner().invoke(main, ["trace", "fit", str(MOONCAKE), "-o", str(out),
                                      "--fail-on-miss"])
    assert clean.exit_code == 0, clean.output
    assert "bursts.share" not in clean.stderr


def test_fit_rescaled_is_compared_with_the_rescaled_trace(tmp_path: Path) -> None:
    """--target-rate-rps and --prompt-scale fit the twin of the trace replayed with the same
    options, and the comparison is against that replay."""
    out = tmp_path / "twin.yaml"
    result = CliRunner().invoke(main, ["trace", "fit", str(MOONCAKE), "-o", str(out),
                                       "--target-rate-rps", "5", "--prompt-scale", "0.5"])
    assert result.exit_code == 0, result.output
    header = {line.split(":")[0].strip("# "): line.split(":")[1]
              for line in out.read_text().splitlines() if line.startswith("#   ")}
    trace_rate, twin_rate = (float(x) for x in header["mean_rate_rps"].split("/"))
    assert abs(trace_rate - 5.0) < 0.01 and abs(twin_rate / 5.0 - 1) < 0.15
    trace_prompt, _ = (float(x) for x in header["prompt_tokens.mean"].split("/"))
    assert 2000 < trace_prompt < 3200  # the fixture's mean prompt is 5,221 tokens
    assert "workload" in yaml.safe_load(out.read_text())
    bad = CliRunner().invoke(main, ["trace", "fit", str(MOONCAKE), "-o", str(out),
                                    "--prompt-scale", "2"])
    assert bad.exit_code == 2
