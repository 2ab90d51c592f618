"""The ``simlb`` command line. Commands only parse arguments and call the library.

Bad input (a scenario, override, profile or name) prints one line and exits with code 2;
a simulation failure exits with code 1.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from sim.errors import InputError, SimulationError

#: the longest error line printed (a message quoting a huge value is cut)
_MAX_LINE = 1000


def one_line(message: str) -> str:
    """``message`` on one printable line: line breaks joined, control and undecodable
    characters (a binary file's bytes) shown as ``?``, cut to ``_MAX_LINE`` characters."""
    text = " ".join(message.splitlines())
    text = "".join(c if c.isprintable() and c != "\ufffd" else "?" for c in text)
    return text if len(text) <= _MAX_LINE else text[:_MAX_LINE - 3] + "..."


_one_line = one_line  # the older private name, used by command modules


def _fail(message: str, code: int) -> NoReturn:
    """Print ``message`` as one line on stderr and exit with ``code``."""
    click.echo(one_line(message), err=True)
    sys.exit(code)


def _handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except InputError as exc:
            _fail(f"simlb: error: {exc}", 2)
        except SimulationError as exc:
            _fail(f"simlb: simulation failed: {exc}", 1)
        except MemoryError:
            _fail(_OUT_OF_MEMORY, 1)
    return wrapper


_OUT_OF_MEMORY = ("simlb: out of memory: the run needs more memory than this machine has; "
                  "shorten duration_s, lower the load or the replications, run with fewer "
                  "--jobs, or lower the scenario's limits (docs/scenarios.md)")


class _UsageLine(click.ClickException):
    """A command-line usage error shown on one line (click adds the usage text otherwise)."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        """Print the one-line message on stderr."""
        click.echo(f"simlb: error: {self.format_message()}", err=True)


def _usage_line(exc: click.UsageError) -> click.ClickException:
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):
        return exc  # not an error: the help text is what the user asked for
    where = exc.ctx.command_path if exc.ctx else "simlb"
    return _UsageLine(f"{where}: {one_line(exc.format_message())} (see '{where} --help')")


class _Group(click.Group):
    """The ``simlb`` group: usage errors of it and its commands become one-line messages."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        """Parse the group's own options; usage errors are shown on one line."""
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _usage_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        """Parse and run the sub-command; usage errors and bad input are shown on one line
        (this also covers the sub-command groups added from ``sim.commands``)."""
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _usage_line(exc) from None
        except InputError as exc:
            _fail(f"simlb: error: {exc}", 2)
        except SimulationError as exc:
            _fail(f"simlb: simulation failed: {exc}", 1)
        except MemoryError:
            _fail(_OUT_OF_MEMORY, 1)


#: workload warnings that ``loss_lines`` words again (validate's warnings, run's lines under
#: the table), so they are not printed twice
_COUNTED = ("%d of %d outputs cut to", "%d of %d requests exceed the context")


class _WorkloadWarnings(logging.Handler):
    """Print the workload package's warnings as one ``simlb: warning:`` line each, except
    those the input accounting reports anyway (``_COUNTED``)."""

    def emit(self, record: logging.LogRecord) -> None:
        """Echo the record on stderr unless it is a counted loss."""
        if not str(record.msg).startswith(_COUNTED):
            click.echo(one_line(f"simlb: warning: {record.getMessage()}"), err=True)


@contextlib.contextmanager
def workload_warnings() -> Iterator[None]:
    """Route ``sim.workload``'s warnings through ``_WorkloadWarnings`` for a command."""
    logger = logging.getLogger("sim.workload")
    handler = _WorkloadWarnings(logging.WARNING)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def non_empty_path(value: str | None, option: str) -> Path | None:
    """``value`` as a Path; an empty one (which would mean the current folder) is refused.

    Raises:
        click.BadParameter: ``value`` is empty or blank.
    """
    if value is None:
        return None
    if not value.strip():
        raise click.BadParameter(f"expected a folder name, got {value!r} (use . for the "
                                 f"current folder)", param_hint=option)
    return Path(value)


@click.group(cls=_Group)
@click.version_option(package_name="simlb")
def main() -> None:
    """simlb: compare load-balancing strategies on a simulated LLM inference cluster."""


@main.command()
@click.argument("scenario", type=click.Path(path_type=Path))
@click.option("--strategy", "strategies", multiple=True, metavar="NAME",
              help="Run only this strategy (a label or name from the scenario, or any "
                   "registered strategy with default parameters). Repeatable.")
@click.option("--seed", type=click.IntRange(min=0), help="Root seed (overrides the scenario).")
@click.option("--replications", type=click.IntRange(min=1),
              help="Replications (seeds seed..seed+N-1).")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a scenario field, e.g. --set cluster.node_groups.0.count=4.")
@click.option("--out", type=click.Path(), default="results", callback=lambda ctx, p, v:
              non_empty_path(v, "--out"), show_default=True,
              help="Folder for the result directories.")
@click.option("--force", is_flag=True, help="Replace existing result directories.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the summaries as JSON.")
@click.option("--report", "with_report", is_flag=True,
              help="Also write the HTML report of these runs (see simlb report).")
@click.option("--jobs", "-j", type=click.IntRange(min=0), default=1, show_default=True,
              help="Simulations to run at once, in worker processes (0: one per CPU core). "
                   "Results are the same; memory grows with each.")
@click.option("--no-limits", "no_limits", is_flag=True,
              help="Skip the size limits (the scenario's limits block): run however large.")
@click.option("--stream", is_flag=True,
              help="Stream the requests in and the records out, for fleet-scale runs in "
                   "bounded memory (synthetic single-turn Poisson or piecewise workloads; "
                   "another draw of the same traffic; percentiles from 0.5%% sketches; no "
                   "nodes.parquet): docs/performance.md.")
@click.option("--wide", is_flag=True,
              help="Every column of the comparison table, however narrow the terminal "
                   "(by default a narrower table when the full one does not fit).")
@_handle_errors
def run(scenario: Path, strategies: tuple[str, ...], seed: int | None,
        replications: int | None, overrides: tuple[str, ...], out: Path, force: bool,
        quiet: bool, as_json: bool, with_report: bool, jobs: int, no_limits: bool,
        stream: bool, wide: bool) -> None:
    """Simulate SCENARIO once per strategy and replication, and compare them."""
    from rich.console import Console

    from sim import app
    from sim.console import print_comparison, progress_bars
    from sim.results import dumps_json

    resolved = app.load(scenario, overrides, seed=seed, replications=replications,
                        strategies=strategies, limits=not no_limits, stream=stream)
    console = Console(stderr=True)
    with workload_warnings(), progress_bars(console, enabled=not quiet and not as_json) \
            as factory:
        results = app.run_all(resolved, out, force=force, progress=factory,  # type: ignore[arg-type]
                              jobs=jobs or _usable_cpus(), keep_records=False)
    report_path = None
    if with_report:
        from sim.report import build_report
        from sim.results import run_dir

        sc = resolved.scenario
        report_path = build_report([run_dir(out, sc.name, r.label, r.seed) for r in results],
                                   out / sc.name / "report")
    idle = app.served_nothing(results)
    if as_json:  # strict JSON: NaN and infinity become null
        click.echo(dumps_json({f"{r.label}/seed-{r.seed}": r.summary for r in results}), nl=False)
    else:
        out_console = Console() if sys.stdout.isatty() else Console(width=200)
        print_comparison(out_console, results, f"{resolved.scenario.name}: "
                                               f"{len(resolved.node_specs)} nodes", wide=wide)
        click.echo(f"results: {out / resolved.scenario.name}/<strategy>/seed-<k>/")
        if report_path is not None:
            click.echo(f"report: {report_path}")
    if idle is not None:
        _fail(f"simlb: error: {resolved.source}: {idle}", 2)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--no-limits", "no_limits", is_flag=True,
              help="Skip the size limits (the scenario's limits block).")
