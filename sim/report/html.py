"""Build the report: tables and figures from result directories, written as a self-contained
HTML page (figures embedded as base64 PNG, no network needed to view it), each figure as PNG
and SVG, a Markdown summary and the per-run table as CSV.

Layout of the output folder (replaced as a whole, atomically; only a folder holding the
``.simlb-report`` marker, an empty one or none is replaced)::

    .simlb-report  index.html  summary.md  runs.csv  figures/<name>.png  figures/<name>.svg

With several result sets (e.g. one scenario at several offered loads) each set gets its own
section and its figure names are prefixed with the set's slug.
"""

from __future__ import annotations

import base64
import math
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

import sim
import sim.report.plots as plots  # the submodules, not the package: no html <-> __init__ edge
import sim.report.stats as stats
from sim.errors import InputError
from sim.report.load import Runs, load_runs
from sim.report.stats import Estimate, MetricRow

#: the headline bar chart: panel title -> summary key and scale
HEADLINE = {"p99 TTFT (ms)": ("latency_s.ttft.p99", 1000.0),
            "p99 TPOT (ms)": ("latency_s.tpot.p99", 1000.0),
            "p99 E2E (s)": ("latency_s.e2e.p99", 1.0),
            "throughput (req/s)": ("throughput.completed_rps", 1.0),
            "goodput (req/s)": ("throughput.goodput_rps", 1.0),
            "SLO attainment (%)": ("slo.attainment.all", 100.0),
            "cache hit rate (%)": ("cache.hit_rate", 100.0)}


#: metrics named in each section's "best strategy" line (plus the graded sense's CV)
WINNER_KEYS = ("latency_s.ttft.p50", "latency_s.ttft.p99", "latency_s.tpot.p99",
               "latency_s.e2e.p99", "throughput.goodput_rps", "slo.attainment.all",
               "cache.hit_rate")


@dataclass(frozen=True)
class FigureOut:
    """A rendered figure: file names (relative to the report folder) and embedded PNG."""

    name: str
    title: str
    caption: str
    png_b64: str
    png: bytes = field(repr=False)
    svg: str = field(repr=False)

    @property
    def png_path(self) -> str:
        """PNG file, relative to the report folder."""
        return f"figures/{self.name}.png"

    @property
    def svg_path(self) -> str:
        """SVG file, relative to the report folder."""
        return f"figures/{self.name}.svg"


@dataclass(frozen=True)
class Section:
    """One result set: its scenario brief, comparison tables and figures."""

    name: str
    brief: list[tuple[str, str]]
    strategies: list[str]
    baseline: str
    seeds: list[int]
    series_seed: int
    table: list[dict[str, Any]]
    diffs: list[dict[str, Any]]
    winners: list[tuple[str, str]]
    figures: list[FigureOut]
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    overall: str = ""
    identical: bool = False


def _fmt(x: float, digits: int = 3) -> str:
    if math.isnan(x):
        return "-"
    if stats.is_tie(x, 0.0):
        return "0"
    return f"{x:,.0f}" if abs(x) >= 10 ** digits else f"{x:.{digits}g}"


def _cell(e: Estimate) -> str:
    if not e.has_ci or stats.is_tie(e.half_width, 0.0):  # one run, or no spread at all
        return _fmt(e.mean)
    return f"{_fmt(e.mean)} ± {_fmt(e.half_width, 2)}"


def _diff_cell(d: Estimate, base: Estimate, better: stats.Better) -> dict[str, str]:
    if d.n == 0:
        return {"text": "-", "cls": ""}
    if stats.is_tie(d.mean, 0.0) and (not d.has_ci or stats.is_tie(d.half_width, 0.0)):
        return {"text": "0", "cls": ""}
    text = ("0" if stats.is_tie(d.mean, 0.0) else ("+" if d.mean > 0 else "") + _fmt(d.mean)) + (
        f" ± {_fmt(d.half_width, 2)}" if d.has_ci else "")
    if not math.isnan(base.mean) and not stats.is_tie(base.mean, 0.0):
        text += f" ({100 * d.mean / abs(base.mean):+.1f} %)"
    cls = ""
    if better and d.is_significant:
        cls = "better" if (d.mean < 0) == (better == "lower") else "worse"
    return {"text": text, "cls": cls}


