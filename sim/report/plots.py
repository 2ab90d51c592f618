"""The report's figures: the only module of simlb that imports matplotlib.

Object API only: every function builds its own ``matplotlib.figure.Figure`` (no pyplot, no
global state, no rcParams changes), so figures can be built concurrently and never appear on a
screen. One function per figure type; each takes tidy pandas tables (columns ``strategy``,
``t_s``, ``value``... as built by ``sim.report.stats``) and a strategy -> colour mapping from
``strategy_colours``, so a strategy keeps its colour in every figure of a report.
"""

from __future__ import annotations

import io
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from sim.report.stats import Estimate

#: Okabe-Ito colour-blind-safe palette (yellow last: weak on white), then tab10's extra hues,
#: then tab20's light and dark variants, so 24 strategies get distinct colours
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000",
           "#8C564B", "#7F7F7F", "#BCBD22", "#F0E442", "#17BECF",
           "#393B79", "#9C9EDE", "#637939", "#B5CF6B", "#8C6D31", "#E7BA52", "#843C39",
           "#E7969C", "#7B4173", "#CE6DBD", "#3182BD", "#FD8D3C")
#: from this many strategies, line figures become small multiples and legends get columns
MANY = 9
TITLE_PT, LABEL_PT, TICK_PT, LEGEND_PT = 12, 11, 10, 9
#: points per CDF line (quantiles), enough for a smooth curve and small SVG files
CDF_POINTS = 1500
Window = tuple[float, float]


def strategy_colours(strategies: Sequence[str]) -> dict[str, str]:
    """A fixed colour per strategy, in order (the palette repeats beyond 24 strategies)."""
    return {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(strategies)}


def render(fig: Figure, dpi: int = 110) -> tuple[bytes, str]:
    """The figure as PNG bytes and SVG text (no timestamps in either)."""
    png, svg = io.BytesIO(), io.StringIO()
    fig.savefig(png, format="png", dpi=dpi, metadata={"Software": None})
    fig.set_layout_engine("none")  # keep the layout of the first draw: no second solve
    fig.savefig(svg, format="svg", metadata={"Date": None})
    return png.getvalue(), svg.getvalue()


