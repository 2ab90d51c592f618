"""The sweep report: metrics against the swept key, one line per strategy, with 95 % t
intervals over replications (``sim.report.stats.mean_ci``), as PNG figures and one
self-contained ``index.html`` (figures inlined) beside ``summary.csv`` (the means).

The first swept key is the x axis; each combination of the other keys gets its own figure.
A non-numeric first key is plotted at positions 0..n-1 labelled with its values.
"""

from __future__ import annotations

import base64
import html
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sim.report.plots import render, strategy_colours
from sim.report.stats import mean_ci

#: (column, label, scale) of each panel; panels whose column is absent or all-NaN are skipped
PANELS = (("latency_s.ttft.p99", "p99 TTFT (s)", 1.0),
          ("latency_s.tpot.p99", "p99 TPOT (ms)", 1000.0),
          ("latency_s.e2e.p99", "p99 E2E (s)", 1.0),
          ("throughput.goodput_rps", "goodput (req/s)", 1.0),
          ("slo.attainment.all", "SLO attainment", 1.0),
          ("usd_per_goodput", "USD/h per goodput req/s", 1.0))
MAX_FIGURES = 24


def summarise(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Mean and CI half-width (``_hw``) of each panel metric per point and strategy."""
    df = df.assign(usd_per_goodput=df["cluster.usd_per_hour"] / df["throughput.goodput_rps"]
                   .where(df["throughput.goodput_rps"] > 0))
    rows = []
    for (point, strategy), g in df.groupby(["point", "strategy"], sort=False):
        out = {"point": point, **{k: g[k].iloc[0] for k in keys}, "strategy": strategy,
               "replications": len(g), "stable": float(g["stable"].mean())}
        for col, _, _ in PANELS:
            if col in g:
                e = mean_ci(pd.to_numeric(g[col], errors="coerce").to_numpy(dtype=float))
                out[col], out[f"{col}_hw"] = e.mean, e.half_width
        rows.append(out)
    return pd.DataFrame(rows)


def _figure(part: pd.DataFrame, xkey: str, strategies: Sequence[str], title: str) -> Figure:
    panels = [p for p in PANELS if p[0] in part and part[p[0]].notna().any()]
    cols = min(3, len(panels)) or 1
    nrows = -(-len(panels) // cols) or 1
    fig = Figure(figsize=(4.4 * cols, 3.4 * nrows + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, cols)).ravel()
    xs = list(dict.fromkeys(part[xkey]))
    numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in xs)
    pos = {x: (float(x) if numeric else float(i)) for i, x in enumerate(xs)}
    colours = strategy_colours(list(strategies))
    for ax, (col, label, scale) in zip(axes, panels, strict=False):
        for s in strategies:
            g = part[part["strategy"] == s]
            if g.empty:
                continue
            x = np.array([pos[v] for v in g[xkey]])
            y = g[col].to_numpy(dtype=float) * scale
            hw = np.nan_to_num(g[f"{col}_hw"].to_numpy(dtype=float) * scale)
            low = np.minimum(hw, np.maximum(y, 0.0))  # no whisker below zero
            ax.errorbar(x, y, yerr=np.vstack([low, hw]), color=colours[s], label=s,
                        marker="o", capsize=3, linewidth=1.5, markersize=4)
        unstable = part[part["stable"] < 1]
        for at in sorted({pos[v] for v in unstable[xkey]}):
            ax.axvline(at, color="0.85", linewidth=6, zorder=0)
        ax.set_xlabel(xkey, fontsize=9)
        ax.set_ylabel(label, fontsize=9)
        ax.grid(True, color="0.9")
        if not numeric:
            ax.set_xticks(list(pos.values()), [str(x) for x in xs], fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if panels:
        axes[0].legend(fontsize=8)
    fig.suptitle(title + "  (grey: some replications not stable)", fontsize=10)
    return fig


def build_sweep_report(df: pd.DataFrame, keys: Sequence[str], strategies: Sequence[str],
                       out: Path, title: str) -> Path:
    """Write ``out`` (a folder, replaced whole) and return its ``index.html``."""
    means = summarise(df, keys)
    files: dict[str, bytes | str] = {"summary.csv": means.to_csv(index=False,
                                                                 lineterminator="\n")}
    xkey, rest = (keys[0], list(keys[1:])) if keys else ("point", [])
    groups = list(means.groupby(rest, sort=False)) if rest else [((), means)]
    body = []
    for i, (combo, part) in enumerate(groups[:MAX_FIGURES]):
        combo = combo if isinstance(combo, tuple) else (combo,)
        label = ", ".join(f"{k}={v}" for k, v in zip(rest, combo, strict=True)) or "all"
        png, _ = render(_figure(part, xkey, strategies, label))
        name = f"figures/sweep-{i + 1}.png"
        files[name] = png
        body.append(f"<h2>{html.escape(label)}</h2><img alt='{html.escape(label)}' "
                    f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    table = means.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")
    files["index.html"] = (
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}img{max-width:100%}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;"
        "padding:2px 6px}</style>"
        f"<h1>{html.escape(title)}</h1><p>Means over replications with 95 % t intervals "
        f"(common random numbers across points and strategies).</p>{''.join(body)}"
        f"<h2>Means</h2>{table}")
    write_folder(out, files)
    return out / "index.html"


def write_folder(out: Path, files: dict[str, bytes | str]) -> None:
    """Write ``files`` as the folder ``out`` atomically, replacing an older one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for rel, content in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
