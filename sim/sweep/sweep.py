"""``simlb sweep``: every grid point x strategy x replication, one table, one report.

Output folder (default ``results/sweeps/<scenario>``): ``cache/`` (one record per finished
task, so an interrupted sweep resumes), ``sweep.parquet`` and ``sweep.csv`` (the tidy table,
``sim.sweep.table``), ``failures.csv`` when tasks failed every retry, and ``report/`` (figures
and ``index.html``, ``sim.sweep.report``). Tables are written only once every task has ended.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sim.sweep.cache import TaskCache
from sim.sweep.executors import Failure, open_backend, run_tasks
from sim.sweep.grid import Point, build_points, parse_axes
from sim.sweep.prices import gpus, hourly_cost
from sim.sweep.table import frame, row, write_table, write_text
from sim.sweep.tasks import Task, point_tasks


@dataclass
class SweepResult:
    """What a sweep produced."""

    table: pd.DataFrame
    grid_keys: list[str]
    strategies: list[str]
    failures: list[Failure] = field(default_factory=list)
    out: Path = Path()
    files: list[Path] = field(default_factory=list)
    cached: int = 0
    simulated: int = 0


@dataclass(frozen=True)
class SweepSpec:
    """The command line of one sweep."""

    scenario: Path
    grid: tuple[str, ...]
    overrides: tuple[str, ...] = ()
    strategies: tuple[str, ...] = ()
    replications: int | None = None
    seed: int | None = None
    limits: bool = True
    prices: dict[str, float] = field(default_factory=dict)


def plan(spec: SweepSpec) -> tuple[list[Point], list[Task], list[str]]:
    """Validate every point and list its tasks (nothing runs).

    Raises:
        InputError: a bad scenario, override, grid key or value (naming the point).
    """
    axes = parse_axes(spec.grid)
    points = build_points(spec.scenario, axes, spec.overrides, strategies=spec.strategies,
                          replications=spec.replications, seed=spec.seed, limits=spec.limits)
    for point in points:  # refuse a missing price before anything runs
        hourly_cost(point.resolved, spec.prices)
    tasks = [t for p in points for t in point_tasks(p.index, p.resolved)]
    return points, tasks, [a.key for a in axes]


def run_sweep(spec: SweepSpec, out: Path, *, executor: str = "local", jobs: int = 1,
              address: str | None = None, retries: int = 2, use_cache: bool = True,
              done: Callable[[Task, bool], None] | None = None,
              planned: tuple[list[Point], list[Task], list[str]] | None = None) -> SweepResult:
    """Run (or resume) a sweep and write its table; the report is ``sim.sweep.report``'s."""
    points, tasks, keys = planned or plan(spec)
    cache = TaskCache(out / "cache", enabled=use_cache)
    backend = open_backend(executor, jobs, address)
    try:
        records, failures = run_tasks(backend, tasks, cache, retries=retries, done=done)
    finally:
        backend.close()
    rows = []
    for task in tasks:
        record = records.get(task.key)
        if record is None:
            continue
        point = points[task.point]
        r = row(task, point.values, point.resolved.scenario.seed + task.replication, record)
        rows.append(r | _cluster_columns(point, spec.prices))
    df = frame(rows, keys)
    files = list(write_table(df, out)) if rows else []
    if not rows:  # nothing finished: no table, and none left from an older run
        for stale in ("sweep.parquet", "sweep.csv"):
            (out / stale).unlink(missing_ok=True)
    if failures:
        files.append(write_failures(failures, points, out))
    else:
        (out / "failures.csv").unlink(missing_ok=True)  # a previous run's
    labels = list(dict.fromkeys(c.label for p in points for c in p.resolved.strategies))
    simulated = len({t.key for t in tasks}) - cache.hits - len(failures)
    return SweepResult(df, keys, labels, failures, out, files, cache.hits, simulated)


def _cluster_columns(point: Point, prices: dict[str, float]) -> dict[str, float | int]:
    """Nodes, GPUs and (with prices) the cluster's hourly cost, for the cost curves."""
    counts = gpus(point.resolved)
    cost = hourly_cost(point.resolved, prices)
    return {"cluster.nodes": len(point.resolved.node_specs),
            "cluster.gpus": sum(counts.values()),
            "cluster.usd_per_hour": cost if math.isfinite(cost) else math.nan}


def write_failures(failures: Sequence[Failure], points: Sequence[Point], out: Path) -> Path:
    """``failures.csv``: each task that failed every attempt, with its last error."""
    df = pd.DataFrame([{"point": f.task.point,
                        "values": repr(points[f.task.point].values),
                        "strategy": f.task.label, "replication": f.task.replication,
                        "attempts": f.attempts, "error": f.error} for f in failures])
    path = out / "failures.csv"
    write_text(path, df.to_csv(index=False, lineterminator="\n"))
    return path
