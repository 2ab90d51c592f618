"""What ``simlb run`` and ``simlb validate`` say about lost input and herding (issue 12)."""

from __future__ import annotations

import io
from pathlib import Path

from click.testing import CliRunner
from rich.console import Console

from sim import app
from sim.cli import main
from sim.console import NARROW, WIDE, print_comparison

REPO = Path(__file__).resolve().parents[1]
BURSTGPT = REPO / "scenarios" / "trace_burstgpt.yaml"  # drops failed and unmapped rows


def test_validate_warns_of_rows_dropped_and_requests_rejected() -> None:
    """validate names every kind of loss the run will have, and still says ok."""
    result = CliRunner().invoke(main, ["validate", str(BURSTGPT)])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "simlb: warning:" in line]
    assert any("of 300 trace rows will not be replayed" in w and "failed" in w
               and "unmapped model" in w for w in warnings), result.stderr
    assert any("exceed the 8,192-token context" in w for w in warnings), result.stderr
    assert "ok (" in result.stdout


def test_validate_is_quiet_when_nothing_is_lost() -> None:
    result = CliRunner().invoke(main, ["validate", str(REPO / "scenarios" / "smoke.yaml")])
    assert result.exit_code == 0 and "warning" not in result.stderr


def test_console_table_has_herding_and_lists_losses(tmp_path: Path) -> None:
    """The herding index is a column of both tables; losses are listed under the table; the
    caption says how the grade is taken."""
    resolved = app.load(BURSTGPT, ["duration_s=40"], strategies=("round_robin", "jsq"))
    results = app.run_all(resolved, tmp_path, keep_records=False)
    assert "herd" in WIDE and "herd" in NARROW
    for width, wide in ((80, False), (220, True)):
        buffer = io.StringIO()
        print_comparison(Console(file=buffer, width=width), results, "t", wide=wide)
        text = buffer.getvalue()
        assert "herd" in text and "…" not in text
        assert "worse of the util-CV and herding" in " ".join(text.split())
        assert "input: " in text and "were not replayed" in text
    herd = [r.summary["herding"]["index"] for r in results]
    assert herd[0] == 0.0 and herd[1] > herd[0]  # round robin spreads every burst


def test_console_lists_fault_figures(tmp_path: Path) -> None:
    """With faults configured, one line per strategy gives availability, failures, retries,
    detection time and GPU-hours from the summary's elasticity block; without, none."""
    from sim.console import elasticity_notes

    scenario = REPO / "scenarios" / "node_failure.yaml"
    resolved = app.load(scenario, ["duration_s=130"], strategies=("round_robin",))
    results = app.run_all(resolved, tmp_path, keep_records=False)
    lines = elasticity_notes(results)
    assert len(lines) == 1 and lines[0].startswith("round_robin: availability ")
    failed = results[0].summary["elasticity"]["requests"]["failed_total"]
    assert f"failed {failed}" in lines[0] and "GPU-hours" in lines[0]
    smoke = app.load(REPO / "scenarios" / "smoke.yaml", ["duration_s=10", "warmup_s=1"],
                     strategies=("round_robin",))
    assert elasticity_notes(app.run_all(smoke, tmp_path / "s", keep_records=False)) == []
