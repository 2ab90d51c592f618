"""The capacity search's answers: the recommendation table, its sentences, the knee plot.

Rate search: one row per strategy (capacity = mean over replications of each chain's last
passing rate, with its 95 % t interval, the bisection tolerance, the cluster and its hourly
cost, cost per req/s held, and the paired difference against the first strategy: replication
k of every strategy has the same seed, so the difference is taken replication by
replication). Node search: one row per node group (GPU type) and strategy
(nodes = the largest over replications, so every replication met the SLOs; GPUs and cost).
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sim.report.plots import render, strategy_colours
from sim.report.stats import mean_ci, paired_difference
from sim.sweep.capacity import Search
from sim.sweep.prices import gpu_of, hourly_cost, with_scenario_prices
from sim.sweep.report import write_folder


def recommendations(search: Search, prices: dict[str, float]) -> pd.DataFrame:
    """The recommendation table (see the module docstring)."""
    rows = []
    by_key: dict[tuple[Any, str], list[Any]] = {}
    for chain in search.chains:
        by_key.setdefault((chain.group, chain.strategy), []).append(chain)
    base = next(iter(by_key.values()))  # the first strategy: paired differences against it
    for (group, strategy), chains in by_key.items():
        notes = sorted({c.note for c in chains if c.note})
        if group is None:
            rows.append(_rate_row(search, strategy, chains, prices)
                        | _paired(chains, base) | {"note": "; ".join(notes)})
        else:
            rows.append(_nodes_row(search, group, strategy, chains, prices)
                        | {"note": "; ".join(notes)})
    return pd.DataFrame(rows)


def _rate_row(search: Search, strategy: str, chains: list[Any],
              prices: dict[str, float]) -> dict[str, Any]:
    values = [c.good if c.good is not None else math.nan for c in chains]
    est = mean_ci(values)
    resolved = search.base_resolved
    cost = hourly_cost(resolved, prices)
    gpu, _ = gpu_of(resolved.node_specs[0])
    return {"strategy": strategy, "capacity_rps": est.mean, "ci95_rps": est.half_width,
            "min_rps": float(np.nanmin(values)) if est.n else math.nan,
            "max_rps": float(np.nanmax(values)) if est.n else math.nan,
            "replications": est.n, "tolerance_rps": search.tol,
            "nodes": len(resolved.node_specs),
            "gpus": sum(gpu_of(s)[1] for s in resolved.node_specs), "gpu": gpu,
            "usd_per_hour": cost,
            "usd_per_hour_per_rps": cost / est.mean if est.mean > 0 else math.nan}


def _paired(chains: list[Any], base: list[Any]) -> dict[str, Any]:
    """Capacity minus the first strategy's, replication by replication (same seeds), with
    its 95 % interval: much tighter than the difference of two intervals."""
    def by_rep(cs: list[Any]) -> dict[int, float]:
        return {c.replication: c.good if c.good is not None else math.nan for c in cs}
    d = paired_difference(by_rep(chains), by_rep(base))
    return {"vs": base[0].strategy, "paired_diff_rps": d.mean, "paired_ci95_rps": d.half_width}


def _nodes_row(search: Search, group: int, strategy: str, chains: list[Any],
               prices: dict[str, float]) -> dict[str, Any]:
    counts = [c.good if c.good is not None else math.nan for c in chains]
    need = max(counts) if all(math.isfinite(c) for c in counts) else math.nan
    spec = search.base_resolved.scenario.cluster.node_groups[group]
    gpu, per_node = gpu_of(search.base_resolved.node_specs[
        sum(g.count for g in search.base_resolved.scenario.cluster.node_groups[:group])])
    prices = with_scenario_prices(search.base_resolved, prices)
    price = prices.get(spec.name.lower(), prices.get(gpu, math.nan))
    rate = search.spec.rate or search.base_rate  # NaN: the scenario's own (a trace)
    nodes = int(need) if math.isfinite(need) else None
    return {"group": spec.name, "gpu": gpu, "strategy": strategy, "rate_rps": rate,
            "nodes": nodes, "nodes_min": int(min(counts)) if nodes else None,
            "replications": len(chains), "gpus": nodes * per_node if nodes else None,
            "usd_per_hour": nodes * per_node * price if nodes else math.nan}


def sentences(table: pd.DataFrame, search: Search) -> list[str]:
    """The recommendation in words."""
    out = []
    slos = ", ".join(f"{s.name} {'<=' if s.at_most else '>='} {s.limit:g}"
                     for s in search.spec.slos)
    if "capacity_rps" in table:
        t = table.sort_values("capacity_rps", ascending=False, na_position="last")
        first = t.iloc[0]
        parts = [f"{r.strategy} {r.capacity_rps:.3g} ± {_hw(r.ci95_rps, search.tol)}"
                 for r in t.itertuples()]
        out.append(f"on {int(first.nodes)} x {first.gpu} ({int(first.gpus)} GPUs), within "
                   f"{slos}: " + "; ".join(parts) + " req/s (95 % interval over "
                   f"replications; bisection tolerance {search.tol:.3g} req/s)")
        others = table[table["strategy"] != table["vs"]]
        if len(others):
            diffs = [f"{r.strategy} {r.paired_diff_rps:+.3g} ± "
                     f"{_hw(r.paired_ci95_rps, search.tol)}" for r in others.itertuples()]
            out.append(f"paired with {table['vs'].iloc[0]} (same seeds): " + "; ".join(diffs)
                       + " req/s")
        if table["usd_per_hour"].notna().any():
            out.append(f"cluster cost {first.usd_per_hour:.4g} USD/h: "
                       f"{first.usd_per_hour / first.capacity_rps:.3g} USD/h per req/s with "
                       f"{first.strategy}")
        return out
    ok = table[table["nodes"].notna()]
    rate = float(table["rate_rps"].iloc[0])
    load = f"{rate:g} req/s" if math.isfinite(rate) else "the scenario's load"
    if ok.empty:
        return [f"no configuration tried meets {slos} at {load}"]
    key = "usd_per_hour" if ok["usd_per_hour"].notna().all() else "gpus"
    best = ok.sort_values(key, kind="stable").iloc[0]
    tied = ok[(ok["group"] == best.group) & (ok[key] == best[key])]["strategy"].tolist()
    who = tied[0] if len(tied) == 1 else f"any of {', '.join(tied)}"
    cost = f" at {best.usd_per_hour:.4g} USD/h" if key == "usd_per_hour" else ""
    out.append(f"cheapest configuration meeting {load} within {slos}: "
               f"{int(best.nodes)} x {best.gpu} ({int(best.gpus)} GPUs, group {best.group}) "
               f"with {who}{cost}")
    for g, part in ok.groupby("group", sort=False):
        parts = [f"{r.strategy} {int(r.nodes)}" for r in part.itertuples()]
        out.append(f"{g}: nodes needed: " + ", ".join(parts))
    return out


def _hw(hw: float, tol: float) -> str:
    return f"{hw:.2g}" if math.isfinite(hw) else f"{tol:.2g} (tolerance; one replication)"


def knee_figure(search: Search) -> Figure:
    """Worst SLO ratio (figure / limit; 1 = at the SLO) against the searched value, per
    strategy, each evaluation a point (crosses: not stable), with each rate capacity's
    interval shaded."""
    ev = pd.DataFrame(search.evaluations)
    nodes = search.spec.vary == "nodes"
    groups = list(dict.fromkeys(ev["group"])) if len(ev) else [None]
    fig = Figure(figsize=(6.4 * len(groups), 4.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(groups)))
    colours = strategy_colours([c.label for c in search.base_resolved.strategies])
    table = recommendations(search, {})
    for ax, group in zip(axes, groups, strict=True):
        part = ev[ev["group"].isna()] if group is None else ev[ev["group"] == group]
        for s, g in part.groupby("strategy", sort=False):
            y = np.minimum(g["worst_ratio"].to_numpy(dtype=float), 10.0)
            stable = g["stable"].to_numpy(dtype=bool)
            ax.scatter(g["x"][stable], y[stable], color=colours[s], label=s, s=18)
            ax.scatter(g["x"][~stable], y[~stable], color=colours[s], marker="x", s=22)
            mean = g.groupby("x")["worst_ratio"].median().clip(upper=10.0)
            ax.plot(mean.index, mean.to_numpy(), color=colours[s], linewidth=1, alpha=0.6)
            if not nodes:
                row = table[table["strategy"] == s].iloc[0]
                hw = row.ci95_rps if math.isfinite(row.ci95_rps) else search.tol
                lo, hi = float(part["x"].min()), float(part["x"].max())
                ax.axvspan(max(row.capacity_rps - hw, lo), min(row.capacity_rps + hw, hi),
                           color=colours[s], alpha=0.15)
                ax.axvline(row.capacity_rps, color=colours[s], linewidth=1.2)
        ax.axhline(1.0, color="0.3", linestyle="--", linewidth=1)
        ax.set_yscale("log")
        ax.set_xlabel("nodes" if nodes else "offered rate (req/s)")
        ax.set_ylabel("worst SLO figure / limit (≤ 1 meets)")
        ax.set_title(f"group {group}" if group is not None else "capacity knee", fontsize=11)
        ax.grid(True, color="0.9")
        ax.legend(fontsize=8)
    return fig


def markdown(table: pd.DataFrame) -> str:
    """The table as Markdown (for docs)."""
    cols = list(table.columns)
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "-" if not math.isfinite(v) else f"{v:.4g}"
        return "-" if v is None else str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |"
              for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_report(search: Search, table: pd.DataFrame, words: list[str], out: Path,
                 title: str) -> Path:
    """``out/report``: ``knee.png``, ``capacity.md`` and ``index.html``; returns the HTML."""
    png, _ = render(knee_figure(search))
    md = markdown(table)
    body = "".join(f"<li>{html.escape(w)}</li>" for w in words)
    page = (f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}img{max-width:100%}"
            "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;"
            "padding:2px 6px}</style>"
            f"<h1>{html.escape(title)}</h1><ul>{body}</ul>"
            f"{table.to_html(index=False, float_format=lambda v: f'{v:.4g}', na_rep='-')}"
            f"<h2>Knee</h2><img alt='knee' src='data:image/png;base64,"
            f"{base64.b64encode(png).decode()}'>")
    write_folder(out / "report", {"knee.png": png, "capacity.md": md, "index.html": page})
    return out / "report" / "index.html"
