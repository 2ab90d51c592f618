"""The ``simlb`` command line: run, validate, strategies, overrides and result directories."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

import sim.results
from sim.cli import main
from sim.policy.base import strategies

from conftest import REPO, expect_error, scenario_dict, write_scenario

RUN_FILES = {"summary.json", "requests.parquet", "nodes.parquet", "timeline.parquet",
             "scenario.resolved.yaml", "meta.json"}


def tiny(**changes: Any) -> dict[str, Any]:
    """A scenario that simulates in a fraction of a second (linear costs, 5 s of traffic)."""
    return scenario_dict(**({"duration_s": 5.0, "warmup_s": 1.0} | changes))


def invoke(*args: Any) -> Result:
    """Run ``simlb`` with ``args``."""
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="simlb")


def run(scenario: Path, out: Path, *args: Any) -> Result:
    """``simlb run`` without progress bars into ``out``."""
    return invoke("run", scenario, "--out", out, "--quiet", *args)




def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_run_writes_every_result_file(tmp_path: Path) -> None:
    """A successful run writes the six files of its seed directory and prints the table."""
    result = run(write_scenario(tmp_path, tiny()), tmp_path / "out")
    assert result.exit_code == 0, result.output
    seed_dir = tmp_path / "out" / "test" / "round_robin" / "seed-7"
    assert {p.name for p in seed_dir.iterdir()} == RUN_FILES
    summary = json.loads((seed_dir / "summary.json").read_text(encoding="utf-8"))
    assert summary
    assert "round_robin" in result.stdout
    assert f"results: {tmp_path / 'out' / 'test'}/<strategy>/seed-<k>/" in result.stdout
    assert not list((seed_dir.parent).glob(".*"))  # no temporary folder left


def test_json_output_is_strict_json(tmp_path: Path) -> None:
    """``--json`` prints only JSON (no NaN or infinity), keyed by label and seed."""
    raw = tiny(router={"strategies": [{"name": "round_robin"}, {"name": "jsq"}]})
    result = run(write_scenario(tmp_path, raw), tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output

    def refuse(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    data = json.loads(result.stdout, parse_constant=refuse)
    assert sorted(data) == ["jsq/seed-7", "round_robin/seed-7"]


def test_seed_and_replications_name_the_directories(tmp_path: Path) -> None:
    """``--seed 11 --replications 3`` writes seed-11, seed-12 and seed-13."""
    result = run(write_scenario(tmp_path, tiny()), tmp_path / "out", "--seed", 11,
                 "--replications", 3)
    assert result.exit_code == 0, result.output
    label_dir = tmp_path / "out" / "test" / "round_robin"
    assert sorted(p.name for p in label_dir.iterdir()) == ["seed-11", "seed-12", "seed-13"]
    resolved = yaml.safe_load((label_dir / "seed-12" / "scenario.resolved.yaml").read_text())
    assert (resolved["seed"], resolved["replications"]) == (11, 3)
    assert resolved["run"] == {"strategy": "round_robin", "replication": 1, "seed": 12,
                               "source": str(tmp_path / "s.yaml")}


def test_set_overrides_reach_the_resolved_scenario(tmp_path: Path) -> None:
    """``--set`` changes are validated and stored in scenario.resolved.yaml."""
    result = run(write_scenario(tmp_path, tiny()), tmp_path / "out",
                 "--set", "cluster.node_groups.0.count=3", "--set", "slo.ttft_s=0.25",
                 "--set", "router.strategies.0={name: power_of_two, params: {load: queue}}")
    assert result.exit_code == 0, result.output
    seed_dir = tmp_path / "out" / "test" / "power_of_two" / "seed-7"
    resolved = yaml.safe_load((seed_dir / "scenario.resolved.yaml").read_text())
    assert resolved["cluster"]["node_groups"][0]["count"] == 3
    assert resolved["slo"]["ttft_s"] == 0.25
    assert resolved["router"]["strategies"][0]["params"] == {"load": "queue"}
    assert "test: 3 nodes" in result.stdout


def test_strategy_option_selects_and_adds(tmp_path: Path) -> None:
    """``--strategy`` picks scenario strategies by label and adds registered ones; repeats
    run once."""
    raw = tiny(router={"strategies": [{"name": "random", "label": "rnd"}, {"name": "jsq"}]})
    result = run(write_scenario(tmp_path, raw), tmp_path / "out", "--strategy", "rnd",
                 "--strategy", "least_loaded", "--strategy", "rnd")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out" / "test").iterdir()) == [
        "least_loaded", "rnd"]


def test_existing_result_directory_needs_force(tmp_path: Path) -> None:
    """Without ``--force`` an existing directory is refused before running and left as is."""
    scenario, out = write_scenario(tmp_path, tiny()), tmp_path / "out"
    assert run(scenario, out).exit_code == 0
    seed_dir = out / "test" / "round_robin" / "seed-7"
    (seed_dir / "note.txt").write_text("mine", encoding="utf-8")
    before = tree(out)
    expect_error(run(scenario, out), f"{seed_dir}: result directory exists",
                 "expected a new directory", "--force")
    assert tree(out) == before


def test_force_replaces_the_directory(tmp_path: Path) -> None:
    """With ``--force`` the existing directory is replaced by the new run's files."""
    scenario, out = write_scenario(tmp_path, tiny()), tmp_path / "out"
    assert run(scenario, out).exit_code == 0
    seed_dir = out / "test" / "round_robin" / "seed-7"
    (seed_dir / "note.txt").write_text("mine", encoding="utf-8")
    result = run(scenario, out, "--force", "--set", "cluster.node_groups.0.count=1")
    assert result.exit_code == 0, result.output
    assert {p.name for p in seed_dir.iterdir()} == RUN_FILES
    resolved = yaml.safe_load((seed_dir / "scenario.resolved.yaml").read_text())
    assert resolved["cluster"]["node_groups"][0]["count"] == 1
    assert [p.name for p in seed_dir.parent.iterdir()] == ["seed-7"]


