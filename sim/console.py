"""Terminal output of ``simlb run``: progress bars and the comparison table (rich)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sim.runner import Progress as ProgressCallback
from sim.runner import RunResult


@contextmanager
def progress_bars(console: Console, enabled: bool) -> Iterator[object]:
    """Yield a factory of per-run progress callbacks (or None when disabled)."""
    if not enabled:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("sim {task.fields[sim_s]:>8.1f} s"),
               TextColumn("{task.fields[req]:>9,} req"),
               TextColumn("{task.fields[rate]:>9,.0f} req/s"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bars:
        def factory(label: str, replication: int) -> ProgressCallback:
            task = bars.add_task(f"{label} #{replication}", total=1.0, sim_s=0.0, req=0,
                                 rate=0.0)
            import time
            start = time.perf_counter()

            def update(sim_s: float, horizon_s: float, dispatched: int) -> None:
                wall = max(time.perf_counter() - start, 1e-9)
                bars.update(task, completed=min(sim_s / horizon_s, 1.0), sim_s=sim_s,
                            req=dispatched, rate=dispatched / wall)
            return update
        yield factory


def _get(summary: dict, *path: str) -> float:
    node: object = summary
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return math.nan
        node = node[key]
    return float(node) if isinstance(node, int | float) else math.nan


def _mean(results: Sequence[RunResult], *path: str) -> float:
    values = [_get(r.summary, *path) for r in results]
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def _fmt(value: float, digits: int = 3) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}g}"


def _pair(rows: Sequence[RunResult], metric: str, scale: float = 1.0) -> str:
    p50 = _mean(rows, "latency_s", metric, "p50") * scale
    p99 = _mean(rows, "latency_s", metric, "p99") * scale
    return f"{_fmt(p50)} / {_fmt(p99)}"


def comparison_table(results: Sequence[RunResult], title: str) -> Table:
    """One row per strategy (means over replications)."""
    table = Table(title=title, title_justify="left")
    headers = ("strategy", "runs", "TTFT p50/p99 s", "TPOT p50/p99 ms", "E2E p50/p99 s",
               "req/s", "goodput", "util CV", "imbal.", "grade", "cache hit", "preempt",
               "rejected")
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right", no_wrap=True)
    for label in dict.fromkeys(r.label for r in results):
        rows = [r for r in results if r.label == label]
        grades = sorted({str(r.summary["utilization"]["grade"]["grade"]) for r in rows})
        table.add_row(
            label, str(len(rows)), _pair(rows, "ttft"), _pair(rows, "tpot", 1000.0),
            _pair(rows, "e2e"), _fmt(_mean(rows, "throughput", "completed_rps")),
            _fmt(_mean(rows, "throughput", "goodput_rps")),
            _fmt(_mean(rows, "utilization", "grade", "cv"), 2),
            _fmt(_mean(rows, "utilization", "grade", "imbalance"), 2), "/".join(grades),
            f"{_mean(rows, 'cache', 'hit_rate'):.1%}",
            _fmt(_mean(rows, "preemptions", "total"), 6),
            _fmt(_mean(rows, "requests", "rejected"), 6))
    sense = results[0].summary["utilization"]["grade"]["sense"] if results else ""
    table.caption = (f"util CV, imbalance and grade: {sense} across nodes; means over runs; "
                     "every figure per run is in summary.json")
    table.caption_justify = "left"
    return table
