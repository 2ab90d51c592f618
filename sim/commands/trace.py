"""``simlb trace``: describe a request trace (``stats``) and write its synthetic twin (``fit``).

Both read a trace file as published (``--format``, guessed from the file when left out) with
the same readers and checks as a scenario's ``workload.trace`` block; bad input prints one line
naming the file, line and column, and exits with code 2.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from sim.commands.options import one_line
from sim.errors import InputError

FORMAT_NAMES = ("azure", "mooncake", "burstgpt", "vidur", "csv", "jsonl", "parquet")
COLUMN_FIELDS = ("arrival", "prompt_tokens", "output_tokens", "hash_ids", "model", "session_id")


class _StderrHandler(logging.Handler):
    """Print library warnings as ``simlb: warning: ...`` lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"simlb: warning: {record.getMessage()}", err=True)


@contextlib.contextmanager
def _warnings_to_stderr() -> Iterator[None]:
    """Route the workload package's warnings to stderr for the duration of a command."""
    logger = logging.getLogger("sim.workload")
    handler = _StderrHandler(logging.WARNING)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _exit_on_input_error(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _warnings_to_stderr():
                return func(*args, **kwargs)
        except InputError as exc:
            click.echo(one_line(f"simlb: error: {exc}"), err=True)
            sys.exit(2)
    return wrapper


def _reader_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options both sub-commands use to read a trace."""
    options = [
        click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path)),
        click.option("--format", "fmt", type=click.Choice(FORMAT_NAMES),
                     help="Trace format (default: guessed from the file's first line)."),
        click.option("--column", "columns", multiple=True, metavar="FIELD=NAME",
                     help=f"Column mapping for csv/jsonl/parquet; FIELD is one of "
                          f"{', '.join(COLUMN_FIELDS)}. Repeatable."),
        click.option("--time-unit", type=click.Choice(["s", "ms", "us", "ns", "datetime"]),
                     help="Unit of the arrival column (csv/jsonl/parquet; default s)."),
        click.option("--hash-block-tokens", type=click.IntRange(min=1), default=512,
                     show_default=True, help="Tokens per hash-id block."),
        click.option("--strict", is_flag=True,
                     help="Unsorted timestamps are an error instead of being sorted."),
        click.option("--keep-failed", is_flag=True,
                     help="BurstGPT: keep failed requests (0 output tokens) as 1-token ones."),
        click.option("--zero-tokens", type=click.Choice(["error", "drop", "one"]),
                     default="error", show_default=True,
                     help="What a 0-token prompt or output does."),
        click.option("--nodes", type=click.IntRange(min=1), default=8, show_default=True,
                     help="Nodes of the random-routing prefix-reuse figure."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _load(file: Path, fmt: str | None, columns: tuple[str, ...], time_unit: str | None,
          hash_block_tokens: int, strict: bool, keep_failed: bool,
          zero_tokens: str, **replay: Any) -> tuple[Any, Any]:
    """Read and replay ``file`` (no window; no scaling unless ``replay`` gives options of
    ``workload.trace``, such as ``prompt_scale``); return ``(spec, workload)``."""
    from pydantic import ValidationError

    from sim.spec import format_validation_error
    from sim.workload.traces import TraceSpec, infer_format, trace_workload

    mapping: dict[str, str] = {}
    for item in columns:
        field, sep, name = item.partition("=")
        if not sep or field not in COLUMN_FIELDS:
            raise InputError(f"expected FIELD=NAME with FIELD one of {', '.join(COLUMN_FIELDS)}"
                             f", got {item!r}", field="--column")
        mapping[field] = name
    raw: dict[str, Any] = {"format": fmt or infer_format(file), "path": str(file.resolve()),
                           "hash_block_tokens": hash_block_tokens, "strict": strict,
                           "keep_failed": keep_failed, "zero_tokens": zero_tokens}
    raw.update({k: v for k, v in replay.items() if v is not None})
    if mapping:
        raw["columns"] = mapping
    if time_unit:
        raw["time_unit"] = time_unit
    try:
        spec = TraceSpec.model_validate(raw)
    except ValidationError as exc:
        raise InputError(format_validation_error(exc), source=str(file)) from None
    return spec, trace_workload(spec, None, 0)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@click.group(name="trace")
def command() -> None:
    """Describe request traces and fit synthetic twins to them."""


@command.command()
@_reader_options
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), metavar="OUT.png",
              help="Also draw rates, gaps and length distributions into OUT.png.")
@_exit_on_input_error
def stats(file: Path, fmt: str | None, columns: tuple[str, ...], time_unit: str | None,
          hash_block_tokens: int, strict: bool, keep_failed: bool, zero_tokens: str,
          nodes: int, as_json: bool, plot: Path | None) -> None:
    """Rates, burstiness, length distributions and prefix reuse of the trace FILE."""
    from sim.workload.trace_stats import trace_stats

    if plot is not None:
        _check_output(plot, "--plot", PLOT_SUFFIXES)
    spec, workload = _load(file, fmt, columns, time_unit, hash_block_tokens, strict,
                           keep_failed, zero_tokens)
    result = trace_stats(workload, nodes=nodes, block_tokens=spec.hash_block_tokens)
    if plot is not None:
        _plot(workload, plot, f"{file.name} ({spec.format})")
    if as_json:
        body = {"file": str(file), "format": spec.format, "source": workload.source,
                **result.to_dict()}
        click.echo(json.dumps(_json_safe(body), indent=2))
        return
    _print_stats(file, spec.format, workload.source, result,
                 _tree_line(workload, spec.hash_block_tokens))
    if plot is not None:
        click.echo(f"plot: {plot}")


@command.command()
@_reader_options
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              metavar="TWIN.yaml", help="Where to write the twin's workload block.")
@click.option("--arrivals", type=click.Choice(["profile", "mmpp2", "poisson"]),
              default="profile", show_default=True, help="Arrival model of the twin.")
@click.option("--bucket-s", type=click.FloatRange(min=0, min_open=True),
              help="Piece width of the rate profile (default: 1 s, coarser for long traces).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the twin drawn to compare its statistics.")
@click.option("--no-bursts", is_flag=True,
              help="Do not model sub-second bursts (plain arrivals inside each piece).")
@click.option("--target-rate-rps", type=click.FloatRange(min=0, min_open=True),
              help="Fit the twin of the trace rescaled in time to this mean rate.")
@click.option("--prompt-scale", type=click.FloatRange(min=0, max=1, min_open=True),
              help="Fit the twin of the trace with every prompt (shared prefixes included) "
                   "shrunk by this factor, as workload.trace.prompt_scale replays it.")
@click.option("--conversations", type=click.Choice(["auto", "on", "off"]), default="auto",
              show_default=True,
              help="Model the prefix tree's conversations (turns extending an earlier "
                   "prompt) as multi_turn sessions: on, off, or auto (the one whose drawn "
                   "twin misses fewer statistics).")
@click.option("--fail-on-miss", "fail_on_miss", is_flag=True,
              help="Exit with code 1 when the twin misses a statistic of the trace by more "
                   "than its tolerance (the warnings), after writing it.")
@_exit_on_input_error
def fit(file: Path, fmt: str | None, columns: tuple[str, ...], time_unit: str | None,
        hash_block_tokens: int, strict: bool, keep_failed: bool, zero_tokens: str, nodes: int,
        output: Path, arrivals: str, bucket_s: float | None, seed: int, no_bursts: bool,
        target_rate_rps: float | None, prompt_scale: float | None, conversations: str,
        fail_on_miss: bool) -> None:
    """Write a synthetic workload block whose statistics match the trace FILE's.

    The twin's statistics are compared with the trace's; each one missed by more than its
    tolerance (sim.workload.twin.TOLERANCES) is printed as a warning."""
    from sim.workload.spec import WorkloadSpec, build_workload
    from sim.workload.trace_stats import trace_stats
    from sim.workload.twin import fit_twin, twin_warnings

    _check_output(output, "--output")
    spec, workload = _load(file, fmt, columns, time_unit, hash_block_tokens, strict,
                           keep_failed, zero_tokens)
    try:
        block = fit_twin(workload, arrivals=arrivals, bucket_s=bucket_s,
                         block_tokens=spec.hash_block_tokens, nodes=nodes,
                         bursts=not no_bursts, target_rate_rps=target_rate_rps,
                         prompt_scale=prompt_scale,
                         conversations={"auto": None, "on": True, "off": False}[conversations])
    except ValueError as exc:
        raise InputError(str(exc), source=str(file)) from None
    reference = workload  # the trace as a scenario replays it with the same options
    if target_rate_rps is not None or prompt_scale is not None:
        _, reference = _load(file, fmt, columns, time_unit, hash_block_tokens, strict,
                             keep_failed, zero_tokens, target_rate_rps=target_rate_rps,
                             prompt_scale=prompt_scale)
    span = float(reference.arrival_s[-1])
    twin = build_workload(WorkloadSpec.model_validate(block), span, seed)
    kwargs = {"nodes": nodes, "block_tokens": spec.hash_block_tokens}
    original, copy = trace_stats(reference, **kwargs), trace_stats(twin, **kwargs)
    warnings = twin_warnings(original, copy)
    _write_twin(output, file, spec.format, block, span, _comparison_rows(original, copy),
                warnings)
    _print_comparison(original, copy, seed)
    tree_line = _tree_line(workload, spec.hash_block_tokens)
    if tree_line:
        model = ("conversations (multi_turn sessions over the prefix tree)" if "sessions" in block
                 else "prefix groups (grouped_prefix)" if "prefixes" in block else "none")
        conversations_text, shares = tree_line.split("; ", 1)
        click.echo(f"prefix tree: conversations {conversations_text}; requests continuing / "
                   f"branching / new {shares}; twin's prefixes: {model}")
    for line in warnings:
        click.echo(f"simlb: warning: {line}", err=True)
    click.echo(f"twin: {output}")
    if warnings and fail_on_miss:
        click.echo(f"simlb: error: the twin misses {len(warnings)} statistic(s) of the trace "
                   "beyond tolerance (--fail-on-miss)", err=True)
        sys.exit(1)



def _tree_line(workload: Any, block_tokens: int) -> str:
    """The trace's prefix tree in words (empty without block hashes)."""
    import numpy as np

    from sim.workload.twin import prefix_tree

    if not np.any(workload.seg_key >= 0):
        return ""
    f = prefix_tree(workload, block_tokens).figures()
    return (f"{f['conversations']:,}, mean {f['mean_turns']:.2f} turns (at most "
            f"{f['max_turns']}); {f['chain_share']:.1%} / {f['branch_share']:.1%} / "
            f"{f['root_share']:.1%}")


#: image formats ``--plot`` writes (by the file name's extension)
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def _check_output(path: Path, option: str, suffixes: tuple[str, ...] = ()) -> None:
    """Refuse an output file that cannot be written, before any work is done: a name
    without one of ``suffixes``, a folder that is missing, a file or read-only.

    Raises:
        InputError: naming the path, the option and what was expected.
    """
    import os

    if suffixes and path.suffix.lower() not in suffixes:
        raise InputError(f"expected a file name ending in {', '.join(suffixes)}, got "
                         f"{path.name!r}", source=str(path), field=option)
    if path.is_dir():
        raise InputError("is a folder; expected a file name", source=str(path), field=option)
    folder = path.parent
    if not folder.exists():
        raise InputError(f"folder {folder} does not exist; expected an existing folder",
                         source=str(path), field=option)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder", source=str(path), field=option)
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists()
                                                     and not os.access(path, os.W_OK)):
        raise InputError(f"cannot write into {folder}; expected a writable file",
                         source=str(path), field=option)