def _table_rows(rows: list[MetricRow], strategies: list[str], baseline: str,
                grades: dict[str, str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Formatted cells of the comparison table and of the paired-difference table."""
    table, diffs = [], []
    for row in rows:
        m = row.metric
        head = {"label": m.label, "unit": m.unit, "group": m.group,
                "better": {"lower": "lower is better", "higher": "higher is better"}.get(
                    m.better or "", "")}
        table.append(head | {"cells": [{"text": _cell(row.values[s]),
                                        "cls": "best" if s in row.best else ""}
                                       for s in strategies]})
        diffs.append(head | {"cells": [_diff_cell(row.diffs[s], row.values[baseline], m.better)
                                       for s in strategies if s != baseline]})
    after = max((i for i, r in enumerate(table) if r["group"] == "balance"), default=-1) + 1
    table.insert(after, {"label": "quality grade", "unit": "", "group": "balance",
                         "better": "", "cells": [{"text": grades[s], "cls": ""}
                                                 for s in strategies]})
    return table, diffs


def _component(spec: dict[str, Any] | None) -> str:
    if not spec:
        return "none"
    params = ", ".join(f"{k}={v}" for k, v in (spec.get("params") or {}).items())
    return f"{spec.get('name')}({params})"


def scenario_brief(runs: Runs, result_set: str) -> list[tuple[str, str]]:
    """The scenario in a few lines: nodes, profile, workload, SLOs, duration, seeds."""
    cfg = runs.config(result_set)
    set_runs = runs.select(result_set=result_set)
    groups = [f"{g['count']} × {g['name']}: {_component(g.get('cost_model'))}, "
              f"batcher {_component(g.get('batcher'))}, prefix caching "
              f"{'on' if g.get('prefix_caching', True) else 'off'}"
              for g in cfg["cluster"]["node_groups"]]
    wl = cfg["workload"]
    accounting = input_block(set_runs)
    workload = "; ".join(f"{k}: {_component(wl[k])}" for k in
                         ("arrivals", "prompt_tokens", "output_tokens", "prefixes", "sessions")
                         if wl.get(k))
    if wl.get("trace"):
        workload = trace_line(wl["trace"], accounting)
    slo = ", ".join(f"{k.removesuffix('_s').upper()} ≤ {v:g} s"
                    for k, v in (cfg.get("slo") or {}).items() if v is not None) or "none"
    seeds = sorted({r.seed for r in set_runs.runs})
    offered = set_runs.summaries["throughput.offered_rps"].mean()
    metrics = cfg.get("metrics") or {}
    seeds_text = f"{len(seeds)} replication(s): {', '.join(map(str, seeds))}"
    if len(seeds) > 1 and replications_identical(set_runs):
        seeds_text += (f"; n=1: replications identical: the trace replays the same requests, "
                       f"so only seed {seeds[0]} is shown and no interval is drawn; add "
                       f"jitter_within_s: auto")
    rows = [
        ("scenario", f"{cfg['name']}: {cfg.get('description', '')}".strip()),
        ("nodes", "; ".join(groups)),
        ("workload", workload),
    ]
    if accounting:
        rows.append(("input", input_line(accounting)))
    return [
        *rows,
        ("offered load (measured)", f"{offered:.3g} req/s"),
        ("SLOs", slo),
        ("duration", f"{cfg['duration_s']:g} s; measured window [{cfg.get('warmup_s', 0):g}, "
                     f"{cfg['duration_s']:g}) s; drain up to {cfg.get('drain_timeout_s', 0):g} s"),
        ("seeds", seeds_text),
        ("router", f"telemetry every {cfg['router'].get('telemetry_interval_s', 0):g} s; "
                   f"strategies: {', '.join(set_runs.strategies)}"),
        ("balance grade on", f"{metrics.get('grade_on', 'busy')} (CV across nodes), folded "
                             "with the herding grade: the worse of the two"),
    ]


def input_block(runs: Runs) -> dict[str, Any]:
    """The ``input`` block of the first run's summary (every strategy of a replication
    replays the same requests); empty for results written before it existed."""
    for run in runs.runs:
        block = run.summary.get("input")
        if isinstance(block, dict) and block:
            return block
    return {}


def replications_identical(runs: Runs) -> bool:
    """Whether the runs' replications replayed identical requests (a trace without jitter):
    then replications are one run repeated, and the report shows n=1."""
    return any(bool((r.summary.get("input") or {}).get("replications_identical"))
               for r in runs.runs)


def trace_line(trace: dict[str, Any], accounting: dict[str, Any]) -> str:
    """The workload row of a trace replay: format, file, rows, what was replayed."""
    fmt = accounting.get("format") or trace.get("format", "?")
    text = f"trace ({fmt}) {trace.get('path', '')}"
    if accounting:
        text += (f": {accounting.get('trace_rows', 0):,} rows, "
                 f"{accounting.get('replayed', 0):,} requests replayed, "
                 f"{accounting.get('dropped_total', 0):,} dropped, "
                 f"{accounting.get('over_context', 0):,} beyond the context")
    options = [f"{k} {trace[k]}" for k in ("output_cap", "over_context", "time_scale",
                                            "target_rate_rps", "prompt_scale", "jitter_within_s",
                                            "loop") if trace.get(k) not in (None, False)]
    return text + (f"; {', '.join(options)}" if options else "")


def input_line(block: dict[str, Any]) -> str:
    """What became of the input, in words: rows, drops by reason, caps, trims, rejections."""
    parts = []
    if block.get("kind") == "trace":
        parts.append(f"{block.get('trace_rows', 0):,} trace rows, "
                     f"{block.get('replayed', 0):,} requests replayed")
    else:
        parts.append(f"{block.get('replayed', 0):,} requests generated")
    dropped = {k: v for k, v in (block.get("dropped") or {}).items() if v}
    if dropped:
        parts.append(f"{sum(dropped.values()):,} dropped ("
                     + ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in dropped.items())
                     + ")")
    else:
        parts.append("none dropped")
    if block.get("capped"):
        parts.append(f"{block['capped']:,} outputs cut to output_cap {block.get('output_cap')}")
    if block.get("trimmed"):
        parts.append(f"{block['trimmed']:,} prompts trimmed to fit the context")
    if block.get("over_context"):
        parts.append(f"{block['over_context']:,} requests beyond the "
                     f"{block.get('context_tokens') or 0:,}-token context (rejected by the "
                     f"nodes)")
    return "; ".join(parts)


def _figure(name: str, title: str, caption: str, fig: Any) -> FigureOut:
    png, svg = plots.render(fig)
    return FigureOut(name, title, caption, base64.b64encode(png).decode("ascii"), png, svg)


def _cdf_figures(runs: Runs, strategies: list[str], colours: dict[str, str],
                 prefix: str) -> list[FigureOut]:
    req = runs.requests()
    slo = runs.config().get("slo") or {}
    out = []
    for key, what, col in (("ttft_cdf", "TTFT", "ttft_s"), ("e2e_cdf", "E2E", "e2e_s")):
        samples = {s: req.loc[req["strategy"] == s, col].to_numpy(dtype=float)
                   for s in strategies}
        fig = plots.latency_cdf(samples, colours, what=what, slo_s=slo.get(col))
        out.append(_figure(prefix + key, f"{what} distribution", CAPTIONS[key], fig))
    return out


def _time_figures(runs: Runs, strategies: list[str], colours: dict[str, str], seed: int,
                  prefix: str) -> list[FigureOut]:
    cfg = runs.config()
    window = (float(cfg.get("warmup_s", 0.0)), float(cfg["duration_s"]))
    sense = (cfg.get("metrics") or {}).get("grade_on", "busy")
    timeline = runs.timeline(seed=seed)
    load, label = stats.node_load(timeline, sense)
    described = f"{label}: {stats.TIMELINE_LOAD.get(sense, ('', '', label))[2]}"
    note = f" Seed {seed} (time series show one replication)."
    heat = plots.node_heatmap(load, strategies, colours, label=label, window=window)
    cv = plots.cv_over_time(stats.cv_over_time(load), strategies, colours, sense=label,
                            window=window)
    kvq = plots.kv_and_queue(stats.over_time(timeline, "kv_occupancy", "mean"),
                             stats.over_time(timeline, "waiting", "sum"), strategies, colours,
                             window=window)
    req = runs.requests(seed=seed, measured_only=False)
    bucket = float((cfg.get("metrics") or {}).get("bucket_s", 1.0))
    end = float(timeline["t_s"].max()) + bucket
    first = req[req["strategy"] == strategies[0]]
    tput = plots.throughput_over_time(
        stats.rate_over_time(req["finish_s"], req["strategy"], bucket, end),
        stats.over_time(timeline, "decode_tokens_per_s", "sum"),
        stats.rate_over_time(first["arrival_s"], first["strategy"], bucket, end),
        strategies, colours, window=window)
    return [_figure(prefix + "node_load_heatmap", "Per-node load over time",
                    CAPTIONS["node_load_heatmap"].format(label=described) + note, heat),
            _figure(prefix + "cv_over_time", "Load imbalance (CV) over time",
                    CAPTIONS["cv_over_time"].format(label=described) + note, cv),
            _figure(prefix + "kv_queue", "KV occupancy and queue length over time",
                    CAPTIONS["kv_queue"] + note, kvq),
            _figure(prefix + "throughput", "Throughput over time",
                    CAPTIONS["throughput"] + note, tput)]


def _elasticity_figure(runs: Runs, strategies: list[str], colours: dict[str, str], seed: int,
                       prefix: str) -> FigureOut:
    """The recovery curve and the node count over time, from each run's ``elasticity``."""
    slo, nodes = [], []
    for run in runs.select(seed=seed).runs:
        block = run.summary.get("elasticity") or {}
        series, count = block.get("slo_series") or {}, block.get("node_count") or {}
        arrived = np.asarray(series.get("arrived", []), dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.asarray(series.get("met", []), dtype=float) / arrived
        slo.append(pd.DataFrame({"strategy": run.strategy, "t_s": series.get("t_s", []),
                                 "value": share}))
        t_nodes, routable = list(count.get("t_s", [])), list(count.get("routable", []))
        end = float(series["t_s"][-1]) + float(series["interval_s"]) if arrived.size else None
        if routable and end is not None and end > t_nodes[-1]:
            t_nodes, routable = [*t_nodes, end], [*routable, routable[-1]]  # hold to the end
        nodes.append(pd.DataFrame({"strategy": run.strategy, "t_s": t_nodes,
                                   "value": routable}))
    cfg = runs.config()
    window = (float(cfg.get("warmup_s", 0.0)), float(cfg["duration_s"]))
    fig = plots.elasticity_over_time(pd.concat(slo), pd.concat(nodes), strategies, colours,
                                     window=window)
    return _figure(prefix + "elasticity", "Failures and recovery",
                   CAPTIONS["elasticity"] + f" Seed {seed}.", fig)


def _bars(summaries: pd.DataFrame, strategies: list[str], colours: dict[str, str],
          sense: str, prefix: str) -> FigureOut:
    keys = HEADLINE | {f"CV of {sense.replace('_', ' ')}": (f"utilization.{sense}.cv", 1.0),
                       "herding index": ("herding.index", 1.0)}
    panels = {}
    for title, (key, scale) in keys.items():
        metric = stats.Metric(key, title, scale=scale)
        rows = stats.metric_table(summaries, strategies, strategies[0], [metric])[0]
        panels[title] = rows.values
    lower = {t for t in keys if t.startswith(("p99", "CV", "herding"))}
    fig = plots.headline_bars(panels, colours, ncols=3, lower=lower)
    return _figure(prefix + "headline", "Headline metrics", CAPTIONS["headline"], fig)


#: what each figure shows and how to read it (also used in docs/reports.md)
CAPTIONS = {
    "ttft_cdf": "Time to first token of every measured request (arrivals in the measurement "
                "window), pooled over replications. Left: the CDF (a curve further left is "
                "faster). Right: the tail, the fraction of requests slower than x on a log "
                "scale, where p99 is the height 10⁻². The dashed line is the TTFT SLO.",
    "e2e_cdf": "End-to-end latency (arrival to last token) of every measured request, pooled "
               "over replications; read as the TTFT figure. E2E is dominated by output length, "
               "so strategies differ less here than in TTFT.",
    "node_load_heatmap": "Load of each node (rows) over time, one strip per strategy, on one "
                         "colour scale; the load is {label}. Even colour down a column means "
                         "balanced nodes; dashed lines bound the measurement window.",
    "cv_over_time": "Coefficient of variation (std / mean) across nodes of the load in each "
                    "time bucket, the load being {label} (0 = every node equally loaded). "
                    "Grey: warm-up and drain, outside the measurement window.",
    "kv_queue": "Top: KV-cache blocks in use as a share of capacity, averaged over nodes. "
                "Bottom: requests waiting for admission, summed over nodes; a queue that "
                "builds under a burst is where TTFT is lost.",
    "throughput": "Top: requests completed per second, with the offered arrival rate "
                  "(dashed grey; the same for every strategy). Bottom: output tokens "
                  "generated per second, summed over nodes.",
    "headline": "Means over replications of the headline metrics, one horizontal bar per "
                "strategy (the same order in every panel; the best bar outlined in black); "
                "error bars are 95 % t confidence intervals (shown only with two or more "
                "replications, clipped at zero). The last panels are the CV across nodes of "
                "the graded sense of load and the herding index (0: every burst and second "
                "spread as evenly as possible; 1: each sent to one node).",
    "elasticity": "Runs with failures or autoscaling (docs/faults.md). Top: the share of the "
                  "requests arriving in each interval that met every SLO (failed ones count "
                  "as missed): the dip is the outage, its width the time to detect and "
                  "recover. Bottom: the nodes the router could send to (healthy and "
                  "provisioned).",
    "sweep": "p99 TTFT (left) and goodput (right) against the measured offered load, one "
             "point per result set (strategies dodged slightly sideways); error bars are 95 % "
             "CIs over replications, clipped at zero. The dotted line is goodput = offered "
             "load: the gap below it is traffic that missed an SLO (completions of warm-up "
             "arrivals can lift goodput slightly above it).",
}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "set"


def _section(runs: Runs, result_set: str, colours: dict[str, str], baseline: str | None,
             prefix: str) -> Section:
    part = runs.select(result_set=result_set)
    strategies = part.strategies
    base = baseline if baseline in strategies else strategies[0]
    seeds = sorted({r.seed for r in part.runs})
    common = [s for s in seeds if all(part.select(strategy=x, seed=s).runs for x in strategies)]
    series_seed = (common or seeds)[0]
    identical = len(seeds) > 1 and replications_identical(part)
    if identical:  # the replications are one run repeated: n=1, no intervals
        part = part.select(seed=series_seed)
        seeds = [series_seed]
    summaries = part.summaries
    faults = "elasticity.availability" in summaries.columns
    rows = stats.metric_table(summaries, strategies, base,
                              (*stats.METRICS, *stats.ELASTICITY_METRICS) if faults
                              else stats.METRICS)
    table, diffs = _table_rows(rows, strategies, base, stats.grades(summaries, strategies))
    sense = (part.config().get("metrics") or {}).get("grade_on", "busy")
    keys = (*WINNER_KEYS, f"utilization.{sense}.cv")
    winners = [(r.metric.label, ", ".join(r.best)) for r in rows
               if r.metric.key in keys and r.best]
    balance = stats.Metric(f"utilization.{sense}.cv", f"balance (CV of {sense})", "", 1.0,
                           "lower")
    found = stats.verdicts(summaries, strategies, base,
                           (*stats.VERDICT_METRICS, balance, stats.HERDING))
    names, wins = stats.overall(found)
    overall = ""
    if len(names) == 1 and len(strategies) > 1:
        overall = f"{names[0]} is best on {wins} of {len(found)} headline metrics"
    elif len(names) > 1:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        overall = f"{shown} tie: best on {wins} of {len(found)} headline metrics each"
    figures = [*_cdf_figures(part, strategies, colours, prefix),
               _bars(summaries, strategies, colours, sense, prefix),
               *_time_figures(part, strategies, colours, series_seed, prefix)]
    if faults:
        figures.append(_elasticity_figure(part, strategies, colours, series_seed, prefix))
    return Section(result_set, scenario_brief(runs, result_set), strategies, base, seeds,
                   series_seed, table, diffs, winners, figures,
                   [_verdict_row(v) for v in found], overall, identical)


def _verdict_row(v: stats.Verdict) -> dict[str, Any]:
    """A verdict as the template shows it."""
    m = v.metric
    unit = f" {m.unit}" if m.unit else ""
    if not v.best:
        return {"metric": m.label, "best": [], "value": "-", "against": "", "test": "",
                "why": v.why}
    against = ""
    if v.runner_up:
        d = v.diff
        delta_unit = " points" if m.unit == "%" else unit  # a difference of percentages
        against = (f"{v.runner_up}: {'+' if d.mean > 0 else ''}{_fmt(d.mean)}{delta_unit}"
                   + (f" ± {_fmt(d.half_width, 2)}" if d.has_ci else ""))
    test = {"significant": f"significant (paired, n={v.diff.n})",
            "not significant": f"not significant (paired, n={v.diff.n})",
            "untested": "untested: one replication"}.get(v.test, "")
    return {"metric": m.label, "best": list(v.best), "value": f"{_cell(v.value)}{unit}",
            "against": against, "test": test, "cls": v.test.replace(" ", "-"), "why": v.why}


def _sweep_figures(runs: Runs, colours: dict[str, str]) -> tuple[list[FigureOut], pd.DataFrame]:
    sweep = stats.load_sweep(runs.summaries)
    figures = []
    for scenario, part in sweep.groupby("scenario", sort=False):
        fig = plots.load_sweep(part, runs.strategies, colours)
        figures.append(_figure(f"sweep-{_slug(str(scenario))}",
                               f"{scenario}: latency and goodput against offered load",
                               CAPTIONS["sweep"], fig))
    return figures, sweep


def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("sim.report", "templates"),
        autoescape=lambda name: bool(name and name.endswith(".html.j2")),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True)


#: the file marking a folder as written by ``simlb report`` (only such a folder is replaced)
MARKER = ".simlb-report"
MARKER_TEXT = "written by simlb report; the whole folder is replaced by the next report\n"


def check_out_dir(out: Path) -> None:
    """Refuse an output folder that exists and is neither empty nor a report simlb wrote
    (one holding the ``MARKER`` file): replacing it would delete what is in it."""
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError("is a file; expected a folder for the report (choose another --out)",
                         source=str(out))
    if any(out.iterdir()) and not (out / MARKER).is_file():
        raise InputError(f"exists and is not a simlb report (no {MARKER} file in "
                         f"it); choose another --out, or empty the folder", source=str(out))


def _write_atomically(out: Path, files: dict[str, bytes | str]) -> None:
    """Write ``files`` (relative path -> content) and the ``MARKER`` as the folder ``out``,
    replacing an old report there; refuse to replace a folder that is not a report."""
    check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    files = {MARKER: MARKER_TEXT, **files}
    try:
        for rel, content in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def build_report(result_dirs: Sequence[str | Path], out_dir: str | Path | None = None,
                 baseline: str | None = None) -> Path:
    """Read result directories (never simulating) and write the report; return index.html.

    Args:
        result_dirs: output, scenario, strategy or run folders; several folders holding one
            scenario at different offered loads add the load-sweep figure.
        out_dir: the report folder (default ``<result_dirs[0]>/report``), replaced as a whole.
        baseline: the strategy paired differences are taken against (default: the first).

    Raises:
        InputError: no result directories, a corrupt file, or an unknown baseline.
    """
    if not result_dirs:
        raise InputError("no result directories given")
    out = Path(out_dir) if out_dir is not None else Path(result_dirs[0]) / "report"
    check_out_dir(out)
    runs = load_runs(result_dirs)
    if baseline is not None and baseline not in runs.strategies:
        raise InputError(f"unknown baseline strategy {baseline!r}; the results hold: "
                         f"{', '.join(runs.strategies)}")
    colours = plots.strategy_colours(runs.strategies)
    multi = len(runs.result_sets) > 1
    sections = [_section(runs, s, colours, baseline, f"{_slug(s)}-" if multi else "")
                for s in runs.result_sets]
    sweep_figs, sweep = _sweep_figures(runs, colours)
    context = {"title": "simlb report: " + ", ".join(runs.result_sets), "sections": sections,
               "sweep_figures": sweep_figs, "sweep": sweep.to_dict("records"),
               "colours": colours, "version": sim.__version__,
               "sources": [str(p) for p in result_dirs], "n_runs": len(runs)}
    env = _templates()
    files: dict[str, bytes | str] = {
        "index.html": env.get_template("report.html.j2").render(context),
        "summary.md": env.get_template("summary.md.j2").render(context),
        "runs.csv": runs.summaries.to_csv(index=False)}
    for fig in [f for s in sections for f in s.figures] + sweep_figs:
        files[fig.png_path] = fig.png
        files[fig.svg_path] = fig.svg
    _write_atomically(out, files)
    return out / "index.html"
