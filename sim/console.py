"""Terminal output of ``simlb run``: progress bars and the comparison table (rich)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from sim.runner import Progress as ProgressCallback
from sim.runner import RunResult


class _RunBar:
    """The progress callback of one run's bar; ``finish`` fills it and stops its clock."""

    def __init__(self, bars: Progress, task: TaskID) -> None:
        self.bars = bars
        self.task = task
        self.start = time.perf_counter()

    def __call__(self, sim_s: float, horizon_s: float, dispatched: int) -> None:
        """Show ``sim_s`` of ``horizon_s`` (kept below 100 % until the run has finished)."""
        wall = max(time.perf_counter() - self.start, 1e-9)
        done = min(sim_s / horizon_s, 0.999) if horizon_s > 0 else 0.0
        self.bars.update(self.task, completed=done, sim_s=sim_s, req=dispatched,
                         rate=dispatched / wall)

    def finish(self) -> None:
        """The run has finished: the bar reaches 100 % and its clock stops."""
        self.bars.update(self.task, completed=1.0)
        self.bars.stop_task(self.task)


@contextmanager
def progress_bars(console: Console, enabled: bool) -> Iterator[object]:
    """Yield a factory of per-run progress callbacks (or None when disabled); each callback
    has a ``finish`` method, called when its run has finished (``sim.app.finish_progress``)."""
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
            return _RunBar(bars, task)
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


#: the full table's columns (``--wide``, or a terminal wide enough for them)
WIDE = ("strategy", "runs", "TTFT p50/p99 s", "TPOT p50/p99 ms", "E2E p50/p99 s", "req/s",
        "goodput", "util CV", "imbal.", "herd", "grade", "cache hit", "preempt", "rejected")
#: the columns that fit an 80-column terminal (E2E, dominated by output lengths, gives way
#: to the herding index)
NARROW = ("strategy", "TTFT p99 s", "TPOT p99 ms", "goodput", "util CV", "herd", "grade",
          "cache hit")
#: how the narrow table shows its headers (on two lines)
_NARROW_HEADERS = {"TTFT p99 s": "TTFT\np99 s", "TPOT p99 ms": "TPOT\np99 ms",
                   "E2E p99 s": "E2E\np99 s", "goodput": "goodput\nreq/s",
                   "util CV": "util\nCV", "cache hit": "cache\nhit"}


def _cells(rows: Sequence[RunResult]) -> dict[str, str]:
    """Every column's text for one strategy (means over its replications)."""
    grades = sorted({str(r.summary["utilization"]["grade"]["grade"]) for r in rows})
    return {
        "strategy": rows[0].label, "runs": str(len(rows)),
        "TTFT p50/p99 s": _pair(rows, "ttft"), "TPOT p50/p99 ms": _pair(rows, "tpot", 1000.0),
        "E2E p50/p99 s": _pair(rows, "e2e"),
        "TTFT p99 s": _fmt(_mean(rows, "latency_s", "ttft", "p99")),
        "TPOT p99 ms": _fmt(_mean(rows, "latency_s", "tpot", "p99") * 1000.0),
        "E2E p99 s": _fmt(_mean(rows, "latency_s", "e2e", "p99")),
        "req/s": _fmt(_mean(rows, "throughput", "completed_rps")),
        "goodput": _fmt(_mean(rows, "throughput", "goodput_rps")),
        "util CV": _fmt(_mean(rows, "utilization", "grade", "cv"), 2),
        "imbal.": _fmt(_mean(rows, "utilization", "grade", "imbalance"), 2),
        "herd": _fmt(_mean(rows, "herding", "index"), 2),
        "grade": "/".join(grades), "cache hit": f"{_mean(rows, 'cache', 'hit_rate'):.1%}",
        "preempt": _fmt(_mean(rows, "preemptions", "total"), 6),
        "rejected": _fmt(_mean(rows, "requests", "rejected"), 6)}


