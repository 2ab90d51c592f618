"""The ``fidelity.html`` page: summary tables and, per run, predicted vs measured CDFs of TTFT
and E2E and a per-request scatter, as PNGs embedded in one self-contained file."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from sim.fidelity.evaluate import Evaluated
from sim.fidelity.score import METRICS, STATS
from sim.fidelity.table import ERROR_COLUMNS

COLOURS = {"measured": "#000000", "simlb": "#0072B2"}
STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{padding:3px 8px;
border-bottom:1px solid #ddd;text-align:right}td:first-child,th:first-child{text-align:left}
.bad{color:#b00;font-weight:bold}.note{color:#555;font-size:13px}img{max-width:100%}
h2{margin-top:2em;border-top:1px solid #ccc;padding-top:1em}"""


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(x: float, pct: bool = False) -> str:
    if not isinstance(x, (int, float)) or not math.isfinite(x):
        return "-"
    return f"{x:+.1f}" if pct else f"{x:.4g}"


def _log(ax: Axes, *, y: bool = False) -> None:
    """Log axes labelled at 1, 2, 5 x 10^k in plain numbers (minor ticks unlabelled)."""
    ax.set_xscale("log")
    if y:
        ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis) if y else (ax.xaxis,):
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())


def cdf_figure(ev: Evaluated) -> Figure:
    """Predicted vs measured CDFs of TTFT and E2E (log x) for one run."""
    from sim.report.plots import _style

    both = ev.run.ok & ev.prediction.completed
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    for ax, (metric, meas, pred) in zip(
            fig.subplots(1, 2),
            (("TTFT", ev.run.ttft_s, ev.prediction.ttft_s),
             ("E2E", ev.run.e2e_s, ev.prediction.e2e_s)), strict=True):
        for label, x in (("measured", meas[both]), ("simlb", pred[both])):
            x = np.sort(x[np.isfinite(x) & (x > 0)])
            if x.size:
                ax.plot(x, np.arange(1, x.size + 1) / x.size, color=COLOURS[label],
                        label=label, linewidth=1.6)
        _log(ax)
        _style(ax, f"{metric} (s, log scale)", "fraction of requests ≤ x", f"{metric} CDF")
        ax.legend(frameon=False, fontsize=9, loc="lower right")
    return fig


def scatter_figure(ev: Evaluated) -> Figure:
    """Per-request predicted vs measured E2E and TTFT (log-log, diagonal = exact)."""
    from sim.report.plots import _style

    both = ev.run.ok & ev.prediction.completed
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    for ax, (metric, meas, pred) in zip(
            fig.subplots(1, 2),
            (("TTFT", ev.run.ttft_s, ev.prediction.ttft_s),
             ("E2E", ev.run.e2e_s, ev.prediction.e2e_s)), strict=True):
        m, p = meas[both], pred[both]
        keep = (m > 0) & (p > 0)
        m, p = m[keep], p[keep]
        if m.size:
            ax.scatter(m, p, s=3, alpha=0.35, color=COLOURS["simlb"], linewidths=0)
            lo, hi = float(min(m.min(), p.min())), float(max(m.max(), p.max()))
            ax.plot([lo, hi], [lo, hi], color="0.3", linewidth=1, linestyle="--")
            _log(ax, y=True)
        _style(ax, f"measured {metric} (s)", f"simlb {metric} (s)", f"{metric} per request")
    return fig


def _summary_table(summary: dict[str, Any]) -> str:
    rows = ["<tr><th>metric</th>" + "".join(f"<th>{s} |err| % (bias)</th>" for s in STATS)
            + "</tr>"]
    for m in METRICS:
        cells = "".join(f"<td>{_fmt(summary['error'][m][s]['median_abs'])} "
                        f"({_fmt(summary['error'][m][s]['median_signed'], True)})</td>"
                        for s in STATS)
        rows.append(f"<tr><td>{m.upper()}</td>{cells}</tr>")
    mp = summary["mape"]
    return (f"<table>{''.join(rows)}</table><p>Median per-request MAPE over runs: TTFT "
            f"{_fmt(mp['ttft'])} %, E2E {_fmt(mp['e2e'])} %. Overload verdicts differ on "
            f"{len(summary['overload_disagreements'])} run(s).</p>")


