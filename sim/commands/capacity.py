"""``simlb capacity SCENARIO --slo ttft_p99_s=1 ...``: highest rate or fewest nodes in SLO."""

from __future__ import annotations

from pathlib import Path

import click

from sim.commands.sweep import executor_options, fail, usable_cpus
from sim.errors import InputError


def _range(value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    lo, _, hi = value.partition(":")
    try:
        pair = float(lo), float(hi)
    except ValueError:
        pair = (-1.0, -1.0)
    if not 0 < pair[0] < pair[1] or not all(v < float("inf") for v in pair):
        raise click.BadParameter(f"expected LO:HI with 0 < LO < HI, got {value!r}",
                                 param_hint="--rate-range")
    return pair


@click.command(name="capacity")
@click.argument("scenario", type=click.Path(path_type=Path))
@click.option("--slo", "slos", multiple=True, metavar="NAME=LIMIT", required=True,
              help="An objective: <ttft|tpot|e2e|itl|queueing>_<p50|p90|p95|p99|p999|mean|"
                   "max>_s=SECONDS, or attainment=FRACTION; repeatable (all must hold).")
@click.option("--vary", type=click.Choice(["rate", "nodes"]), default="rate",
              show_default=True, help="Search the highest rate, or the fewest nodes per "
                                      "node group for a rate.")
@click.option("--rate-key", default=None, metavar="KEY",
              help="Scenario key holding the rate (default: the arrival process's *_rps "
                   "parameters, scaled together).")
@click.option("--rate-range", default=None, metavar="LO:HI", callback=lambda c, p, v: _range(v),
              help="Bracket the rate search to LO:HI req/s (default: double or halve from "
                   "the scenario's rate).")
@click.option("--tol", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop bisecting at this many req/s (default: 2 % of the start rate).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="--vary nodes: the rate to hold (default: the scenario's).")
@click.option("--group", "groups", multiple=True, metavar="NAME",
              help="--vary nodes: only this node group (repeatable; default: each group).")
@click.option("--max-nodes", type=click.IntRange(min=1), default=1024, show_default=True,
              help="--vary nodes: the most nodes tried per group.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder (default: results/capacity/<scenario name>).")
@executor_options
def command(scenario: Path, slos: tuple[str, ...], vary: str, rate_key: str | None,
            rate_range: tuple[float, float] | None, tol: float | None, rate: float | None,
            groups: tuple[str, ...], max_nodes: int, out: Path | None,
            overrides: tuple[str, ...], strategies: tuple[str, ...],
            replications: int | None, seed: int | None, prices: tuple[str, ...],
            executor: str, address: str | None, jobs: int, retries: int, no_cache: bool,
            quiet: bool, no_limits: bool) -> None:
    """Per strategy, the highest sustainable rate meeting the SLOs (--vary rate), or the
    fewest nodes of each node group holding a rate (--vary nodes).

    A run whose queue grows through the measurement window, or that leaves measured requests
    unfinished, fails the SLOs. Writes capacity.csv (the recommendation), evaluations.csv
    (every run) and a report with the knee plot into the output folder.
    """
    from sim.sweep.cache import TaskCache
    from sim.sweep.capacity import CapacitySpec, run_search, start
    from sim.sweep.capacity_report import recommendations, sentences, write_report
    from sim.sweep.executors import open_backend
    from sim.sweep.prices import hourly_cost, parse_prices
    from sim.sweep.slo import parse_slos
    from sim.sweep.table import write_table

    try:
        price_map = parse_prices(prices)
        spec = CapacitySpec(scenario, parse_slos(slos), vary, overrides,  # type: ignore[arg-type]
                            strategies, replications, seed, not no_limits, rate_key,
                            rate_range, tol, rate, groups, max_nodes)
        search = start(spec)
        if vary == "rate":
            hourly_cost(search.base_resolved, price_map)  # a missing price fails now
        name = search.base_resolved.scenario.name
        folder = out if out is not None else Path("results") / "capacity" / name
        cache = TaskCache(folder / "cache", enabled=not no_cache)
        backend = open_backend(executor, jobs or usable_cpus(), address)
        try:
            with _bar(quiet) as (done, submitted):
                run_search(search, backend, cache, retries=retries, done=done,
                           submitted=submitted)
        finally:
            backend.close()
        table = recommendations(search, price_map)
        words = sentences(table, search)
        import pandas as pd

        write_table(table, folder, "capacity")
        write_table(pd.DataFrame(search.evaluations), folder, "evaluations")
        report = write_report(search, table, words, folder, f"{name}: capacity")
    except InputError as exc:
        fail(exc)
    for line in words:
        click.echo(line)
    click.echo(f"table: {folder / 'capacity.csv'}\nreport: {report}")
    if search.failures:
        first = search.failures[0]
        fail(RuntimeError(f"{len(search.failures)} runs failed after retries (first: "
                          f"{first.task.label}, replication {first.task.replication}: "
                          f"{first.error}); their searches ended early; rerun to retry"),
             code=1)


class _bar:
    """A progress bar whose total grows with each round of the search."""

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def __enter__(self):  # type: ignore[no-untyped-def]
        if self.quiet:
            return None, None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.bars = Progress(TextColumn("capacity search"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("round {task.fields[round]}"), TimeElapsedColumn(),
                             console=Console(stderr=True))
        self.bars.__enter__()
        self.task = self.bars.add_task("search", total=0, round=0)

        def done(task: object, cached: bool) -> None:
            self.bars.update(self.task, advance=1)

        def submitted(n: int) -> None:
            t = self.bars.tasks[0]
            self.bars.update(self.task, total=(t.total or 0) + n, round=t.fields["round"] + 1)
        return done, submitted

    def __exit__(self, *exc: object) -> None:
        if not self.quiet:
            self.bars.__exit__(None, None, None)
