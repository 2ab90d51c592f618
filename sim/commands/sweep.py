"""``simlb sweep SCENARIO --grid KEY=V1,V2,...``: a grid of scenario variants, one table."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click

from sim.errors import InputError

#: the longest error line printed (as ``sim.cli``)
MAX_LINE = 1000
EXECUTOR_HELP = ("Where simulations run: local worker processes (--jobs of them; 1: in this "
                 "process) or a Ray cluster (pip install 'simlb[distributed]').")


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def fail(exc: Exception, code: int = 2) -> NoReturn:
    """Print ``simlb: error: <exc>`` on one printable line (at most ``MAX_LINE`` characters)
    and exit: the CLI's contract for bad input. Kept here, not imported from ``sim.cli``, so
    the command-line layer has no import cycle."""
    text = " ".join(f"simlb: error: {exc}".splitlines())
    text = "".join(c if c.isprintable() and c != "\ufffd" else "?" for c in text)
    click.echo(text if len(text) <= MAX_LINE else text[:MAX_LINE - 3] + "...", err=True)
    sys.exit(code)


@contextmanager
def task_bar(total: int, enabled: bool, what: str = "runs") -> Iterator[Any]:
    """A rich progress bar over tasks with an ETA; yields ``done(task, cached)`` or None.
    Cached tasks leave the bar's total (they are counted beside it)."""
    if not enabled or total == 0:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("cached {task.fields[cached]}"), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bars:
        bar = bars.add_task(what, total=total, cached=0)

        def done(task: Any, cached: bool) -> None:
            if cached:  # not counted in the bar, so the ETA is that of fresh runs
                fields = bars.tasks[0].fields
                bars.update(bar, total=(bars.tasks[0].total or 1) - 1,
                            cached=fields["cached"] + 1)
            else:
                bars.update(bar, advance=1)
        yield done


def executor_options(func: Any) -> Any:
    """The options ``sweep`` and ``capacity`` share."""
    options = [
        click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
                     help="Override a scenario field for every point (as simlb run)."),
        click.option("--strategy", "strategies", multiple=True, metavar="NAME",
                     help="Only this strategy (repeatable; default: the scenario's)."),
        click.option("--replications", type=click.IntRange(min=1),
                     help="Replications per point (seeds seed..seed+N-1, the same at every "
                          "point and for every strategy)."),
        click.option("--seed", type=click.IntRange(min=0), help="Root seed."),
        click.option("--price", "prices", multiple=True, metavar="GPU=USD",
                     help="Hourly price of one GPU of a type (h100=2.5) or node group; "
                          "repeatable. Adds cost columns."),
        click.option("--executor", type=click.Choice(["local", "ray"]), default="local",
                     show_default=True, help=EXECUTOR_HELP),
        click.option("--address", default=None, metavar="auto|ray://HOST:10001",
                     help="Ray cluster to join (default: start a private local one)."),
        click.option("--jobs", "-j", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Simulations at once (0: one per CPU core)."),
        click.option("--retries", type=click.IntRange(min=0, max=10), default=2,
                     show_default=True, help="Retries of a failed simulation."),
        click.option("--no-cache", "no_cache", is_flag=True,
                     help="Recompute every simulation (results are still cached)."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
        click.option("--no-limits", "no_limits", is_flag=True,
                     help="Skip the scenario's size limits."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.command(name="sweep")
@click.argument("scenario", type=click.Path(path_type=Path))
@click.option("--grid", "grid", multiple=True, metavar="KEY=V1,V2,...",
              help="A scenario key and its values (or start:stop:step); repeatable: the "
                   "cartesian product is run.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder (default: results/sweeps/<scenario name>); finished runs "
                   "cached there are not recomputed.")
@click.option("--no-report", "no_report", is_flag=True, help="Only the table.")
@executor_options
def command(scenario: Path, grid: tuple[str, ...], out: Path | None, no_report: bool,
            overrides: tuple[str, ...], strategies: tuple[str, ...],
            replications: int | None, seed: int | None, prices: tuple[str, ...],
            executor: str, address: str | None, jobs: int, retries: int, no_cache: bool,
            quiet: bool, no_limits: bool) -> None:
    """Run SCENARIO at every point of a grid, for every strategy and replication.

    Writes sweep.parquet and sweep.csv (one row per point x strategy x replication) and a
    report (metrics against the swept key, with 95 % intervals) into the output folder.
    """
    from sim.sweep.prices import parse_prices
    from sim.sweep.report import build_sweep_report
    from sim.sweep.sweep import SweepSpec, plan, run_sweep

    try:
        if not grid:
            raise InputError("expected at least one --grid KEY=V1,V2,...", field="--grid")
        spec = SweepSpec(scenario, grid, overrides, strategies, replications, seed,
                         not no_limits, parse_prices(prices))
        planned = plan(spec)
        points, tasks, keys = planned
        name = points[0].resolved.scenario.name
        folder = out if out is not None else Path("results") / "sweeps" / name
        with task_bar(len({t.key for t in tasks}), not quiet) as done:
            result = run_sweep(spec, folder, executor=executor, jobs=jobs or usable_cpus(),
                               address=address, retries=retries, use_cache=not no_cache,
                               done=done, planned=planned)
        if not no_report and len(result.table):
            report = build_sweep_report(result.table, keys, result.strategies,
                                        folder / "report", f"{name}: sweep")
            click.echo(f"report: {report}")
    except InputError as exc:
        fail(exc)
    n = len(result.strategies)
    click.echo(f"{len(points)} points x {n} {'strategy' if n == 1 else 'strategies'}: "
               f"{result.simulated} simulated, {result.cached} cached, "
               f"{len(result.failures)} failed")
    for path in result.files:
        click.echo(f"{'failures' if path.name == 'failures.csv' else 'table'}: {path}")
    if result.failures:
        first = result.failures[0]
        fail(RuntimeError(f"{len(result.failures)} runs failed after retries (first: point "
                          f"{first.task.point}, {first.task.label}, replication "
                          f"{first.task.replication}: {first.error}); see failures.csv; "
                          f"rerun to retry them (finished runs are cached)"), code=1)
