"""``simlb sweep``: grids, the tidy table, common random numbers, caching and resuming,
retries, and one-line errors. Uses the smoke scenario, shortened."""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from sim.cli import main
from sim.sweep import SweepError
from sim.sweep.cache import TaskCache
from sim.sweep.executors import InProcess, LocalProcesses, Outcome, run_tasks
from sim.sweep.grid import expand, parse_axes, parse_axis
from sim.sweep.sweep import SweepSpec, plan, run_sweep
from sim.sweep.tasks import Task

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "scenarios" / "smoke.yaml"
SHORT = ("duration_s=12", "warmup_s=2", "drain_timeout_s=30")
RATE = "workload.arrivals.params.high_rps"


def small_spec(**changes: object) -> SweepSpec:
    args: dict = {"scenario": SMOKE, "grid": (f"{RATE}=8,14", "cluster.node_groups.0.count=1,2"),
                  "overrides": SHORT, "replications": 2}
    args.update(changes)
    return SweepSpec(**args)


def test_axis_values_are_yaml_split_at_top_level_commas():
    axis = parse_axis("workload.arrivals={name: poisson, params: {rate_rps: 2}},{name: x}")
    assert axis.values == ({"name": "poisson", "params": {"rate_rps": 2}}, {"name": "x"})
    assert parse_axis("a.b=1,2.5,true,text").values == (1, 2.5, True, "text")
    assert parse_axis("a=1:2:0.25").values == (1.0, 1.25, 1.5, 1.75, 2.0)
    assert parse_axis("a=2:10:4").values == (2, 6, 10)
    assert expand(parse_axes(["a=1,2", "b=x,y"])) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]


@pytest.mark.parametrize("spec", ["noequals", "=1,2", "a..b=1", "a=1,,2", "a=1,1", "a=5:1:1",
                                  "a=0:1:0"])
def test_bad_axes_are_refused(spec):
    with pytest.raises(SweepError):
        parse_axis(spec)


def test_table_has_a_row_per_point_strategy_and_replication(tmp_path):
    result = run_sweep(small_spec(), tmp_path, jobs=1)
    df = pd.read_parquet(tmp_path / "sweep.parquet")
    assert len(df) == 4 * 3 * 2 == result.simulated and not result.failures
    assert list(df.columns[:4]) == ["point", RATE, "cluster.node_groups.0.count", "strategy"]
    for col in ("replication", "seed", "stable", "latency_s.ttft.p99",
                "throughput.goodput_rps", "cluster.gpus"):
        assert col in df
    # common random numbers: replication k has seed 1 + k at every point, for every strategy
    assert (df["seed"] == 1 + df["replication"]).all()
    offered = df.groupby(["point", "replication"])["requests.arrived"].nunique()
    assert (offered == 1).all()  # every strategy saw the same requests
    csv = pd.read_csv(tmp_path / "sweep.csv")
    assert csv.shape == df.shape


def test_cached_runs_are_not_recomputed_and_give_the_same_bytes(tmp_path):
    run_sweep(small_spec(), tmp_path, jobs=1)
    first = (tmp_path / "sweep.csv").read_bytes()
    again = run_sweep(small_spec(), tmp_path, jobs=1)
    assert again.cached == 24 and again.simulated == 0
    assert (tmp_path / "sweep.csv").read_bytes() == first
    # a grown grid reuses the runs it shares with the old one
    grown = run_sweep(small_spec(grid=(f"{RATE}=8,14,20", "cluster.node_groups.0.count=1,2")),
                      tmp_path, jobs=1)
    assert grown.cached == 24 and grown.simulated == 12


class Flaky:
    """A backend whose tasks fail their first ``fail_first`` attempts (all, if < 0)."""

    def __init__(self, fail_first: int):
        self.fail_first, self.seen = fail_first, {}

    def run(self, tasks: Sequence[Task]) -> Iterator[Outcome]:
        for task, outcome in InProcess().run(tasks):
            n = self.seen[task.key] = self.seen.get(task.key, 0) + 1
            yield task, (RuntimeError("worker lost") if self.fail_first < 0
                         or n <= self.fail_first else outcome)

    def close(self) -> None:
        pass


def test_failed_runs_are_retried_then_reported(tmp_path):
    _, tasks, _ = plan(small_spec(grid=(f"{RATE}=8",), replications=1))
    records, failures = run_tasks(Flaky(1), tasks, TaskCache(tmp_path / "a"), retries=2)
    assert len(records) == len(tasks) and not failures
    records, failures = run_tasks(Flaky(-1), tasks, TaskCache(tmp_path / "b"), retries=2)
    assert not records and len(failures) == len(tasks)
    assert {f.attempts for f in failures} == {3} and "worker lost" in failures[0].error


class Crash:
    """Unpickling it ends the process at once, as an out-of-memory kill would."""

    def __reduce__(self):
        return os._exit, (3,)


