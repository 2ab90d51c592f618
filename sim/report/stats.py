"""Statistics for reports: means with 95 % t confidence intervals over replications, paired
differences against a baseline strategy, the metric catalogue of the comparison table, the
load-sweep table and the over-time aggregates behind the figures.

Replication ``k`` of every strategy uses the same seed and therefore the same requests (common
random numbers), so the difference between a strategy and the baseline is computed seed by seed
and its interval is that of the mean paired difference: usually much narrower than the
difference of two independent intervals.

Confidence interval of a mean of ``n`` values with sample standard deviation ``s``:
``mean ± t_{0.975, n-1} · s / sqrt(n)`` (Student's t); undefined for ``n < 2``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats as sps

CONFIDENCE = 0.95
Better = Literal["lower", "higher"] | None


@dataclass(frozen=True)
class Estimate:
    """A mean with the half-width of its confidence interval (NaN when ``n < 2``)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        """Lower end of the interval."""
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        """Upper end of the interval."""
        return self.mean + self.half_width

    @property
    def has_ci(self) -> bool:
        """Whether the interval is defined (at least two finite values)."""
        return self.n >= 2 and math.isfinite(self.half_width)

    @property
    def is_significant(self) -> bool:
        """Whether the interval excludes zero (meaningful for differences)."""
        return self.has_ci and (self.low > 0 or self.high < 0)


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> Estimate:
    """Mean and t confidence interval of the finite ``values``.

    >>> e = mean_ci([1.0, 2.0, 3.0])
    >>> round(e.mean, 6), round(e.half_width, 6), e.n
    (2.0, 2.484138, 3)
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return Estimate(math.nan, math.nan, 0)
    if n == 1:
        return Estimate(float(x[0]), math.nan, 1)
    t = float(sps.t.ppf(0.5 + confidence / 2, n - 1))
    return Estimate(float(x.mean()), t * float(x.std(ddof=1)) / math.sqrt(n), n)


def paired_difference(values: Mapping[int, float], baseline: Mapping[int, float],
                      confidence: float = CONFIDENCE) -> Estimate:
    """Mean of ``values[seed] - baseline[seed]`` over the seeds both have, with its interval."""
    seeds = sorted(set(values) & set(baseline))
    diffs = [values[s] - baseline[s] for s in seeds
             if math.isfinite(values[s]) and math.isfinite(baseline[s])]
    return mean_ci(diffs, confidence)


@dataclass(frozen=True)
class Metric:
    """A row of the comparison table: a summary key, how to show it, which way is better."""

    key: str
    label: str
    unit: str = ""
    scale: float = 1.0
    better: Better = None
    group: str = ""


LOAD_SENSES = ("busy", "token_share", "kv_occupancy", "batch_occupancy", "mfu")


def _metrics() -> tuple[Metric, ...]:
    ms, pct = 1000.0, 100.0
    rows = [Metric("throughput.offered_rps", "offered load", "req/s", group="load")]
    for name, key in (("TTFT", "ttft"), ("TPOT", "tpot")):
        rows += [Metric(f"latency_s.{key}.{q}", f"{name} {q}", "ms", ms, "lower", "latency")
                 for q in ("p50", "p99")]
    rows += [Metric(f"latency_s.e2e.{q}", f"E2E {q}", "s", 1.0, "lower", "latency")
             for q in ("p50", "p99")]
    rows += [
        Metric("throughput.completed_rps", "throughput", "req/s", 1.0, "higher", "throughput"),
        Metric("throughput.output_tokens_per_s", "output tokens", "tok/s", 1.0, "higher",
               "throughput"),
        Metric("throughput.goodput_rps", "goodput", "req/s", 1.0, "higher", "throughput"),
        Metric("slo.attainment.all", "SLO attainment", "%", pct, "higher", "throughput"),
    ]
    for sense in LOAD_SENSES:
        rows += [Metric(f"utilization.{sense}.cv", f"CV {sense}", "", 1.0, "lower", "balance"),
                 Metric(f"utilization.{sense}.imbalance", f"imbalance {sense}", "", 1.0,
                        "lower", "balance")]
    rows += [Metric("herding.index", "herding index", "", 1.0, "lower", "balance")]
    rows += [
        Metric("cache.hit_rate", "cache hit rate", "%", pct, "higher", "cache"),
        Metric("preemptions.total", "preemptions", "", 1.0, "lower", "cache"),
        Metric("requests.rejected", "rejected requests", "", 1.0, "lower", "cache"),
    ]
    return tuple(rows)


#: the rows of the comparison table, in order
METRICS = _metrics()

#: rows added when the runs had faults or autoscaling (``summary.json``'s ``elasticity``)
ELASTICITY_METRICS = (
    Metric("elasticity.availability", "availability", "%", 100.0, "higher", "faults"),
    Metric("elasticity.requests.failed_total", "failed requests", "", 1.0, "lower", "faults"),
    Metric("elasticity.requests.retries", "retries", "", 1.0, "lower", "faults"),
    Metric("elasticity.detection.mean_s", "time to detect", "s", 1.0, "lower", "faults"),
    Metric("elasticity.slo_met_share.during", "SLO met during outages", "%", 100.0, "higher",
           "faults"),
    Metric("elasticity.slo_met_share.after", "SLO met after outages", "%", 100.0, "higher",
           "faults"),
    Metric("elasticity.gpu_hours", "GPU-hours", "h", 1.0, "lower", "faults"),
)


@dataclass(frozen=True)
class MetricRow:
    """One metric for every strategy: estimates, paired differences, and the best strategies."""

    metric: Metric
    values: dict[str, Estimate]
    diffs: dict[str, Estimate]
    best: tuple[str, ...]


def _by_seed(summaries: pd.DataFrame, strategy: str, metric: Metric) -> dict[int, float]:
    if metric.key not in summaries:
        return {}
    rows = summaries[summaries["strategy"] == strategy]
    values = pd.to_numeric(rows[metric.key], errors="coerce") * metric.scale
    return {int(s): float(v) for s, v in zip(rows["seed"], values, strict=True)}


#: values closer than this (absolute, or relative to the larger) count as equal: float noise
TIES = 1e-9


def is_tie(a: float, b: float) -> bool:
    """Whether two values are equal up to floating-point noise (``TIES``)."""
    return abs(a - b) <= TIES * max(1.0, abs(a), abs(b))


def _best(values: dict[str, Estimate], better: Better) -> tuple[str, ...]:
    means = {s: e.mean for s, e in values.items() if math.isfinite(e.mean)}
    if better is None or len(means) < 2 or is_tie(max(means.values()), min(means.values())):
        return ()
    target = min(means.values()) if better == "lower" else max(means.values())
    return tuple(s for s, m in means.items() if is_tie(m, target))


def metric_table(summaries: pd.DataFrame, strategies: Sequence[str], baseline: str,
                 metrics: Sequence[Metric] = METRICS) -> list[MetricRow]:
    """Estimates per strategy and paired differences against ``baseline`` for each metric.

    ``summaries`` is ``Runs.summaries`` (or a subset: one result set).
    """
    rows = []
    for metric in metrics:
        per_seed = {s: _by_seed(summaries, s, metric) for s in strategies}
        values = {s: mean_ci(list(v.values())) for s, v in per_seed.items()}
        diffs = {s: paired_difference(per_seed[s], per_seed[baseline])
                 for s in strategies if s != baseline}
        rows.append(MetricRow(metric, values, diffs, _best(values, metric.better)))
    return rows


def grades(summaries: pd.DataFrame, strategies: Sequence[str]) -> dict[str, str]:
    """The balance grade of each strategy (several, slash-separated, if replications differ)."""
    key = "utilization.grade.grade"
    out = {}
    for s in strategies:
        seen = summaries.loc[summaries["strategy"] == s, key] if key in summaries else []
        out[s] = "/".join(sorted({str(g) for g in seen if isinstance(g, str)})) or "-"
    return out


def load_sweep(summaries: pd.DataFrame, min_rel_step: float = 0.01) -> pd.DataFrame:
    """p99 TTFT and goodput against offered load, per scenario, result set and strategy.

    Only scenarios with at least two result sets whose mean offered loads differ by more than
    ``min_rel_step`` (relative) form a sweep; the result is empty otherwise. Columns:
    ``scenario, result_set, strategy, offered_rps, ttft_p99_ms, ttft_p99_ms_hw, goodput_rps,
    goodput_rps_hw`` (``_hw``: CI half-width).
    """
    rows = []
    for scenario, sc in summaries.groupby("scenario", sort=False):
        offered = sc.groupby("result_set", sort=False)["throughput.offered_rps"].mean()
        if offered.size < 2 or offered.max() - offered.min() <= min_rel_step * offered.max():
            continue
        for (result_set, strategy), g in sc.groupby(["result_set", "strategy"], sort=False):
            ttft = mean_ci(g["latency_s.ttft.p99"].to_numpy(dtype=float) * 1000.0)
            good = mean_ci(g["throughput.goodput_rps"].to_numpy(dtype=float))
            rows.append({"scenario": scenario, "result_set": result_set, "strategy": strategy,
                         "offered_rps": float(offered[result_set]),
                         "ttft_p99_ms": ttft.mean, "ttft_p99_ms_hw": ttft.half_width,
                         "goodput_rps": good.mean, "goodput_rps_hw": good.half_width})
    columns = ["scenario", "result_set", "strategy", "offered_rps", "ttft_p99_ms",
               "ttft_p99_ms_hw", "goodput_rps", "goodput_rps_hw"]
    return pd.DataFrame(rows, columns=columns).sort_values(["scenario", "offered_rps"],
                                                          kind="stable")


#: timeline column and short label standing for each sense of load over time (the timeline
#: has no FLOPs or token shares, so token share and MFU are shown as tokens processed per second)
TIMELINE_LOAD = {
    "busy": ("busy", "busy fraction", "the fraction of each bucket spent running iterations"),
    "token_share": ("tokens_per_s", "tokens/s",
                    "prefill + decode tokens processed per second (the token-share sense)"),
    "kv_occupancy": ("kv_occupancy", "KV occupancy",
                     "KV-cache blocks in use / capacity, time-weighted"),
    "batch_occupancy": ("batch_occupancy", "batch occupancy",
                        "running requests / max_num_seqs, time-weighted"),
    "mfu": ("tokens_per_s", "tokens/s",
            "prefill + decode tokens processed per second (standing for MFU)"),
}


def node_load(timeline: pd.DataFrame, sense: str) -> tuple[pd.DataFrame, str]:
    """Per-node load over time in ``sense`` (a timeline column, or tokens/s for token share
    and MFU, which the timeline does not hold): columns strategy, node, t_s, load."""
    column, label, _ = TIMELINE_LOAD.get(sense, TIMELINE_LOAD["batch_occupancy"])
    df = timeline.assign(tokens_per_s=timeline["prefill_tokens_per_s"]
                         + timeline["decode_tokens_per_s"])
    return (df[["strategy", "node", "t_s"]].assign(load=df[column].to_numpy(dtype=float)),
            label)


def cv_over_time(load: pd.DataFrame) -> pd.DataFrame:
    """Coefficient of variation across nodes (population std / mean; 0 where the mean is 0)
    per strategy and time bucket, from ``node_load``'s table: columns strategy, t_s, cv."""
    g = load.groupby(["strategy", "t_s"], sort=False)["load"]
    out = g.agg(mean="mean", std=lambda x: float(np.std(x.to_numpy()))).reset_index()
    out["cv"] = np.where(out["mean"] > 0, out["std"] / out["mean"].where(out["mean"] > 0), 0.0)
    return out[["strategy", "t_s", "cv"]]