def fail_parquet(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    """Make the parquet writer of ``sim.results`` raise ``exc`` (after the JSON is written)."""

    def boom(*args: Any, **kwargs: Any) -> None:
        raise exc

    monkeypatch.setattr(sim.results.pq, "write_table", boom)


def test_failed_write_leaves_no_partial_directory(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception while writing removes the temporary folder and the folders created for
    it; no seed-* directory appears."""
    fail_parquet(monkeypatch, RuntimeError("disk on fire"))
    result = run(write_scenario(tmp_path, tiny()), tmp_path / "out")
    assert isinstance(result.exception, RuntimeError)
    assert not (tmp_path / "out").exists()


def test_failed_forced_write_keeps_the_old_directory(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A forced rerun that fails while writing leaves the previous results untouched."""
    scenario, out = write_scenario(tmp_path, tiny()), tmp_path / "out"
    assert run(scenario, out).exit_code == 0
    before = tree(out)
    fail_parquet(monkeypatch, KeyboardInterrupt())
    result = run(scenario, out, "--force")
    assert result.exit_code == 1  # click reports the interrupt as "Aborted!"
    assert tree(out) == before


def test_unwritable_output_is_a_one_line_error(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """An OSError while writing gives one line naming the directory, and exit code 2."""
    fail_parquet(monkeypatch, OSError(28, "No space left on device"))
    result = run(write_scenario(tmp_path, tiny()), tmp_path / "out")
    seed_dir = tmp_path / "out" / "test" / "round_robin" / "seed-7"
    expect_error(result, f"{seed_dir}: cannot write the result directory",
                 "No space left on device")
    assert not (tmp_path / "out").exists()  # no empty folders left behind either


def test_out_below_a_file_fails_before_running(tmp_path: Path) -> None:
    """``--out`` under an existing file is refused before anything is simulated."""
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    result = run(write_scenario(tmp_path, tiny()), blocker / "out")
    expect_error(result, f"{blocker} is a file; expected a folder for the results")


@pytest.mark.parametrize(("args", "needles"), [
    (["--set", "duration_s"], ["--set: expected key.path=value, got 'duration_s'"]),
    (["--set", "duration_s.x=1"], ["--set duration_s.x: duration_s is a value (5.0), not a "
                                   "mapping or list"]),
    (["--set", "cluster.node_groups.2.count=1"],
     ["--set cluster.node_groups.2.count: cluster.node_groups.2: expected a list index (0..0)"]),
    (["--set", "cluster.node_groups.0.cuont=1"],
     ["cluster.node_groups.0.cuont: unknown key; did you mean 'count'?", "expected one of:"]),
    (["--set", "router.strategies.0.params.laod=1"],
     ["router.strategies.0.params.laod: unknown key"]),
    (["--set", "duration_s=soon"],
     ["duration_s: Input should be a valid number", "(got 'soon')"]),
    (["--strategy", "round_robn"],
     ["--strategy: unknown strategy 'round_robn'", "did you mean 'round_robin'",
      "expected a registered name or a label"]),
    (["--strategy", "power_of_two", "--set", "router.strategies.0.params.x=1"],
     ["router.strategies.0.params.x: unknown key"]),
], ids=["set-no-equals", "set-through-scalar", "set-index-out-of-range", "set-typo-key",
        "set-typo-param", "set-bad-value", "strategy-unknown", "strategy-with-bad-scenario"])
def test_bad_options_name_file_and_field(tmp_path: Path, args: list[str],
                                         needles: list[str]) -> None:
    """Bad ``--set`` and ``--strategy`` values give one line naming the scenario and field."""
    scenario, out = write_scenario(tmp_path, tiny()), tmp_path / "out"
    expect_error(run(scenario, out, *args), f"{scenario}: ", *needles)
    assert not out.exists()


def test_missing_scenario_for_run(tmp_path: Path) -> None:
    """``simlb run`` on a missing file fails the same way as validate."""
    expect_error(run(tmp_path / "gone.yaml", tmp_path / "out"),
                 f"{tmp_path / 'gone.yaml'}: file not found")


@pytest.mark.parametrize(("args", "needles"), [
    (["run", "s.yaml", "--seed", "-1"], ["simlb run: Invalid value for '--seed'", "x>=0"]),
    (["run", "s.yaml", "--replications", "0"], ["Invalid value for '--replications'"]),
    (["run", "s.yaml", "--sed", "3"], ["No such option '--sed'", "--seed"]),
    (["validate"], ["simlb validate: Missing argument 'FILES...'"]),
    (["frobnicate"], ["No such command 'frobnicate'"]),
], ids=["negative-seed", "zero-replications", "unknown-option", "no-files", "no-command"])
def test_usage_errors_are_one_line(args: list[str], needles: list[str]) -> None:
    """Click's usage errors are shortened to one line with exit code 2."""
    expect_error(invoke(*args), *needles, "--help')")


def test_strategies_lists_every_registered_name() -> None:
    """``simlb strategies`` prints each registered name with its summary line."""
    result = invoke("strategies")
    assert result.exit_code == 0, result.output
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == strategies.names()


def test_strategies_params_shows_parameters() -> None:
    """``--params`` adds each strategy's parameters under its name."""
    result = invoke("strategies", "--params")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("power_of_two "))
    assert lines[at + 1].strip().startswith("load: ")
    assert "inflight_requests" in lines[at + 1]


def test_python_m_sim_exit_code_and_single_stderr_line(tmp_path: Path) -> None:
    """``python -m sim`` exits with 2 and prints exactly one stderr line, no traceback."""
    path = write_scenario(tmp_path, scenario_dict(duration_s=float("nan")))
    proc = subprocess.run([sys.executable, "-m", "sim", "run", str(path), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True,
                          cwd=REPO, timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"simlb: error: {path}: duration_s: ")
    assert "finite number" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_run_with_report_writes_the_html_report(tmp_path):
    """--report builds the report of the runs it just made, beside them."""
    path = write_scenario(tmp_path, scenario_dict(duration_s=20.0, warmup_s=2.0))
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "out"),
                                       "--quiet", "--report"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "test" / "report" / "index.html").is_file()
    assert "report:" in result.output


# --- parallel runs (--jobs) -------------------------------------------------------------------

def test_jobs_give_the_same_results_as_one_run_at_a_time(tmp_path: Path) -> None:
    """``--jobs 2`` (worker processes) writes the same summaries, request records and table
    as running one simulation at a time."""
    raw = tiny(router={"strategies": [{"name": "round_robin"}, {"name": "jsq"},
                                      {"name": "power_of_two"}]})
    path = write_scenario(tmp_path, raw)
    serial = run(path, tmp_path / "a", "--replications", 2)
    parallel = run(path, tmp_path / "b", "--replications", 2, "--jobs", 2)
    assert serial.exit_code == 0, serial.output
    assert parallel.exit_code == 0, parallel.output
    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert sorted(a) == sorted(b)
    assert len([f for f in a if f.endswith("summary.json")]) == 6
    for name in a:
        if name.endswith(("summary.json", "scenario.resolved.yaml")):
            assert a[name] == b[name], name
    import pyarrow.parquet as pq
    for name in (n for n in a if n.endswith("requests.parquet")):
        assert pq.read_table(tmp_path / "a" / name).equals(pq.read_table(tmp_path / "b" / name))
    table_lines = [line for line in serial.stdout.splitlines() if "│" in line]
    assert table_lines == [line for line in parallel.stdout.splitlines() if "│" in line]


def test_a_failing_run_in_a_worker_is_one_line_and_leaves_no_half_result(
        tmp_path: Path) -> None:
    """An input error that only the run finds (a bad trace record deep in the file) stops
    ``--jobs`` runs with the usual one-line message and exit code 2."""
    rows = [f"{i * 0.01},10,5" for i in range(300)] + ["3.0,oops,5"]
    trace = tmp_path / "v.csv"
    trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n" + "\n".join(rows)
                     + "\n", encoding="utf-8")
    raw = tiny(workload={"trace": {"format": "vidur", "path": str(trace)}},
               router={"strategies": [{"name": "round_robin"}, {"name": "jsq"}]})
    result = run(write_scenario(tmp_path, raw), tmp_path / "out", "--jobs", 2)
    expect_error(result, str(trace), "line 302, column 'num_prefill_tokens'")
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_negative_jobs_is_a_usage_error(tmp_path: Path) -> None:
    """``--jobs -1`` is refused on one line before anything runs."""
    result = run(write_scenario(tmp_path, tiny()), tmp_path / "out", "--jobs", -1)
    expect_error(result, "--jobs", "-1")
    assert not (tmp_path / "out").exists()