@_handle_errors
def validate(files: tuple[Path, ...], no_limits: bool) -> None:
    """Check scenario FILES (schema, names, parameters, profiles, traces, size limits)
    without running them."""
    from sim import app
    from sim.workload.replay import loss_lines

    failed = 0
    for path in files:
        try:
            resolved = app.load(path, limits=not no_limits)
            with workload_warnings():
                losses = app.check_workload(resolved)
        except InputError as exc:
            click.echo(one_line(f"simlb: error: {exc}"), err=True)
            failed += 1
            continue
        sc = resolved.scenario
        for line in loss_lines(losses, sc.replications):
            click.echo(one_line(f"simlb: warning: {path}: {line}"), err=True)
        click.echo(f"{path}: ok ({sc.n_nodes} nodes, {len(resolved.strategies)} strategies, "
                   f"{sc.duration_s:g} s)")
    if failed:
        sys.exit(2)


@main.command(name="strategies")
@click.option("--params", is_flag=True, help="Show each strategy's parameters (JSON schema).")
def list_strategies(params: bool) -> None:
    """List the registered routing strategies."""
    import sim.policy  # noqa: F401
    from sim.policy.base import strategies

    for name in strategies.names():
        cls = strategies.get(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        click.echo(f"{name:16s} {doc}")
        if params:
            schema = cls.Params.model_json_schema().get("properties", {})
            for field, spec in schema.items():
                click.echo(f"{'':16s}   {field}: {json.dumps(spec)}")


def _usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _add_command_modules() -> None:
    import importlib

    from sim.commands import COMMAND_MODULES

    for name in COMMAND_MODULES:
        main.add_command(importlib.import_module(name).command)


_add_command_modules()

if __name__ == "__main__":  # pragma: no cover
    main()
