"""``simlb report RESULTS_DIR...``: the plotted comparison report of existing results."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sim.commands.options import non_empty_path, one_line
from sim.errors import InputError


def _non_empty(value: str | None) -> Path | None:
    return non_empty_path(value, "--out")


@click.command(name="report")
@click.argument("results_dirs", nargs=-1, required=True, metavar="RESULTS_DIR...",
                type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(), default=None,
              callback=lambda ctx, p, v: _non_empty(v),
              help="Report folder (default: <first RESULTS_DIR>/report); replaced as a whole, "
                   "but only if it is empty or a report simlb wrote (its .simlb-report file).")
@click.option("--baseline", metavar="STRATEGY", default=None,
              help="Strategy the paired differences are taken against (default: the first).")
def command(results_dirs: tuple[Path, ...], out: Path | None, baseline: str | None) -> None:
    """Write an HTML report (with PNG/SVG figures and a Markdown summary) of RESULTS_DIR...

    Each RESULTS_DIR is an output folder, a scenario folder, a strategy folder or a run folder
    written by `simlb run`; nothing is simulated. Several folders holding one scenario at
    different offered loads add p99 TTFT and goodput against load.
    """
    from sim.report import build_report

    try:
        index = build_report(list(results_dirs), out, baseline)
    except InputError as exc:  # same contract as sim.cli: one line, exit code 2
        click.echo(one_line(f"simlb: error: {exc}"), err=True)
        sys.exit(2)
    click.echo(f"report: {index}")