def _comparison_rows(original: Any, twin: Any) -> list[tuple[str, float, float]]:
    a, b = original.flat(), twin.flat()
    return [(k, float(a[k]), float(b.get(k, math.nan))) for k in a]


def _write_twin(path: Path, file: Path, fmt: str, block: dict[str, Any], span_s: float,
                rows: list[tuple[str, float, float]], warnings: Sequence[str] = ()) -> None:
    import yaml

    lines = [f"# Synthetic twin of {file.name} ({fmt}), written by `simlb trace fit`.",
             "# Copy the workload block into a scenario; the rate profile repeats with the",
             f"# trace's span ({span_s:.6g} s), the scenario's duration_s below.",
             "# statistic: trace / twin (one draw; see docs/traces.md for typical closeness)"]
    lines += [f"#   {k}: {a:.4g} / {b:.4g}" for k, a, b in rows]
    lines += [f"# WARNING: {line}" for line in warnings]
    body = yaml.safe_dump({"duration_s": float(f"{span_s:.9g}"), "workload": block},
                          sort_keys=False, default_flow_style=None, width=100)
    try:
        path.write_text("\n".join(lines) + "\n" + body, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write the twin ({exc.strerror or exc})", source=str(path),
                         field="--output") from None


def _console() -> Any:
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=120)


