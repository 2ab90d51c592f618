"""Reliability (issue 13): goodput under overload, size limits, corrupt inputs, racing
writers, orphaned workers, report folders, trace output paths, clusters serving nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

import sim.errors
from sim import app
from sim.cli import main
from sim.model.requests import COMPLETED
from sim.runner import simulate, workload_for

from conftest import expect_error, scenario_dict, write_scenario


def invoke(*args: Any) -> Result:
    """Run ``simlb`` with ``args``."""
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="simlb")


def tiny(**changes: Any) -> dict[str, Any]:
    """A scenario that simulates in a fraction of a second."""
    return scenario_dict(**({"duration_s": 5.0, "warmup_s": 1.0} | changes))


def test_goodput_counts_measured_requests_only_under_overload(tmp_path):
    """At twice the capacity every measured request misses the TTFT SLO, while requests that
    arrived in the warm-up complete inside the window: goodput is the hand count, not the
    throughput."""
    raw = scenario_dict(duration_s=30.0, warmup_s=10.0, drain_timeout_s=5.0)
    raw["workload"]["arrivals"]["params"]["rate_rps"] = 200.0
    raw["slo"] = {"ttft_s": 1.0, "tpot_s": 0.5}
    resolved = app.load(write_scenario(tmp_path, raw))
    result = simulate(resolved, resolved.strategies[0], 0, workload_for(resolved, 0))
    req, s = result.requests, result.summary
    a, b = 10.0, 30.0
    arrival, finish = req["arrival_s"], req["finish_s"]
    done_in_window = (req["status"] == COMPLETED) & (finish >= a) & (finish < b)
    measured = (arrival >= a) & (arrival < b)
    ttft = req["first_token_s"] - arrival
    out = req["output_tokens"]
    tpot = np.where(out > 1, (finish - req["first_token_s"]) / np.maximum(out - 1, 1), 0.0)
    good = done_in_window & measured & (ttft <= 1.0) & (tpot <= 0.5)
    assert (done_in_window & ~measured).sum() > 50  # warm-up arrivals finishing in the window
    assert s["throughput"]["goodput_rps"] == good.sum() / (b - a)
    assert s["throughput"]["goodput_rps"] <= s["throughput"]["completed_rps"] / 2
    assert s["slo"]["attainment"]["all"] < 0.2


HUGE = [
    ("cluster.node_groups.0.count=1000000000000000000000000000000", "count"),
    ("cluster.node_groups.0.count=20000", "limits.max_nodes"),
    ("cluster.node_groups.0.count=true", "expected an integer, got true"),
    ("workload.arrivals={name: gamma, params: {rate_rps: 5, cv: 1.0e-300}}", "params.cv"),
    ("workload.arrivals={name: poisson, params: {rate_rps: 1.0e308}}", "limits.max_requests"),
    ("workload.arrivals={name: poisson, params: {rate_rps: 1.0e9}}", "limits.max_requests"),
    ("duration_s=1.0e308", "limits.max_requests"),
    ("metrics.bucket_s=1.0e-9", "limits.max_timeline_rows"),
    ("metrics.monitor_interval_s=1.0e-9", "limits.max_monitor_samples"),
    ("workload.arrivals={name: mmpp2, params: {low_rps: 4, high_rps: 12, mean_low_s: 1.0e-12, "
     "mean_high_s: 1.0e-12}}", "limits.max_arrival_draws"),
    ("workload.arrivals={name: piecewise, params: {rates_rps: [1, 2], period_s: 1.0e-300}}",
     "limits.max_arrival_draws"),
]


@pytest.mark.parametrize(("assignment", "needle"), HUGE)
def test_runs_too_large_are_refused_on_one_line_before_running(tmp_path: Path,
                                                               assignment: str,
                                                               needle: str) -> None:
    """Finite but huge values give one line naming the field, for validate and run alike,
    and nothing is written."""
    path = write_scenario(tmp_path, tiny())
    expect_error(invoke("run", path, "--out", tmp_path / "out", "-q", "--set", assignment),
                 needle)
    assert not (tmp_path / "out").exists()


def test_limits_are_overridable_in_the_scenario_and_with_no_limits(tmp_path: Path) -> None:
    """A run over a default limit passes with a raised ``limits`` key or ``--no-limits``."""
    path = write_scenario(tmp_path, tiny())
    small = "limits={max_requests: 10}"
    expect_error(invoke("run", path, "--out", tmp_path / "o1", "-q", "--set", small),
                 "limits.max_requests", "above the limit 10")
    assert invoke("run", path, "--out", tmp_path / "o2", "-q", "--set", small,
                  "--no-limits").exit_code == 0
    raised = tiny(limits={"max_requests": 10, "max_timeline_rows": 10**9})
    raised["metrics"] = {"bucket_s": 1e-4}
    bad = write_scenario(tmp_path, raised, "bad.yaml")
    expect_error(invoke("validate", bad), "limits.max_requests")
    assert invoke("validate", bad, "--no-limits").exit_code == 0


def test_endless_scenario_file_is_one_line() -> None:
    """``simlb validate /dev/zero`` reads a bounded amount and says so."""
    expect_error(invoke("validate", "/dev/zero"), "/dev/zero", "larger than")


def test_memory_error_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Running out of memory anyway prints one line (exit 1), no traceback."""
    def exhausted(*args: Any, **kwargs: Any) -> Any:
        raise MemoryError

    monkeypatch.setattr("sim.app.simulate", exhausted)
    result = invoke("run", write_scenario(tmp_path, tiny()), "--out", tmp_path / "o", "-q")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("simlb: out of memory")