def _runs_table(results: Sequence[Evaluated]) -> str:
    head = ("<tr><th>run</th><th>rate/s</th><th>n</th><th>failed</th><th>E2E meas s</th>"
            "<th>E2E pred s</th>" + "".join(f"<th>{h} %</th>" for h, _, _ in ERROR_COLUMNS)
            + "<th>MAPE E2E %</th><th>overload meas/pred</th></tr>")
    rows = [head]
    yn = {True: "yes", False: "no"}
    for ev in results:
        s = ev.score
        flag = f"{yn[s.overload_measured.overloaded]}/{yn[s.overload_predicted.overloaded]}"
        cls = ' class="bad"' if s.overload_disagree else ""
        rows.append(
            f"<tr><td><a href='#{html.escape(s.name)}'>{html.escape(s.name)}</a></td>"
            f"<td>{_fmt(s.rate_rps)}</td><td>{s.scored}</td><td>{s.failed}</td>"
            f"<td>{_fmt(s.measured['e2e']['mean'])}</td><td>{_fmt(s.predicted['e2e']['mean'])}"
            f"</td>" + "".join(f"<td>{_fmt(s.error[m][st], True)}</td>"
                               for _, m, st in ERROR_COLUMNS)
            + f"<td>{_fmt(s.mape['e2e'])}</td><td{cls}>{flag}</td></tr>")
    return f"<table>{''.join(rows)}</table>"


def _run_section(ev: Evaluated) -> str:
    s = ev.score
    stats = ["<tr><th>metric</th>" + "".join(f"<th>{st} meas / pred (err %)</th>"
                                             for st in STATS) + "</tr>"]
    for m in METRICS:
        stats.append(f"<tr><td>{m.upper()} (s)</td>" + "".join(
            f"<td>{_fmt(s.measured[m][st])} / {_fmt(s.predicted[m][st])} "
            f"({_fmt(s.error[m][st], True)})</td>" for st in STATS) + "</tr>")
    eng = ", ".join(f"{k} {v}" for k, v in s.engine.items() if v not in (None, ""))
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in s.notes)
    return (f"<h2 id='{html.escape(s.name)}'>{html.escape(s.name)}</h2>"
            f"<p class='note'>{html.escape(s.source)} ({s.layout}); {s.rows} rows, "
            f"{s.failed} failed, {s.scored} scored. Engine: {html.escape(eng)}.</p>"
            f"<table>{''.join(stats)}</table><ul class='note'>{notes}</ul>"
            f"<img alt='CDFs' src='data:image/png;base64,{_png(cdf_figure(ev))}'>"
            f"<img alt='scatter' src='data:image/png;base64,{_png(scatter_figure(ev))}'>")


def write_page(results: Sequence[Evaluated], summary: dict[str, Any], profile: str,
               overrides: Sequence[str], path: Path) -> Path:
    """Write the self-contained HTML page to ``path`` and return it."""
    over = ", ".join(overrides) or "none"
    body = (f"<h1>simlb fidelity</h1><p>Teacher-forced replay of {len(results)} measured "
            f"run(s) with profile <code>{html.escape(profile)}</code> (overrides: "
            f"{html.escape(over)}). Errors are signed % of the measured value (+: simlb "
            f"slower); the noise floor between two GPUs running the same workload is about "
            f"2 %.</p><h3>Medians over runs</h3>{_summary_table(summary)}"
            f"<h3>Runs</h3>{_runs_table(results)}"
            + "".join(_run_section(ev) for ev in results))
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>simlb "
            f"fidelity</title><style>{STYLE}</style></head><body>{body}</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
