"""``simlb fidelity RUN...``: replay measured serving runs teacher-forced and score simlb's
predictions against what the real server did (see docs/fidelity.md).

Bad input (an unknown layout, a missing column, an unparsable time, no requests) prints one
line naming the file, line and column, and exits with code 2.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click


def _engine_settings(items: tuple[str, ...]) -> dict[str, Any]:
    from sim.errors import InputError

    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise InputError(f"expected KEY=VALUE, got {item!r}", field="--engine")
        out[key.strip()] = value.strip()
    return out


@click.command(name="fidelity")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--profile", required=True, metavar="NAME|PATH",
              help="Cost profile: a shipped name (h100/llama-3-8b) or a JSON path.")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override the replayed node or scenario, e.g. "
                   "--set cost_model.params.cpu_overhead_ms=2 or "
                   "--set batcher.params.max_num_seqs=128. Repeatable.")
@click.option("--engine", "engine", multiple=True, metavar="KEY=VALUE",
              help="Engine setting the run lacks or to replace (max_num_seqs, "
                   "max_num_batched_tokens, num_gpu_blocks, block_size, chunked_prefill, "
                   "prefix_caching, max_model_len, ...). Repeatable.")
@click.option("--columns", metavar="FIELD=COL[:UNIT],...",
              help="Column mapping of a plain CSV/Parquet run: arrival, prompt, output, ttft, "
                   "e2e (required), itl, status; units s (default), ms, us, ns.")
@click.option("--max-requests", type=click.IntRange(min=1),
              help="Replay only each run's first N requests (quick checks).")
@click.option("--json", "as_json", is_flag=True, help="Print fidelity.json to stdout.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Folder for fidelity.json (and fidelity.html with --report).")
@click.option("--report", "with_report", is_flag=True,
              help="Write the HTML page DIR/fidelity.html (DIR: --out, default .).")
def command(runs: tuple[Path, ...], profile: str, overrides: tuple[str, ...],
            engine: tuple[str, ...], columns: str | None, max_requests: int | None,
            as_json: bool, out: Path | None, with_report: bool) -> None:
    """Replay measured RUNS (folders or files; a folder holding several runs reads them all)
    teacher-forced and compare simlb's latencies with the measured ones."""
    from rich.console import Console

    from sim.errors import InputError
    from sim.fidelity.evaluate import evaluate, to_json
    from sim.fidelity.score import aggregate
    from sim.fidelity.table import fidelity_table, summary_lines
    from sim.results import dumps_json

    err = Console(stderr=True)
    started = time.perf_counter()
    try:
        results = evaluate(runs, profile, overrides, columns=columns,
                           engine=_engine_settings(engine), max_requests=max_requests,
                           progress=(lambda p: err.print(f"replaying {p}", style="dim"))
                           if err.is_terminal and not as_json else None)
    except InputError as exc:
        click.echo(" ".join(f"simlb: error: {exc}".splitlines()), err=True)
        sys.exit(2)
    wall = time.perf_counter() - started
    doc = to_json(results, profile, overrides, wall)
    text = dumps_json(doc)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "fidelity.json").write_text(text, encoding="utf-8")
    page = None
    if with_report:
        from sim.fidelity.page import write_page

        page = write_page(results, doc["summary"], profile, overrides,
                          (out or Path(".")) / "fidelity.html")
    if as_json:
        click.echo(text, nl=False)
        return
    scores = [r.score for r in results]
    console = Console() if sys.stdout.isatty() else Console(width=220)
    console.print(fidelity_table(scores, aggregate(scores), f"simlb fidelity: {profile}"))
    for line in summary_lines(doc["summary"]):
        click.echo(line)
    click.echo(f"{len(results)} runs in {wall:.1f} s")
    if out is not None:
        click.echo(f"json: {out / 'fidelity.json'}")
    if page is not None:
        click.echo(f"report: {page}")