def test_a_task_killing_its_worker_fails_alone_and_the_others_finish(tmp_path):
    _, tasks, _ = plan(small_spec(grid=(f"{RATE}=8,10",), replications=1))
    poison = dataclasses.replace(tasks[0], key="poison", payload=pickle.dumps(Crash()))
    backend = LocalProcesses(2)
    try:
        records, failures = run_tasks(backend, [poison, *tasks], TaskCache(tmp_path),
                                      retries=1)
    finally:
        backend.close()
    assert set(records) == {t.key for t in tasks}
    assert [(f.task.key, f.attempts) for f in failures] == [("poison", 2)]
    assert "worker process ended abruptly" in failures[0].error


def test_local_processes_give_the_same_bytes_as_one_process(tmp_path):
    run_sweep(small_spec(), tmp_path / "one", jobs=1)
    run_sweep(small_spec(), tmp_path / "two", jobs=2)
    for name in ("sweep.csv", "sweep.parquet"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


@pytest.mark.slow
def test_ray_gives_the_same_bytes_as_local(tmp_path):
    pytest.importorskip("ray")
    spec = small_spec(replications=1)
    run_sweep(spec, tmp_path / "local", jobs=1)
    run_sweep(spec, tmp_path / "ray", executor="ray", jobs=2)  # a private local Ray cluster
    for name in ("sweep.csv", "sweep.parquet"):
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes()


def _sweep_cli(out: Path, points: int) -> list[str]:
    return [sys.executable, "-m", "sim", "sweep", str(SMOKE), "--grid",
            f"{RATE}=8:{8 + points - 1}:1", "--set", "duration_s=100", "--strategy",
            "round_robin", "-j", "1", "--quiet", "--no-report", "--out", str(out)]


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_recomputing_finished_runs(tmp_path):
    out, points = tmp_path / "sweep", 30
    proc = subprocess.Popen(_sweep_cli(out, points), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list((out / "cache").glob("*.json"))) < 3:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p: p.stat().st_mtime_ns for p in (out / "cache").glob("*.json")}
    assert 3 <= len(finished) < points, "the sweep ended before it could be killed"
    assert not (out / "sweep.csv").exists()
    done = subprocess.run(_sweep_cli(out, points), capture_output=True, text=True, cwd=REPO,
                          check=True)
    assert f"{points - len(finished)} simulated, {len(finished)} cached" in done.stdout
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # untouched
    assert len(pd.read_csv(out / "sweep.csv")) == points


@pytest.mark.parametrize(("args", "expected"), [
    (["--grid", "cluster.node_groups.0.cuont=1,2"], "cuont"),
    (["--grid", "cluster.node_groups.0.count=1,-2"], "count=-2"),
    (["--grid", "router.telemetry_interval_s=fast"], "telemetry_interval_s"),
    (["--grid", "cluster.node_groups.5.count=1"], "list index"),
    (["--grid", "nonsense"], "KEY=V1,V2"),
    (["--grid", f"{RATE}=8", "--price", "h100=cheap"], "--price"),
    (["--grid", f"{RATE}=8", "--price", "h100=2"], "no price for node group"),
    (["--grid", f"{RATE}=8", "--executor", "ray", "--address", "ray://127.0.0.1:1"], "ray"),
])
def test_bad_input_is_one_line_and_exit_2(args, expected, tmp_path):
    if "ray" in args and expected == "ray":
        pytest.importorskip("ray")
    result = CliRunner().invoke(main, ["sweep", str(SMOKE), *args, "--out", str(tmp_path),
                                       "-q"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("simlb: error:"), result.output
    assert expected in lines[0]
    assert not (tmp_path / "cache").exists()


def test_scenario_price_is_read_and_price_option_wins() -> None:
    """A node group's usd_per_gpu_hour prices the cluster; --price for its group wins."""
    from sim import app
    from sim.sweep.prices import hourly_cost

    resolved = app.load(REPO / "scenarios" / "capacity_h100.yaml")
    assert hourly_cost(resolved, {}) == pytest.approx(4 * 2.5)
    assert hourly_cost(resolved, {"h100": 3.0}) == pytest.approx(4 * 3.0)


def test_cache_key_follows_the_content_of_profile_and_trace_files(tmp_path):
    """A profile edited in place gets new cache keys (no stale records); the same content at
    the same path keeps them."""
    import copy

    from sim.build import resolve
    from sim.model.profile import write_profile
    from sim.scenario import parse_scenario
    from sim.sweep.tasks import task_key

    from conftest import scenario_dict, tiny_profile_data

    profile = tmp_path / "p.json"
    raw = scenario_dict()
    group = raw["cluster"]["node_groups"][0]
    group["cost_model"] = {"name": "profile", "params": {"profile": str(profile)}}
    group["batcher"] = {"name": "continuous",
                        "params": {"max_num_seqs": 8, "max_num_batched_tokens": 16}}

    def key() -> str:
        resolved = resolve(parse_scenario(copy.deepcopy(raw), "s.yaml"), "s.yaml", tmp_path)
        return task_key(resolved, 0, 0)

    data = tiny_profile_data()
    write_profile(data, profile)
    first = key()
    write_profile(data, profile)
    assert key() == first
    data["step_model"]["cpu_overhead_ms"] = 0.4
    write_profile(data, profile)
    assert key() != first