# --- corrupt traces (13.3) --------------------------------------------------------------------

def _trace_scenario(tmp_path: Path, trace: dict[str, Any]) -> Path:
    return write_scenario(tmp_path, tiny(workload={"trace": trace}), "trace.yaml")


def _csv_rows(n: int, bad_at: int | None = None) -> str:
    rows = ["t,p,o"] + [f"{i * 0.05:.2f},{100 + i % 7},{10 + i % 5}" for i in range(n)]
    if bad_at is not None:
        rows[bad_at + 1] = f"{bad_at * 0.05:.2f},-3,10"
    return "\n".join(rows) + "\n"


def _damaged_files(tmp_path: Path) -> dict[str, tuple[bytes, dict[str, Any]]]:
    import gzip
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    csv = {"format": "csv", "columns": {"arrival": "t", "prompt_tokens": "p",
                                        "output_tokens": "o"}}
    packed = gzip.compress(_csv_rows(4000).encode())
    flipped = bytearray(packed)
    for i in range(200, 260):
        flipped[i] ^= 0xFF
    buffer = io.BytesIO()
    pq.write_table(pa.table({"t": [0.1 * i for i in range(500)], "p": [100] * 500,
                             "o": [10] * 500}), buffer)
    parquet = buffer.getvalue()
    bad_parquet = bytearray(parquet)
    for i in range(100, 300):
        bad_parquet[i] ^= 0x55
    return {
        "truncated.csv.gz": (packed[: len(packed) // 2], csv),
        "corrupt.csv.gz": (bytes(flipped), csv),
        "garbage.csv.gz": (b"\x1f\x8b" + bytes(range(256)) * 8, csv),
        "truncated.parquet": (parquet[:400], {**csv, "format": "parquet"}),
        "corrupt.parquet": (bytes(bad_parquet), {**csv, "format": "parquet"}),
        "binary.csv": (bytes(range(256)) * 8, csv),
    }


@pytest.mark.parametrize("name", ["truncated.csv.gz", "corrupt.csv.gz", "garbage.csv.gz",
                                  "truncated.parquet", "corrupt.parquet", "binary.csv"])
def test_damaged_traces_are_one_line_naming_the_file(tmp_path: Path, name: str) -> None:
    """A truncated or corrupt gzip or Parquet trace, or binary bytes, give one printable line
    naming the file and exit 2, from validate and run alike; nothing is written."""
    data, trace = _damaged_files(tmp_path)[name]
    (tmp_path / name).write_bytes(data)
    path = _trace_scenario(tmp_path, {**trace, "path": name})
    for result in (invoke("validate", path),
                   invoke("run", path, "--out", tmp_path / "out", "-q")):
        line = expect_error(result, name)
        assert line.isprintable()
    assert not (tmp_path / "out").exists()


def test_validate_refuses_what_run_refuses_beyond_the_first_records(tmp_path: Path) -> None:
    """A bad record after the first 100 fails validate as it fails run, with its line."""
    (tmp_path / "t.csv").write_text(_csv_rows(300, bad_at=250), encoding="utf-8")
    trace = {"format": "csv", "path": "t.csv",
             "columns": {"arrival": "t", "prompt_tokens": "p", "output_tokens": "o"}}
    path = _trace_scenario(tmp_path, trace)
    run_line = expect_error(invoke("run", path, "--out", tmp_path / "out", "-q"), "line 252")
    assert expect_error(invoke("validate", path)) == run_line
    (tmp_path / "t.csv").write_text(_csv_rows(300), encoding="utf-8")
    assert invoke("validate", path).exit_code == 0


# --- racing writers (13.4) and leftovers of killed writes (13.9) ------------------------------

def _write(path: Path, force: bool) -> None:
    from sim.results import write_run

    write_run(path, scenario={"name": "x"}, summary={"n": 1},
              requests={"status": np.zeros(3, dtype=np.int64)}, nodes={"t_s": np.zeros(2)},
              timeline={"t_s": np.zeros(2)}, meta={}, force=force)


def test_final_rename_refuses_a_directory_that_appeared_meanwhile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory another run renamed into place after our checks is never replaced
    without force; the temporary folder is removed."""
    import sim.results

    target = tmp_path / "out" / "seed-1"
    monkeypatch.setattr(sim.results, "check_writable", lambda paths, force: None)
    _write(target, force=False)
    (target / "mine.txt").write_text("other run", encoding="utf-8")
    with pytest.raises(sim.errors.InputError, match="another run wrote it meanwhile"):
        _write(target, force=False)
    assert (target / "mine.txt").exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["seed-1"]
    _write(target, force=True)
    assert not (target / "mine.txt").exists()


def test_stale_temporary_folders_of_killed_writers_are_cleaned(tmp_path: Path) -> None:
    """A hidden temporary folder of a process that no longer exists is removed by the next
    write; a displaced old directory is put back when its replacement never arrived."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    out = tmp_path / "out"
    (out / f".seed-1.tmp-{dead}").mkdir(parents=True)
    (out / f".seed-2.old-{dead}").mkdir()
    (out / f".seed-2.old-{dead}" / "summary.json").write_text("{}", encoding="utf-8")
    _write(out / "seed-1", force=False)
    _write(out / "seed-3", force=False)
    assert sorted(p.name for p in out.iterdir()) == [f".seed-2.old-{dead}", "seed-1", "seed-3"]
    with pytest.raises(sim.errors.InputError, match="exists"):
        _write(out / "seed-2", force=False)  # the put-back old directory is kept
    assert (out / "seed-2" / "summary.json").exists()
    assert sorted(p.name for p in out.iterdir()) == ["seed-1", "seed-2", "seed-3"]


@pytest.mark.slow
def test_two_runs_racing_for_one_out_never_replace_each_other(tmp_path: Path) -> None:
    """Runs started together on the same --out: exactly one writes the results; the others
    exit 2 with one line (refused at start or at the final rename)."""
    path = write_scenario(tmp_path, tiny(duration_s=3.0))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "sim", "run", str(path), "--out", str(out), "-q"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = []
    for proc in procs:
        _, stderr = proc.communicate(timeout=60)
        results.append((proc.returncode, stderr))
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    for code, stderr in results:
        if code == 2:
            assert len(stderr.splitlines()) == 1 and "result directory exists" in stderr
    seed_dir = out / "test" / "round_robin" / "seed-7"
    assert (seed_dir / "summary.json").exists()
    assert sorted(p.name for p in seed_dir.parent.iterdir()) == ["seed-7"]


# --- workers die with their parent (13.5) -----------------------------------------------------

def _descendants(pid: int) -> set[int]:
    """Live (not zombie) descendants of ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_workers_die_with_their_parent(tmp_path: Path, sig: str) -> None:
    """After SIGKILL or SIGTERM of ``simlb run --jobs 2`` its workers, fork server and
    resource tracker end within seconds, and no result directory appears afterwards."""
    import signal
    import time

    raw = tiny(duration_s=4000.0)
    raw["workload"]["arrivals"]["params"]["rate_rps"] = 40.0
    raw["router"]["strategies"] = [{"name": "round_robin"}, {"name": "jsq"}]
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "sim", "run",
                             str(write_scenario(tmp_path, raw)), "--out", str(out), "-q",
                             "--jobs", "2"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    family: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while len(family) < 4 and time.monotonic() < deadline:  # 2 workers, server, tracker
            time.sleep(0.2)
            family = _descendants(proc.pid)
        assert len(family) >= 4, family
        time.sleep(0.5)  # the workers are simulating
        proc.send_signal(getattr(signal, sig))
        proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while _alive(family) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(family)
        time.sleep(0.5)
        assert not list(out.rglob("seed-*"))
    finally:
        proc.kill()
        for pid in _alive(family | _descendants(proc.pid)):
            os.kill(pid, 9)


# --- simlb report --out replaces only its own folders (13.6) ----------------------------------

def test_report_replaces_only_a_folder_it_wrote(tmp_path: Path) -> None:
    """A folder holding an index.html but no marker is refused and left intact; a report
    folder simlb wrote carries the marker and is replaced by the next report."""
    from sim.report.html import MARKER, _write_atomically, check_out_dir

    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("my home page", encoding="utf-8")
    (site / "thesis.tex").write_text("years of work", encoding="utf-8")
    expect_error(invoke("report", tmp_path, "--out", site), str(site),
                 "is not a simlb report")
    assert sorted(p.name for p in site.iterdir()) == ["index.html", "thesis.tex"]
    out = tmp_path / "report"
    _write_atomically(out, {"index.html": "first", "figures/a.png": b"png"})
    assert (out / MARKER).is_file()
    _write_atomically(out, {"index.html": "second"})  # a report simlb wrote is replaced
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "index.html"]
    assert (out / "index.html").read_text(encoding="utf-8") == "second"
    (tmp_path / "empty").mkdir()
    check_out_dir(tmp_path / "empty")
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(sim.errors.InputError, match="is a file"):
        check_out_dir(tmp_path / "file")


# --- simlb trace output paths (13.7) ----------------------------------------------------------

def _azure_trace(tmp_path: Path) -> Path:
    path = tmp_path / "conv.csv"
    rows = [f"2023-11-16 18:15:{i // 4:02d}.{(i % 4) * 250000:06d},{100 + i},{20 + i % 9}"
            for i in range(200)]
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n",
                    encoding="utf-8")
    return path


@pytest.mark.parametrize(("args", "needle"), [
    (["fit", "-o", "{tmp}/missing/twin.yaml"], "does not exist"),
    (["fit", "-o", "{tmp}/conv.csv/twin.yaml"], "is not a folder"),
    (["stats", "--plot", "{tmp}/rates.jpgx"], "expected a file name ending in .png"),
    (["stats", "--plot", "{tmp}/missing/rates.png"], "does not exist"),
    (["stats", "--plot", "{tmp}/conv.csv/rates.png"], "is not a folder"),
])
def test_trace_output_paths_are_checked_first(tmp_path: Path, args: list[str],
                                              needle: str) -> None:
    """Bad output paths of simlb trace give one line before the trace is read."""
    trace = _azure_trace(tmp_path)
    result = invoke("trace", args[0], trace, *[a.format(tmp=tmp_path) for a in args[1:]])
    expect_error(result, needle)


def test_trace_outputs_that_fail_to_write_are_one_line(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A write refused by the system (read-only folder, full disk) is one line, exit 2."""
    import matplotlib.figure

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(13, "Permission denied")

    trace = _azure_trace(tmp_path)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", refuse)
    expect_error(invoke("trace", "stats", trace, "--plot", tmp_path / "r.png"),
                 "cannot write the plot (Permission denied)")
    monkeypatch.setattr(Path, "write_text", refuse)
    expect_error(invoke("trace", "fit", trace, "-o", tmp_path / "twin.yaml"),
                 "cannot write the twin (Permission denied)")


# --- a cluster that serves nothing (13.8) -----------------------------------------------------

@pytest.mark.parametrize(("assignment", "needle"), [
    ("cluster.node_groups.0.max_model_len_tokens=2", "measured requests were rejected"),
    ("workload.arrivals={name: poisson, params: {rate_rps: 0.0001}}", "no request arrived"),
])
def test_a_cluster_serving_nothing_is_not_excellent(tmp_path: Path, assignment: str,
                                                     needle: str) -> None:
    """Every request rejected, or none arriving: grade n/a, one error line, exit 2 (the
    results are written for inspection)."""
    import json

    out = tmp_path / "out"
    result = invoke("run", write_scenario(tmp_path, tiny()), "--out", out, "-q", "--set",
                    assignment)
    line = result.stderr.splitlines()[-1]
    assert result.exit_code == 2, result.output
    assert line.startswith("simlb: error: ") and "served no request" in line and needle in line
    summary = json.loads((out / "test" / "round_robin" / "seed-7" / "summary.json").read_text())
    assert summary["utilization"]["grade"]["grade"] == "n/a"
    assert "n/a" in result.stdout


def test_a_cluster_serving_requests_keeps_its_grade_and_exit_code(tmp_path: Path) -> None:
    """The ordinary case is unchanged: exit 0, a CV grade."""
    result = invoke("run", write_scenario(tmp_path, tiny()), "--out", tmp_path / "o", "-q",
                    "--json")
    assert result.exit_code == 0, result.output
    assert '"grade": "n/a"' not in result.stdout


# --- smaller items (13.9) ---------------------------------------------------------------------

def test_a_strategy_labelled_report_is_refused_at_load(tmp_path: Path) -> None:
    """The label 'report' would collide with the report folder after every run: refused
    before anything runs."""
    raw = tiny()
    raw["router"]["strategies"] = [{"name": "round_robin", "label": "report"}]
    path = write_scenario(tmp_path, raw)
    expect_error(invoke("validate", path), "labelled 'report'")
    expect_error(invoke("run", path, "--out", tmp_path / "out", "-q"), "labelled 'report'")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["run", "report"])
def test_empty_out_is_refused(tmp_path: Path, command: str,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """``--out ''`` would mean the current folder: refused on one line."""
    monkeypatch.chdir(tmp_path)
    path = write_scenario(tmp_path, tiny())
    args = [path, "-q"] if command == "run" else [tmp_path]
    result = invoke(command, *args, "--out", "")
    expect_error(result, "--out", "expected a folder name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


# --- the comparison table fits the terminal (13.10) -------------------------------------------

def test_comparison_table_fits_80_columns_and_wide_shows_every_column(tmp_path: Path) -> None:
    """In 80 columns the narrow table shows without cut cells; --wide (or a wide enough
    terminal) shows every column."""
    import io

    from rich.console import Console

    from sim.console import print_comparison

    raw = tiny()
    raw["router"]["strategies"] = [{"name": "round_robin"}, {"name": "power_of_two",
                                                             "label": "a_rather_long_label"}]
    results = app.run_all(app.load(write_scenario(tmp_path, raw)), tmp_path / "out")

    def shown(width: int, wide: bool) -> str:
        buffer = io.StringIO()
        print_comparison(Console(file=buffer, width=width), results, "test: 2 nodes",
                         wide=wide)
        return buffer.getvalue()

    narrow = shown(80, wide=False)
    assert "…" not in narrow and max(len(line) for line in narrow.splitlines()) <= 80
    assert "a_rather_long_label" in narrow and "goodput" in narrow and "--wide" in narrow
    for text in (shown(80, wide=True), shown(200, wide=False)):
        assert "…" not in text
        assert all(h in text for h in ("TTFT p50/p99 s", "preempt", "rejected", "imbal."))
    assert "--wide" not in shown(200, wide=False)


# --- progress bars reach 100 % and stop their clocks (13.11) ----------------------------------

@pytest.mark.parametrize("jobs", [1, 2])
def test_progress_bars_reach_100_percent_and_stop_their_clocks(tmp_path: Path,
                                                               jobs: int) -> None:
    """A long drain timeout no longer leaves bars at a fraction: each finished run's bar is
    full and its elapsed time frozen."""
    import io
    import time

    from rich.console import Console

    from sim.console import progress_bars

    raw = tiny(drain_timeout_s=600.0)
    raw["router"]["strategies"] = [{"name": "round_robin"}, {"name": "jsq"}]
    resolved = app.load(write_scenario(tmp_path, raw))
    bars: list[Any] = []
    with progress_bars(Console(file=io.StringIO(), width=120), enabled=True) as factory:
        def collect(label: str, replication: int) -> Any:
            bar = factory(label, replication)  # type: ignore[operator]
            bars.append(bar)
            return bar
        app.run_all(resolved, tmp_path / "out", progress=collect, jobs=jobs)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
                len(bars) == 2 and all(b.bars.tasks[b.task].finished for b in bars)):
            time.sleep(0.05)  # with workers, the last messages arrive through a queue
        tasks = [b.bars.tasks[b.task] for b in bars]
        assert len(tasks) == 2
        assert all(t.completed == t.total == 1.0 and t.finished for t in tasks)
        elapsed = [t.elapsed for t in tasks]
        time.sleep(0.1)
        assert [t.elapsed for t in tasks] == elapsed


def test_simlb_run_keeps_only_summaries_in_memory(tmp_path: Path) -> None:
    """``keep_records=False`` (what simlb run uses) returns summaries only, in and out of
    worker processes, so the parent's memory does not grow with every run's columns."""
    raw = tiny()
    raw["router"]["strategies"] = [{"name": "round_robin"}, {"name": "jsq"}]
    resolved = app.load(write_scenario(tmp_path, raw))
    full = app.run_all(resolved, tmp_path / "a")
    for jobs in (1, 2):
        slim = app.run_all(resolved, tmp_path / f"b{jobs}", jobs=jobs, keep_records=False)
        assert [r.summary for r in slim] == [r.summary for r in full]
        assert all(r.requests == {} and r.timeline == {} and r.node_states == {} for r in slim)


def test_trace_command_errors_are_printable(tmp_path: Path) -> None:
    """A binary file given to simlb trace stats: one printable line, no raw bytes."""
    path = tmp_path / "binary.csv"
    path.write_bytes(bytes(range(256)) * 4)
    line = expect_error(invoke("trace", "stats", path, "--format", "azure"), "binary.csv")
    assert line.isprintable()