def over_time(timeline: pd.DataFrame, column: str, how: Literal["sum", "mean"]) -> pd.DataFrame:
    """``column`` summed or averaged over nodes per strategy and bucket: strategy, t_s, value."""
    out = timeline.groupby(["strategy", "t_s"], sort=False)[column].agg(how).reset_index()
    return out.rename(columns={column: "value"})


def rate_over_time(times_s: pd.Series, group: pd.Series, bucket_s: float,
                   end_s: float) -> pd.DataFrame:
    """Events per second in buckets of ``bucket_s`` per group: columns strategy, t_s, value."""
    edges = np.arange(0.0, end_s + bucket_s, bucket_s)
    rows = []
    for name, t in times_s.groupby(group, sort=False):
        counts, _ = np.histogram(t.dropna().to_numpy(dtype=float), bins=edges)
        rows.append(pd.DataFrame({"strategy": name, "t_s": edges[:-1],
                                  "value": counts / bucket_s}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        columns=["strategy", "t_s", "value"])


# --- the verdict: the best strategy per headline metric, tested and explained ---------------

#: headline metrics of the verdict (the balance row is added per result set: the CV of the
#: graded sense of load)
VERDICT_METRICS = (
    Metric("latency_s.ttft.p99", "p99 TTFT", "ms", 1000.0, "lower"),
    Metric("latency_s.tpot.p99", "p99 TPOT", "ms", 1000.0, "lower"),
    Metric("throughput.goodput_rps", "goodput", "req/s", 1.0, "higher"),
    Metric("slo.attainment.all", "SLO attainment", "%", 100.0, "higher"),
    Metric("cache.hit_rate", "cache hit rate", "%", 100.0, "higher"),
)
HERDING = Metric("herding.index", "herding index", "", 1.0, "lower")

#: the figures a verdict's sentence may cite: metric, short name, how a change is worded
#: ("pct": relative to the reference, "points": percentage points, "abs": plain difference)
DRIVERS = (
    (Metric("cache.hit_rate", "cache hits", "%", 100.0, "higher"), "points"),
    (Metric("latency_s.ttft.p99", "TTFT p99", "ms", 1000.0, "lower"), "pct"),
    (Metric("latency_s.tpot.p99", "TPOT p99", "ms", 1000.0, "lower"), "pct"),
    (Metric("throughput.goodput_rps", "goodput", "req/s", 1.0, "higher"), "pct"),
    (Metric("slo.attainment.all", "SLO attainment", "%", 100.0, "higher"), "points"),
    (Metric("herding.index", "herding", "", 1.0, "lower"), "abs"),
    (Metric("preemptions.total", "preemptions", "", 1.0, "lower"), "pct"),
)
#: a change is worth citing from this size: 5 % relative, 2 points, 0.05 of herding index
NOTABLE = {"pct": 5.0, "points": 2.0, "abs": 0.05}


@dataclass(frozen=True)
class Verdict:
    """The best strategy on one headline metric.

    Attributes:
        metric: the metric.
        best: the strategies with the best mean (ties: several; none when all are equal).
        value: the best strategy's estimate.
        runner_up: the strategy with the next-best mean ("" with one strategy or a tie).
        diff: best minus runner-up, paired by seed.
        test: "significant", "not significant" or "untested" (one replication).
        why: one sentence: how the best differs from the reference strategy.
    """

    metric: Metric
    best: tuple[str, ...]
    value: Estimate
    runner_up: str
    diff: Estimate
    test: str
    why: str


def _change(metric: Metric, kind: str, values: Mapping[int, float],
            reference: Mapping[int, float]) -> tuple[float, str] | None:
    """The paired change of ``values`` against ``reference`` as (size on the NOTABLE scale,
    words), or None without common seeds."""
    d = paired_difference(values, reference)
    base = mean_ci([reference[s] for s in values if s in reference])
    if d.n == 0 or not math.isfinite(d.mean):
        return None
    if kind == "pct":
        if not math.isfinite(base.mean) or is_tie(base.mean, 0.0):
            return None
        pct = 100.0 * d.mean / abs(base.mean)
        return abs(pct), f"{metric.label} {pct:+.{0 if abs(pct) >= 9.5 else 1}f} %"
    if kind == "points":
        return abs(d.mean), f"{metric.label} {d.mean:+.1f} points"
    return abs(d.mean), f"{metric.label} {d.mean:+.2g}"


def explain(summaries: pd.DataFrame, best: str, reference: str, first: Metric | None = None,
            limit: int = 3) -> str:
    """One sentence: the paired changes of ``best`` against ``reference``: the verdict's own
    metric first (whatever its size), then the largest notable others (``NOTABLE``), e.g.
    "cache hits +23.0 points, TTFT p99 -40 % vs round_robin"."""
    parts: list[tuple[float, str]] = []
    own = None
    drivers = list(DRIVERS)
    if first is not None and all(m.key != first.key for m, _ in drivers):
        drivers.insert(0, (first, "abs"))  # e.g. the CV of the graded sense of load
    for metric, kind in drivers:
        got = _change(metric, kind, _by_seed(summaries, best, metric),
                      _by_seed(summaries, reference, metric))
        if got is None or is_tie(got[0], 0.0):
            continue
        if first is not None and metric.key == first.key:
            own = got  # the verdict's own metric is always cited
        elif got[0] >= NOTABLE[kind]:
            parts.append(got)
    parts.sort(key=lambda p: -p[0] / NOTABLE["pct"])
    chosen = ([own] if own else []) + parts[: limit - (1 if own else 0)]
    if not chosen:
        return f"within 5 % (2 points) of {reference} on every headline figure"
    return ", ".join(text.replace("-", "\u2212") for _, text in chosen) + f" vs {reference}"


def verdicts(summaries: pd.DataFrame, strategies: Sequence[str], baseline: str,
             metrics: Sequence[Metric]) -> list[Verdict]:
    """The best strategy per metric, tested against the runner-up by the paired difference
    over replications, with a sentence why (against ``baseline``, or against the runner-up
    when the best is the baseline)."""
    out = []
    for metric in metrics:
        per_seed = {s: _by_seed(summaries, s, metric) for s in strategies}
        values = {s: mean_ci(list(v.values())) for s, v in per_seed.items()}
        best = _best(values, metric.better)
        finite = [s for s in strategies if math.isfinite(values[s].mean)]
        if not best:
            out.append(Verdict(metric, (), Estimate(math.nan, math.nan, 0), "",
                               Estimate(math.nan, math.nan, 0), "",
                               "every strategy has the same value" if finite else "no data"))
            continue
        sign = 1.0 if metric.better == "lower" else -1.0
        rest = sorted((s for s in finite if s not in best),
                      key=lambda s: sign * values[s].mean)
        top = best[0]
        runner = rest[0] if rest else ""
        diff = (paired_difference(per_seed[top], per_seed[runner]) if runner
                else Estimate(math.nan, math.nan, 0))
        if not runner:
            test = ""
        elif not diff.has_ci:
            test = "untested"
        else:
            test = "significant" if diff.is_significant else "not significant"
        reference = baseline if top != baseline else runner
        why = explain(summaries, top, reference, metric) if reference else ""
        out.append(Verdict(metric, best, values[top], runner, diff, test, why))
    return out


def overall(found: Sequence[Verdict]) -> tuple[tuple[str, ...], int]:
    """The strategies best on the most verdict metrics (several on a tie, in order of first
    win) and on how many; ``((), 0)`` without any."""
    wins: dict[str, int] = {}
    for v in found:
        for s in v.best:
            wins[s] = wins.get(s, 0) + 1
    if not wins:
        return (), 0
    top = max(wins.values())
    return tuple(s for s, w in wins.items() if w == top), top
