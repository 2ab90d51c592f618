"""The report of a smoke run: files, self-containment, tables, the load sweep, bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from sim import app
from sim.cli import main
from sim.errors import InputError
from sim.report import build_report

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "scenarios" / "smoke.yaml"
FIGURES = ("ttft_cdf", "e2e_cdf", "headline", "node_load_heatmap", "cv_over_time", "kv_queue",
           "throughput")


def smoke_results(factory: pytest.TempPathFactory) -> Path:
    """Smoke results with 2 replications (so CIs exist), simulated once per session."""
    root = factory.getbasetemp() / "report-smoke-results"
    if not (root / "smoke").is_dir():
        app.run_all(app.load(SMOKE, replications=2), root)
    return root / "smoke"


def smoke_report(factory: pytest.TempPathFactory) -> Path:
    """The report folder of ``smoke_results``, built once per session through the CLI."""
    out = factory.getbasetemp() / "report-smoke"
    if not (out / "index.html").is_file():
        result = CliRunner().invoke(main, ["report", str(smoke_results(factory)),
                                           "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert "index.html" in result.output
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return smoke_report(tmp_path_factory)


def test_every_figure_is_written_as_png_and_svg(report: Path) -> None:
    """Each figure type exists as a non-empty PNG and SVG."""
    for name in FIGURES:
        png, svg = report / "figures" / f"{name}.png", report / "figures" / f"{name}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert "<svg" in svg.read_text(encoding="utf-8")[:2000], name


def test_html_is_self_contained(report: Path) -> None:
    """The page embeds every figure and fetches nothing (no http(s) resource URLs)."""
    html = (report / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html)
    assert "http://" not in html and "https://" not in html
    assert "<link" not in html
    assert html.count('src="data:image/png;base64,') == len(FIGURES)
    assert "default-src 'none'" in html  # the content policy forbids any fetch


def test_markdown_summary_has_the_tables(report: Path) -> None:
    """summary.md holds the scenario brief, the comparison and paired-difference tables."""
    md = (report / "summary.md").read_text(encoding="utf-8")
    assert "| metric | round_robin | least_loaded | power_of_two |" in md
    assert "### Paired differences against round_robin" in md
    for label in ("TTFT p99 (ms)", "goodput (req/s)", "CV kv_occupancy", "imbalance mfu",
                  "quality grade", "cache hit rate (%)", "preemptions", "rejected requests"):
        assert f"| {label} |" in md, label
    assert re.search(r"\| TTFT p50 \(ms\) \| \**[0-9.]+ ± [0-9.]+", md)  # CIs: 2 replications
    assert "| seeds | 2 replication(s): 1, 2 |" in md
    for name in FIGURES:
        assert f"(figures/{name}.png)" in md


def test_runs_table_has_one_row_per_run(report: Path) -> None:
    """runs.csv: 3 strategies x 2 seeds."""
    lines = (report / "runs.csv").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + 6
    assert "latency_s.ttft.p99" in lines[0]


@pytest.mark.slow
def test_load_sweep_figure_from_two_offered_loads(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Two result sets of one scenario at different loads give the sweep figure; the
    baseline applies to both sets; two folders of one result set merge into one set."""
    light = tmp_path / "light"
    app.run_all(app.load(SMOKE, ["duration_s=15", "workload.arrivals.params.low_rps=2",
                                 "workload.arrivals.params.high_rps=5"],
                         strategies=("round_robin", "least_loaded")), light)
    heavy = smoke_results(tmp_path_factory)
    index = build_report([light / "smoke", heavy / "least_loaded", heavy / "power_of_two"],
                         tmp_path / "rep", baseline="least_loaded")
    figures = index.parent / "figures"
    assert (figures / "sweep-smoke.png").is_file() and (figures / "sweep-smoke.svg").is_file()
    md = (index.parent / "summary.md").read_text(encoding="utf-8")
    assert "## Load sweep" in md
    sections = re.findall(r"^## (smoke @ [0-9.]+ req/s)$", md, flags=re.MULTILINE)
    assert len(sections) == 2
    assert len(list(figures.glob("smoke-*-ttft_cdf.png"))) == 2
    assert md.count("### Paired differences against least_loaded") == 2
    assert "round_robin" in md.split("## smoke @")[1] and "round_robin" not in md.split(
        "## smoke @")[2].split("## Load sweep")[0]


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "baseline", "not_a_report"])
def test_bad_input_exits_2_naming_the_path(
        case: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Bad input gives a one-line error naming what is wrong, and exit code 2."""
    target, args, expected = tmp_path / "x", [], ""
    if case == "missing":
        expected = str(target)
    elif case == "empty":
        target.mkdir()
        expected = f"{target}: no result directories found"
    elif case == "corrupt":
        shutil.copytree(smoke_results(tmp_path_factory) / "round_robin", target)
        (target / "seed-2" / "summary.json").write_text("{not json", encoding="utf-8")
        expected = str(target / "seed-2" / "summary.json")
    elif case == "baseline":
        target = smoke_results(tmp_path_factory)
        args, expected = ["--baseline", "nope", "--out", str(tmp_path / "r")], "'nope'"
    else:
        (tmp_path / "keep").mkdir()
        (tmp_path / "keep" / "data.txt").write_text("mine", encoding="utf-8")
        target = smoke_results(tmp_path_factory) / "round_robin" / "seed-1"
        args, expected = ["--out", str(tmp_path / "keep")], "is not a simlb report"
    result = CliRunner().invoke(main, ["report", str(target), *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("simlb: error: "), result.output
    assert expected in lines[0]


def test_library_raises_input_error_without_paths() -> None:
    """build_report with nothing to read raises InputError."""
    with pytest.raises(InputError, match="no result directories"):
        build_report([], "unused")


def test_report_reads_results_only(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Building a report leaves the result directories byte for byte as they were."""
    results = smoke_results(tmp_path_factory)
    before = json.loads((results / "round_robin" / "seed-1" / "summary.json").read_text())
    smoke_report(tmp_path_factory)
    after = json.loads((results / "round_robin" / "seed-1" / "summary.json").read_text())
    assert before == after
    assert not list(results.glob("*/seed-*/report"))


def test_faults_rows_and_recovery_figure(tmp_path: Path) -> None:
    """Runs with failures get the faults rows (availability, failed requests, time to
    detect, GPU-hours) and the recovery figure, whose node count starts at the full
    cluster and drops at the crash."""
    resolved = app.load(REPO / "scenarios" / "node_failure.yaml", ["duration_s=140"],
                        strategies=("round_robin",))
    app.run_all(resolved, tmp_path / "runs", keep_records=False)
    index = build_report([tmp_path / "runs"], tmp_path / "report")
    html = index.read_text(encoding="utf-8")
    for label in ("availability", "failed requests", "time to detect", "GPU-hours"):
        assert label in html
    assert (index.parent / "figures" / "elasticity.png").stat().st_size > 0
    summary = json.loads(next((tmp_path / "runs").rglob("summary.json")).read_text())
    count = summary["elasticity"]["node_count"]
    assert count["t_s"][0] == 0.0 and count["routable"][0] == 8 and min(count["routable"]) == 7