def _window(key: str) -> str:
    """``"60s"`` -> ``"1 min"``, ``"10s"`` -> ``"10 s"``."""
    seconds = float(key.removesuffix("s"))
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def _print_stats(file: Path, fmt: str, source: str, s: Any, tree: str = "") -> None:
    from rich.table import Table

    table = Table(title=f"{file.name} ({fmt})", title_justify="left", show_header=False)
    table.add_column("statistic")
    table.add_column("value", justify="right")
    rows = [("requests", f"{s.rows:,}"), ("span", f"{s.span_s:.6g} s"),
            ("mean rate", f"{s.mean_rate_rps:.4g} req/s")]
    rows += [(f"peak rate ({_window(k)} windows)", f"{v:.4g} req/s")
             for k, v in s.peak_rate_rps.items()]
    rows += [("inter-arrival CV", f"{s.interarrival_cv:.4g}")]
    rows += [(f"index of dispersion ({_window(k)})", f"{v:.4g}")
             for k, v in s.index_of_dispersion.items()]
    if s.bursts is not None:
        b = s.bursts
        rows += [(f"requests in bursts (gaps <= {b.gap_s * 1000:g} ms)", f"{b.share:.1%}"),
                 ("mean burst size", "-" if math.isnan(b.mean_size) else f"{b.mean_size:.3g}")]
    rows += [("prompt-output length correlation (Spearman)",
              "-" if math.isnan(s.length_correlation) else f"{s.length_correlation:+.3f}")]
    if s.timestamp_rounding is not None:
        r = s.timestamp_rounding
        rows += [("timestamp grid", "none (continuous)" if r.grid_s is None
                  else f"{r.grid_s:g} s"),
                 ("requests arriving with another at the same instant",
                  f"{r.simultaneous_share:.1%}")]
    if tree:
        conversations, shares = tree.split("; ", 1)
        rows += [("prefix tree: conversations", conversations),
                 ("  requests continuing / branching / new", shares)]
    if s.prefix_reuse is not None:
        r = s.prefix_reuse
        rows += [(f"prefix reuse, shared cache ({r.block_tokens}-token blocks)",
                  f"{r.shared:.1%}"),
                 (f"prefix reuse, random routing over {r.nodes} nodes", f"{r.random:.1%}")]
    else:
        rows += [("prefix reuse", "n/a (no block hashes)")]
    for row in rows:
        table.add_row(*row)
    lengths = Table(title="tokens", title_justify="left")
    for header in ("", "mean", "p50", "p90", "p99", "max"):
        lengths.add_column(header, justify="right")
    for name, summary in (("prompt", s.prompt_tokens), ("output", s.output_tokens)):
        lengths.add_row(name, *(f"{getattr(summary, k):,.0f}"
                                for k in ("mean", "p50", "p90", "p99", "max")))
    console = _console()
    console.print(table)
    console.print(lengths)
    if s.timestamp_rounding is not None:
        click.echo(f"timestamps: {s.timestamp_rounding.hint}")
    click.echo(f"source: {source}")


