"""The console table of ``simlb fidelity``: one row per run, then the medians over runs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rich.table import Table

from sim.fidelity.score import RunScore

#: (header, metric, statistic) of the error columns
ERROR_COLUMNS = (("E2E mean", "e2e", "mean"), ("E2E p99", "e2e", "p99"),
                 ("TTFT mean", "ttft", "mean"), ("TTFT p99", "ttft", "p99"),
                 ("ITL mean", "itl", "mean"))


def _pct(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:+.1f}"


def _num(x: float, digits: int = 3) -> str:
    return "-" if not math.isfinite(x) else f"{x:.{digits}g}"


def _flag(s: RunScore) -> str:
    yn = {True: "yes", False: "no"}
    text = f"{yn[s.overload_measured.overloaded]}/{yn[s.overload_predicted.overloaded]}"
    return f"[bold red]{text} ![/]" if s.overload_disagree else text


def fidelity_table(scores: Sequence[RunScore], summary: dict[str, Any], title: str) -> Table:
    """Rich table: errors are signed % of the measured value (+: simlb slower)."""
    table = Table(title=title, caption="errors: signed % of measured (+: simlb slower); "
                                       "overload: measured/predicted, ! = they disagree",
                  title_justify="left", caption_justify="left")
    table.add_column("run", no_wrap=True)
    for head in ("rate/s", "n", "E2E meas s", "E2E pred s"):
        table.add_column(head, justify="right")
    for head, _, _ in ERROR_COLUMNS:
        table.add_column(f"{head} %", justify="right")
    table.add_column("overload", justify="center")
    for s in scores:
        n = f"{s.scored}" + (f" (-{s.failed})" if s.failed else "")
        table.add_row(s.name, _num(s.rate_rps), n, _num(s.measured["e2e"]["mean"]),
                      _num(s.predicted["e2e"]["mean"]),
                      *(_pct(s.error[m][st]) for _, m, st in ERROR_COLUMNS), _flag(s))
    err = summary["error"]
    table.add_section()
    table.add_row("median |err| (bias)", "", f"{summary['runs']} runs", "", "",
                  *(f"{_num(err[m][st]['median_abs'], 3)} ({_pct(err[m][st]['median_signed'])})"
                    for _, m, st in ERROR_COLUMNS),
                  f"{len(summary['overload_disagreements'])} differ")
    return table


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The full medians (every statistic) as text lines."""
    lines = []
    for m, by_stat in summary["error"].items():
        parts = [f"{st} {_num(v['median_abs'])}% ({_pct(v['median_signed'])})"
                 for st, v in by_stat.items()]
        lines.append(f"median |err| (bias) {m.upper():4s}: " + ", ".join(parts))
    mp = summary["mape"]
    lines.append(f"median per-request MAPE: TTFT {_num(mp['ttft'])}%, E2E {_num(mp['e2e'])}%")
    return lines