def comparison_table(results: Sequence[RunResult], title: str, *,
                     wide: bool = True) -> Table:
    """One row per strategy (means over replications): every column, or with ``wide`` False
    the ones that fit 80 columns (p99 TTFT and TPOT, goodput, balance, herding, cache
    hits)."""
    headers = WIDE if wide else NARROW
    table = Table(title=title, title_justify="left", box=None if not wide else box.HEAVY_HEAD,
                  pad_edge=False)
    for i, header in enumerate(headers):
        shown = header if wide else _NARROW_HEADERS.get(header, header)
        table.add_column(shown, justify="left" if i == 0 else "right", no_wrap=True)
    for label in dict.fromkeys(r.label for r in results):
        cells = _cells([r for r in results if r.label == label])
        table.add_row(*(cells[h] for h in headers))
    sense = results[0].summary["utilization"]["grade"]["sense"] if results else ""
    table.caption = (f"util CV, imbalance: {sense} across nodes; herd: herding index (0 even, "
                     "1 each burst to one node); grade: the worse of the util-CV and herding "
                     "grades; means over runs; every figure per run is in summary.json"
                     + ("" if wide else "; --wide for every column"))
    table.caption_justify = "left"
    return table


def loss_notes(results: Sequence[RunResult]) -> list[str]:
    """What became of the input that was not served as given (``summary.json``'s ``input``
    block: rows dropped, outputs capped, prompts trimmed, requests beyond the context, and
    replications that replayed identical requests), one line each, from the first run (every
    strategy replays the same requests)."""
    from sim.workload.replay import loss_lines

    if not results:
        return []
    accounting = results[0].summary.get("input") or {}
    if not isinstance(accounting, dict):
        return []
    lines = loss_lines(accounting, len({r.replication for r in results}))
    return [line.replace(" will not be replayed", " were not replayed")
            .replace(" will be cut", " were cut").replace(" will be trimmed", " were trimmed")
            .replace(" and will be rejected", " and were rejected") for line in lines]


def elasticity_notes(results: Sequence[RunResult]) -> list[str]:
    """One line per strategy for runs with faults or autoscaling (``summary.json``'s
    ``elasticity`` block, ``docs/faults.md``): availability, failed requests and retries, the
    mean time to detect a failure, SLO attainment during outages, GPU-hours (means over runs)."""
    out = []
    for label in dict.fromkeys(r.label for r in results):
        rows = [r for r in results if r.label == label and "elasticity" in r.summary]
        if not rows:
            continue
        parts = [f"availability {_mean(rows, 'elasticity', 'availability'):.2%}",
                 f"failed {_fmt(_mean(rows, 'elasticity', 'requests', 'failed_total'), 6)}",
                 f"retries {_fmt(_mean(rows, 'elasticity', 'requests', 'retries'), 6)}"]
        detect = _mean(rows, "elasticity", "detection", "mean_s")
        if math.isfinite(detect):
            parts.append(f"detected after {detect:.3g} s")
        during = _mean(rows, "elasticity", "slo_met_share", "during")
        if math.isfinite(during):
            parts.append(f"SLO met during outages {during:.1%}")
        parts.append(f"{_mean(rows, 'elasticity', 'gpu_hours'):.3g} GPU-hours")
        out.append(f"{label}: " + ", ".join(parts))
    return out


def print_comparison(console: Console, results: Sequence[RunResult], title: str, *,
                     wide: bool = False) -> None:
    """Print the comparison table: every column when it fits the console (or ``wide``: then
    as wide as it needs, the terminal wrapping its lines), else the narrow one; below it,
    one line per kind of input loss (``loss_notes``)."""
    full = comparison_table(results, title, wide=True)
    needed = Measurement.get(console, console.options.update(width=10_000), full).maximum
    if needed <= console.width:
        console.print(full)
    elif wide:
        width = console.width
        console.width = needed
        try:
            console.print(full, crop=False)
        finally:
            console.width = width
    else:
        console.print(comparison_table(results, title, wide=False))
    for line in loss_notes(results):
        console.print(f"input: {line}", markup=False, highlight=False)
    for line in elasticity_notes(results):
        console.print(f"faults: {line}", markup=False, highlight=False)