def _print_comparison(original: Any, twin: Any, seed: int) -> None:
    from rich.table import Table

    table = Table(title=f"trace vs twin (seed {seed})", title_justify="left")
    for header in ("statistic", "trace", "twin", "twin/trace"):
        table.add_column(header, justify="left" if header == "statistic" else "right")
    for key, a, b in _comparison_rows(original, twin):
        ratio = b / a if a else math.nan
        table.add_row(key, f"{a:.4g}", f"{b:.4g}", f"{ratio:.3f}")
    _console().print(table)


def _plot(workload: Any, out: Path, title: str) -> None:
    """Draw request rates over time, the gap distribution and the length distributions."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib.figure import Figure

    from sim.workload.trace_stats import window_counts

    t = workload.arrival_s
    fig = Figure(figsize=(11, 7), layout="constrained")
    fig.suptitle(title)
    (rate_ax, gap_ax), (prompt_ax, output_ax) = fig.subplots(2, 2)
    for width in (10.0, 60.0):
        counts = window_counts(t, width)
        rate_ax.step(np.arange(counts.shape[0]) * width, counts / width, where="post",
                     label=f"{width:g} s windows")
    rate_ax.set(xlabel="time since first request (s)", ylabel="requests / s", title="rate")
    rate_ax.legend()
    gaps = np.diff(t)
    gaps = gaps[gaps > 0]
    if gaps.shape[0]:
        gap_ax.hist(gaps, bins=np.geomspace(gaps.min(), gaps.max() * 1.01, 60))
        gap_ax.set_xscale("log")
    gap_ax.set(xlabel="inter-arrival time (s)", ylabel="requests", title="gaps")
    for ax, values, name in ((prompt_ax, workload.prompt_tokens, "prompt"),
                             (output_ax, workload.output_tokens, "output")):
        ax.hist(values, bins=np.geomspace(1, max(int(values.max()), 2) * 1.01, 60))
        ax.set_xscale("log")
        ax.set(xlabel=f"{name} tokens", ylabel="requests", title=f"{name} lengths")
    try:
        fig.savefig(out, dpi=110)
    except OSError as exc:
        raise InputError(f"cannot write the plot ({exc.strerror or exc})", source=str(out),
                         field="--plot") from None