def _style(ax: Axes, xlabel: str, ylabel: str, title: str = "") -> None:
    ax.set_xlabel(xlabel, fontsize=LABEL_PT)
    ax.set_ylabel(ylabel, fontsize=LABEL_PT)
    if title:
        ax.set_title(title, fontsize=TITLE_PT)
    ax.tick_params(labelsize=TICK_PT)
    ax.grid(True, color="0.88", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _shade_window(ax: Axes, window: Window, end_s: float) -> None:
    """Grey out warm-up and drain: outside the measurement window."""
    a, b = window
    if a > 0:
        ax.axvspan(0, a, color="0.93", zorder=0, linewidth=0)
    if end_s > b:
        ax.axvspan(b, end_s, color="0.93", zorder=0, linewidth=0)
    ax.set_xlim(0, end_s)


def _side_legend(fig: Figure, ax: Axes) -> None:
    """One legend for the whole figure, outside the plots (never over the data): right of
    them, or below them in columns when there are many entries."""
    handles, labels = ax.get_legend_handles_labels()
    if len(labels) < MANY + 3:
        fig.legend(handles, labels, loc="outside right upper", fontsize=LEGEND_PT,
                   frameon=False)
    else:
        fig.legend(handles, labels, loc="outside lower center", fontsize=LEGEND_PT,
                   frameon=False, ncols=min(6, -(-len(labels) // 2)))


def latency_cdf(samples: Mapping[str, np.ndarray], colours: Mapping[str, str], *,
                what: str, slo_s: float | None = None) -> Figure:
    """CDF (left) and tail (right, log scale) of a latency, one line per strategy.

    Args:
        samples: latency samples in seconds per strategy (NaN ignored).
        colours: from ``strategy_colours``.
        what: the latency's name, e.g. "TTFT".
        slo_s: the SLO, drawn as a dashed vertical line when given.
    """
    if len(samples) >= MANY:
        return _tail_multiples(samples, colours, what=what, slo_s=slo_s)
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    q = np.linspace(0.0, 1.0, CDF_POINTS)
    for strategy, x in samples.items():
        x = np.asarray(x, dtype=float)
        x = x[np.isfinite(x) & (x > 0)]
        if x.size == 0:
            continue
        xs = np.quantile(x, q)
        left.plot(xs, q, color=colours[strategy], label=strategy, linewidth=1.8)
        right.plot(xs[:-1], 1.0 - q[:-1], color=colours[strategy], label=strategy,
                   linewidth=1.8)
    for ax in (left, right):
        ax.set_xscale("log")
        if slo_s:
            ax.axvline(slo_s, color="0.3", linestyle="--", linewidth=1.0, label="SLO")
    right.set_yscale("log")
    right.set_ylim(bottom=1e-3)
    _style(left, f"{what} (s, log scale)", "fraction of requests ≤ x", f"{what}: CDF")
    _style(right, f"{what} (s, log scale)", "fraction of requests > x",
           f"{what}: tail (1 − CDF)")
    _side_legend(fig, left)
    return fig


def _tail_multiples(samples: Mapping[str, np.ndarray], colours: Mapping[str, str], *,
                    what: str, slo_s: float | None, ncols: int = 5) -> Figure:
    """Small multiples of the latency tail: one panel per strategy, its curve in colour over
    every other strategy's in light grey, on shared log axes (readable with 20 strategies)."""
    q = np.linspace(0.0, 1.0, CDF_POINTS)
    curves = {}
    for strategy, x in samples.items():
        x = np.asarray(x, dtype=float)
        x = x[np.isfinite(x) & (x > 0)]
        if x.size:
            curves[strategy] = np.quantile(x, q)
    names = list(samples)
    nrows = -(-len(names) // ncols)
    fig = Figure(figsize=(2.6 * ncols, 0.4 + 2.1 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    for ax, strategy in zip(axes, names, strict=False):
        for other, xs in curves.items():
            if other != strategy:
                ax.plot(xs[:-1], 1.0 - q[:-1], color="0.82", linewidth=0.8)
        if strategy in curves:
            ax.plot(curves[strategy][:-1], 1.0 - q[:-1], color=colours[strategy],
                    linewidth=1.8)
        if slo_s:
            ax.axvline(slo_s, color="0.3", linestyle="--", linewidth=0.9)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(bottom=1e-3, top=1.0)
        ax.set_title(strategy, fontsize=LABEL_PT - 1, color=colours[strategy],
                     fontweight="bold")
        ax.tick_params(labelsize=TICK_PT - 2)
        ax.grid(True, color="0.9", linewidth=0.6)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.supxlabel(f"{what} (s, log scale)", fontsize=LABEL_PT)
    fig.supylabel("fraction of requests > x", fontsize=LABEL_PT)
    fig.suptitle(f"{what}: tail (1 − CDF) per strategy; grey: the other strategies"
                 + ("; dashed: SLO" if slo_s else ""), fontsize=TITLE_PT)
    return fig


def node_heatmap(load: pd.DataFrame, strategies: Sequence[str], colours: Mapping[str, str],
                 *, label: str, window: Window) -> Figure:
    """Per-node load over time, one strip per strategy, on one colour scale.

    Args:
        load: columns strategy, node, t_s (bucket start), load.
        strategies: the strips, top to bottom.
        colours: strategy colours (used for the strip labels).
        label: what the load is, with its unit (colour-bar label).
        window: the measurement window, marked by dashed lines.
    """
    n_nodes = int(load["node"].max()) + 1
    strip_h = 0.3 + 0.09 * min(n_nodes, 24)
    if len(strategies) >= MANY:  # many strips: thinner, so the figure stays one screen-ish
        strip_h = 0.25 + 0.05 * min(n_nodes, 24)
    fig = Figure(figsize=(10, 0.9 + strip_h * len(strategies)), layout="constrained")
    axes = fig.subplots(len(strategies), 1, sharex=True, squeeze=False)[:, 0]
    vmax = float(np.nanmax(load["load"])) if len(load) else 1.0
    mesh = None
    for ax, strategy in zip(axes, strategies, strict=True):
        grid = load[load["strategy"] == strategy].pivot_table(
            index="node", columns="t_s", values="load", aggfunc="mean")
        t = grid.columns.to_numpy(dtype=float)
        if t.size == 0:  # this strategy has no run with the chosen seed
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
            ax.set_ylabel(strategy, fontsize=LABEL_PT, color=colours[strategy], rotation=0,
                          ha="right", va="center", fontweight="bold")
            continue
        step = float(np.diff(t).min()) if t.size > 1 else 1.0
        mesh = ax.pcolormesh(np.append(t, t[-1] + step), np.arange(n_nodes + 1) - 0.5,
                             grid.reindex(range(n_nodes)).to_numpy(dtype=float),
                             cmap="viridis", vmin=0.0, vmax=max(vmax, 1e-12), shading="flat")
        for x in window:
            ax.axvline(x, color="white", linestyle="--", linewidth=0.9)
        ax.set_ylabel(strategy, fontsize=LABEL_PT, color=colours[strategy],
                      rotation=0, ha="right", va="center", fontweight="bold")
        ax.set_yticks(range(n_nodes) if n_nodes <= 16 else
                      np.linspace(0, n_nodes - 1, 5).round().astype(int))
        ax.tick_params(labelsize=TICK_PT - 1)
    axes[-1].set_xlabel("time (s)", fontsize=LABEL_PT)
    axes[0].set_title(f"Per-node load over time (rows: nodes 0–{n_nodes - 1})",
                      fontsize=TITLE_PT)
    if mesh is not None:
        bar = fig.colorbar(mesh, ax=list(axes), shrink=0.8, pad=0.01, aspect=30)
        bar.set_label(label, fontsize=LABEL_PT - 1)
    return fig


def _lines(ax: Axes, table: pd.DataFrame, colours: Mapping[str, str],
           strategies: Sequence[str], column: str = "value") -> None:
    for strategy in strategies:
        part = table[table["strategy"] == strategy]
        ax.plot(part["t_s"], part[column], color=colours[strategy], label=strategy,
                linewidth=1.5, drawstyle="steps-post")


def cv_over_time(cv: pd.DataFrame, strategies: Sequence[str], colours: Mapping[str, str], *,
                 sense: str, window: Window) -> Figure:
    """CV of node load across nodes per time bucket, one line per strategy (with ``MANY``
    strategies or more, small multiples: one panel per strategy over the others in grey)."""
    end = float(cv["t_s"].max()) if len(cv) else window[1]
    inside = cv.loc[(cv["t_s"] >= window[0]) & (cv["t_s"] < window[1]), "cv"]
    top = float(inside.max()) if len(inside) else 0.0
    title = f"Imbalance of {sense} across nodes over time (0 = perfectly even)"
    if len(strategies) >= MANY:
        ncols = 5
        nrows = -(-len(strategies) // ncols)
        fig = Figure(figsize=(2.6 * ncols, 0.5 + 1.7 * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
        for ax, strategy in zip(axes, strategies, strict=False):
            for other in strategies:
                if other != strategy:
                    part = cv[cv["strategy"] == other]
                    ax.plot(part["t_s"], part["cv"], color="0.82", linewidth=0.7,
                            drawstyle="steps-post")
            _lines(ax, cv, colours, [strategy], "cv")
            _shade_window(ax, window, end)
            ax.set_title(strategy, fontsize=LABEL_PT - 1, color=colours[strategy],
                         fontweight="bold")
            ax.tick_params(labelsize=TICK_PT - 2)
            ax.grid(True, color="0.9", linewidth=0.6)
        axes[0].set_ylim(0, 1.25 * top if top > 0 else None)
        for ax in axes[len(strategies):]:
            ax.set_visible(False)
        fig.supxlabel("time (s)", fontsize=LABEL_PT)
        fig.supylabel("CV across nodes", fontsize=LABEL_PT)
        fig.suptitle(title + "; grey: the other strategies", fontsize=TITLE_PT)
        return fig
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax = fig.subplots()
    _lines(ax, cv, colours, strategies, "cv")
    _shade_window(ax, window, end)
    # scale to the measured window: nearly empty nodes at the drain give huge CVs
    ax.set_ylim(0, 1.25 * top if top > 0 else None)
    _style(ax, "time (s)", "CV across nodes", title)
    _side_legend(fig, ax)
    return fig


def kv_and_queue(kv: pd.DataFrame, queue: pd.DataFrame, strategies: Sequence[str],
                 colours: Mapping[str, str], *, window: Window) -> Figure:
    """Mean KV-cache occupancy (%) and total waiting requests over time, per strategy."""
    fig = Figure(figsize=(10, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    _time_panels(fig, (top, bottom), (kv.assign(value=kv["value"] * 100.0), queue), colours,
                 strategies, window,
                 (("KV occupancy (% of blocks,\nmean over nodes)", "KV cache occupancy"),
                  ("waiting requests\n(sum over nodes)", "Queue length")))
    return fig


def throughput_over_time(completed: pd.DataFrame, tokens: pd.DataFrame,
                         offered: pd.DataFrame, strategies: Sequence[str],
                         colours: Mapping[str, str], *, window: Window) -> Figure:
    """Completed requests/s (with the offered arrival rate) and output tokens/s over time."""
    fig = Figure(figsize=(10, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(offered["t_s"], offered["value"], color="0.55", linestyle="--", linewidth=1.4,
             label="offered (arrivals)", drawstyle="steps-post")
    _time_panels(fig, (top, bottom), (completed, tokens), colours, strategies, window,
                 (("requests / s", "Completed requests per second"),
                  ("output tokens / s\n(sum over nodes)", "Output token throughput")))
    return fig


def elasticity_over_time(slo_met: pd.DataFrame, routable: pd.DataFrame,
                         strategies: Sequence[str], colours: Mapping[str, str], *,
                         window: Window) -> Figure:
    """Share of arrivals meeting every SLO per interval (the recovery curve) and the nodes in
    routing over time, one line per strategy (runs with faults or autoscaling)."""
    fig = Figure(figsize=(10, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    _time_panels(fig, (top, bottom), (slo_met, routable), colours, strategies, window,
                 (("share meeting SLOs", "Arrivals meeting every SLO, per interval"),
                  ("nodes", "Nodes in routing (healthy and provisioned)")))
    return fig


def _time_panels(fig: Figure, axes: tuple[Axes, Axes],
                 frames: tuple[pd.DataFrame, pd.DataFrame], colours: Mapping[str, str],
                 strategies: Sequence[str], window: Window,
                 labels: tuple[tuple[str, str], tuple[str, str]]) -> None:
    """Two stacked time series sharing the x axis: one line per strategy in each panel, the
    warm-up and drain shaded, y from zero; ``labels`` are each panel's (y label, title)."""
    ends = [float(f["t_s"].max()) for f in frames if len(f)]
    end = max(ends) if ends else window[1]
    for ax, frame, (ylabel, title), xlabel in zip(axes, frames, labels, ("", "time (s)"),
                                                   strict=True):
        _lines(ax, frame, colours, strategies)
        _shade_window(ax, window, end)
        ax.set_ylim(bottom=0)
        _style(ax, xlabel, ylabel, title)
    _side_legend(fig, axes[0])


def headline_bars(panels: Mapping[str, Mapping[str, Estimate]], colours: Mapping[str, str],
                  ncols: int = 4, lower: Collection[str] = ()) -> Figure:
    """Small multiples of horizontal bars, one panel per headline metric, strategies down the
    shared y axis (readable with 20 strategies); error bars are 95 % CIs where defined
    (clipped at zero: every headline metric is non-negative). The best bar of each panel is
    outlined in black.

    Args:
        panels: panel title (with unit) -> strategy -> estimate.
        colours: strategy colours.
        ncols: panels per row.
        lower: titles of the panels where lower is better (the others: higher).
    """
    ncols = max(1, min(ncols, len(panels)))
    nrows = -(-len(panels) // ncols)
    names = list(next(iter(panels.values()))) if panels else []
    height = 0.9 + 0.24 * max(len(names), 3)
    fig = Figure(figsize=(3.2 * ncols + 1.0, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True).ravel()
    y = np.arange(len(names))
    for ax, (title, values) in zip(axes, panels.items(), strict=False):
        means = np.array([values[s].mean if s in values else np.nan for s in names])
        has_ci = any(values[s].has_ci for s in values)
        high = np.array([values[s].half_width if s in values and values[s].has_ci else 0.0
                         for s in names])
        low = np.minimum(high, np.maximum(np.nan_to_num(means), 0.0))
        bars = ax.barh(y, np.nan_to_num(means), color=[colours[s] for s in names],
                       xerr=np.vstack([low, high]) if has_ci else None, capsize=2,
                       error_kw={"linewidth": 0.9}, height=0.72)
        finite = np.isfinite(means)
        if finite.sum() > 1 and np.nanmax(means) > np.nanmin(means):
            best = int(np.nanargmin(means) if title in lower else np.nanargmax(means))
            bars[best].set_edgecolor("black")
            bars[best].set_linewidth(1.4)
        _style(ax, "", "", title)
        ax.grid(False, axis="y")
        ax.set_yticks(y, names)
        if ax is axes[0]:
            ax.invert_yaxis()  # first strategy on top (shared by every panel)
        ax.tick_params(axis="y", labelsize=TICK_PT - (1 if len(names) > 12 else 0))
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return fig


def load_sweep(sweep: pd.DataFrame, strategies: Sequence[str],
               colours: Mapping[str, str]) -> Figure:
    """p99 TTFT and goodput against offered load, one line per strategy (``stats.load_sweep``).

    Strategies are dodged sideways by a hair so that their error bars (95 % CIs, clipped at
    zero) do not hide each other.
    """
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    present = [s for s in strategies if (sweep["strategy"] == s).any()]
    span = float(sweep["offered_rps"].max() - sweep["offered_rps"].min()) if len(sweep) else 0.0
    for i, strategy in enumerate(present):
        part = sweep[sweep["strategy"] == strategy].sort_values("offered_rps")
        x = part["offered_rps"].to_numpy() + (i - (len(present) - 1) / 2) * 0.008 * span
        style = {"color": colours[strategy], "label": strategy, "marker": "o", "capsize": 3,
                 "linewidth": 1.6, "markersize": 5}
        for ax, col in ((left, "ttft_p99_ms"), (right, "goodput_rps")):
            y = part[col].to_numpy(dtype=float)
            hw = part[f"{col}_hw"].fillna(0.0).to_numpy(dtype=float)
            ax.errorbar(x, y, yerr=np.vstack([np.minimum(hw, np.maximum(y, 0.0)), hw]),
                        **style)
    if len(sweep):
        top = float(sweep["offered_rps"].max())
        right.plot([0, top], [0, top], color="0.6", linestyle=":", label="goodput = offered")
    for ax in (left, right):
        ax.set_ylim(bottom=0)
    _style(left, "offered load (req/s)", "p99 TTFT (ms)", "p99 TTFT against load")
    _style(right, "offered load (req/s)", "goodput (req/s)", "Goodput against load")
    _side_legend(fig, right)
    return fig
