"""Score a prediction against its measured run: percentile errors, per-request MAPE, overload.

Errors are percentages of the measured value: signed ``100 (pred - meas) / meas`` (positive:
simlb is slower) and its absolute value. Both sides are computed over the same requests: those
the run completed and simlb completed. Across runs the summary is the median over runs of the
absolute error, with the median signed error (the bias) beside it.

Overload ("the queue grows through the run"): take the second half of the arrival span, split
it into its third and fourth quarters, and compare the median E2E of the requests arriving in
each. Their difference over the time between the quarters' median arrivals is a robust slope
(seconds of latency per second of run; a queue fed faster than it drains grows at
``1 - mu/lambda``). The run is overloaded when that slope is above ``SLOPE_MIN`` *and* the
growth it implies over the second half exceeds ``GROWTH_FACTOR`` times the median E2E of the
first half, so that neither a tiny drift nor a late burst on a stable server counts.

A queue can also be full without growing: when the client caps the requests in flight (a
closed loop, as in the saturated residency cells) the backlog waits in the client and the
server's latency is flat but high. The rule therefore also calls a run overloaded when the
number of requests in the system (sent, not finished), sampled at each arrival of the second
half, has a median of at least ``SATURATION_FRACTION`` of ``max_num_seqs``: the engine's batch
is full and every new request waits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sim.fidelity.replay import Prediction
from sim.fidelity.run import MeasuredRun, in_system

METRICS = ("ttft", "e2e", "itl")
STATS = ("mean", "p50", "p90", "p99")
SLOPE_MIN = 0.01
GROWTH_FACTOR = 1.0
SATURATION_FRACTION = 0.9
#: fewest requests for an overload verdict
MIN_VERDICT_REQUESTS = 20


def summary_stats(x: np.ndarray) -> dict[str, float]:
    """Mean, p50, p90, p99 of the finite values (NaN if none); percentiles interpolate."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return dict.fromkeys(STATS, math.nan)
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {"mean": float(x.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def pct_error(pred: float, meas: float) -> float:
    """Signed error in % of the measured value (NaN when undefined)."""
    if not (math.isfinite(pred) and math.isfinite(meas)) or meas == 0:
        return math.nan
    return 100.0 * (pred - meas) / meas


def mape(pred: np.ndarray, meas: np.ndarray) -> float:
    """Mean absolute percentage error per request over the pairs where both are finite."""
    both = np.isfinite(pred) & np.isfinite(meas) & (meas > 0)
    if not both.any():
        return math.nan
    return float(100.0 * np.mean(np.abs(pred[both] - meas[both]) / meas[both]))


@dataclass(frozen=True)
class Verdict:
    """The overload rule's inputs and outcome (see the module docstring)."""

    overloaded: bool
    #: the queue grows (slope rule)
    growing: bool
    slope: float
    growth_s: float
    base_s: float
    #: the system holds at least SATURATION_FRACTION * max_num_seqs requests (median)
    saturated: bool = False
    in_system_p50: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)


def overload_verdict(arrival_s: np.ndarray, e2e_s: np.ndarray,
                     max_num_seqs: int | None = None) -> Verdict:
    """Is the queue growing through the run, or the engine's batch full? (False with NaN
    figures below 20 requests)."""
    keep = np.isfinite(arrival_s) & np.isfinite(e2e_s)
    t, y = np.asarray(arrival_s)[keep], np.asarray(e2e_s)[keep]
    none = Verdict(False, False, math.nan, math.nan, math.nan)
    if t.size < MIN_VERDICT_REQUESTS:
        return none
    t0, span = float(t.min()), float(t.max() - t.min())
    if span <= 0:
        return none
    u = (t - t0) / span
    first, q3, q4 = u < 0.5, (u >= 0.5) & (u < 0.75), u >= 0.75
    if not (q3.any() and q4.any() and first.any()):
        return none
    dt = float(np.median(t[q4]) - np.median(t[q3]))
    slope = float(np.median(y[q4]) - np.median(y[q3])) / dt if dt > 0 else math.nan
    base = float(np.median(y[first]))
    growth = slope * span / 2 if math.isfinite(slope) else math.nan
    growing = bool(math.isfinite(slope) and slope > SLOPE_MIN and growth > GROWTH_FACTOR * base)
    busy = float(np.median(in_system(t, y, t[~first])))
    saturated = bool(max_num_seqs and busy >= SATURATION_FRACTION * max_num_seqs)
    return Verdict(growing or saturated, growing, slope, growth, base, saturated, busy)


@dataclass
class RunScore:
    """One run's measured and predicted statistics and their errors."""

    name: str
    layout: str
    source: str
    rate_rps: float
    rows: int
    failed: int
    scored: int
    measured: dict[str, dict[str, float]]
    predicted: dict[str, dict[str, float]]
    #: signed % error per metric and statistic
    error: dict[str, dict[str, float]]
    #: per-request MAPE (%) of TTFT and E2E
    mape: dict[str, float]
    overload_measured: Verdict
    overload_predicted: Verdict
    engine: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    replay_wall_s: float = math.nan
    peer: dict[str, Any] | None = None

    @property
    def overload_disagree(self) -> bool:
        """True when measured and predicted overload verdicts differ."""
        return self.overload_measured.overloaded != self.overload_predicted.overloaded

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (NaN left as float: the writer turns it into null)."""
        out = asdict(self)
        out["overload_disagree"] = self.overload_disagree
        return out


def score_run(run: MeasuredRun, pred: Prediction) -> RunScore:
    """Compare ``pred`` with ``run`` over the requests both completed."""
    both = run.ok & pred.completed
    measured = {"ttft": run.ttft_s, "e2e": run.e2e_s, "itl": run.itl_s}
    predicted = {"ttft": pred.ttft_s, "e2e": pred.e2e_s, "itl": pred.itl_s}
    meas = {m: summary_stats(measured[m][both]) for m in METRICS}
    prd = {m: summary_stats(predicted[m][both]) for m in METRICS}
    err = {m: {s: pct_error(prd[m][s], meas[m][s]) for s in STATS} for m in METRICS}
    notes = [*run.notes, *pred.notes]
    seqs = run.engine.max_num_seqs
    missing = int((run.ok & ~pred.completed).sum())
    if missing:
        notes.append(f"{missing} measured requests not completed by simlb are left out of "
                     f"both sides")
    return RunScore(
        name=run.name, layout=run.layout, source=run.source, rate_rps=run.rate_rps,
        rows=len(run), failed=int((~run.ok).sum()), scored=int(both.sum()), measured=meas,
        predicted=prd, error=err,
        mape={m: mape(predicted[m][both], measured[m][both]) for m in ("ttft", "e2e")},
        overload_measured=overload_verdict(run.arrival_s[run.ok], run.e2e_s[run.ok], seqs),
        overload_predicted=overload_verdict(run.arrival_s[both], pred.e2e_s[both], seqs),
        engine=run.engine.to_dict(), notes=notes, replay_wall_s=pred.wall_s,
        peer=peer_ttft(run, pred))


def peer_ttft(run: MeasuredRun, pred: Prediction) -> dict[str, Any] | None:
    """A peer simulator's per-tenant TTFT p50/p99 (BLIS ``sim.json``) next to simlb's, both
    as % errors against the measured per-tenant values; None without a peer file."""
    peer = run.extra.get("peer")
    if not isinstance(peer, dict) or run.group is None:
        return None
    tenants = peer.get("tenants") or {}
    both = run.ok & pred.completed
    rows: dict[str, dict[str, float]] = {}
    for tenant, data in tenants.items():
        mask = both & (run.group == tenant.replace("_", ""))
        pct = (data or {}).get("ttft_percentiles") or {}
        if not mask.any() or not pct:
            continue
        row: dict[str, float] = {"n": float(mask.sum())}
        for q in (50, 99):
            meas = float(np.percentile(run.ttft_s[mask], q))
            ours = float(np.percentile(pred.ttft_s[mask], q))
            theirs = float(pct.get(f"p{q}_us", math.nan)) * 1e-6
            row |= {f"measured_p{q}_s": meas, f"simlb_p{q}_err": pct_error(ours, meas),
                    f"peer_p{q}_err": pct_error(theirs, meas)}
        rows[tenant] = row
    if not rows:
        return None
    summary = {key: float(np.nanmedian([np.abs(r[key]) for r in rows.values()]))
               for key in ("simlb_p50_err", "peer_p50_err", "simlb_p99_err", "peer_p99_err")}
    return {"tenants": rows, "median_abs_over_tenants": summary}


def aggregate(scores: list[RunScore]) -> dict[str, Any]:
    """Across runs: per metric and statistic the median |error| and median signed error,
    the median per-request MAPE, and the overload disagreements."""
    out: dict[str, Any] = {"runs": len(scores), "error": {}, "mape": {}}
    for m in METRICS:
        out["error"][m] = {}
        for s in STATS:
            vals = np.array([sc.error[m][s] for sc in scores], dtype=float)
            vals = vals[np.isfinite(vals)]
            out["error"][m][s] = {
                "median_abs": float(np.median(np.abs(vals))) if vals.size else math.nan,
                "median_signed": float(np.median(vals)) if vals.size else math.nan,
                "runs": int(vals.size)}
    for m in ("ttft", "e2e"):
        vals = np.array([sc.mape[m] for sc in scores], dtype=float)
        vals = vals[np.isfinite(vals)]
        out["mape"][m] = float(np.median(vals)) if vals.size else math.nan
    out["overload_disagreements"] = [sc.name for sc in scores if sc.overload_disagree]
    return out
