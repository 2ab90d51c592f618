"""Fit a profile's engine terms to measured runs (the library behind ``simlb calibrate``).

What is fitted is physics that carries over to other workloads on the same engine and host,
not constants per run (``docs/fidelity.md`` §Calibration):

* **Engine host time** (``cpu_overhead_ms`` per step, ``cpu_per_seq_ms`` per scheduled
  sequence) and one bounded multiplicative correction of the profile's GPU terms
  (``gpu_time_scale`` in [0.8, 1.25]: kernel versions, clocks). These change the engine's
  dynamics, so each trial value is scored by replaying the training runs teacher-forced
  (``sim.fidelity.replay``); a bounded Nelder-Mead search minimises the squared log errors of
  the runs' mean and p99 E2E, mean and p99 TTFT and mean ITL. Saturated runs count too (a
  full batch is where the host time per sequence shows most); a client-capped one is replayed
  closed loop (``sim.fidelity.replay.client_cap``), which keeps it well conditioned.
* **API latency** (``api_latency_ms`` + ``api_latency_us_per_prompt_token`` x prompt +
  ``api_latency_us_per_active_request`` x requests in the node at arrival): time outside the
  engine core, which shifts what the client sees without changing the engine's timeline. For
  each trial of the engine terms it is solved exactly: non-negative least squares of the
  per-request TTFT residual (measured minus the engine's prediction) on those three features,
  over the training runs whose measured queue is stable (a saturated run's residual is
  mostly queueing, not API time), each run weighted equally.

Runs are split by run, never by request: a run and any other run replaying the same requests
(the same workload measured on two GPUs at once) fall on the same side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import Any

import numpy as np
from scipy.optimize import minimize, nnls

from sim.fidelity.replay import Prediction, replay
from sim.fidelity.run import MeasuredRun
from sim.fidelity.score import overload_verdict, summary_stats
from sim.model.profile import API_LATENCY_KEYS
from sim.runner import active_at_arrival

#: engine terms searched by replay, with their bounds
ENGINE_TERMS: dict[str, tuple[float, float]] = {
    "cpu_overhead_ms": (0.0, 20.0),
    "cpu_per_seq_ms": (0.0, 0.5),
    "gpu_time_scale": (0.8, 1.25),
}
#: (metric, statistic, weight) of the loss
LOSS_TERMS = (("e2e", "mean", 1.0), ("e2e", "p99", 0.5), ("ttft", "mean", 1.0),
              ("ttft", "p99", 0.25), ("itl", "mean", 0.5))
#: a log error is capped here so that one diverging run cannot dominate the search
LOG_ERROR_CAP = 2.0


@dataclass
class Calibration:
    """The fitted terms, the split and the training loss."""

    values: dict[str, float]
    train: list[str]
    test: list[str]
    loss: float
    evaluations: int
    history: list[tuple[dict[str, float], float]] = field(default_factory=list)

    def overrides(self) -> list[str]:
        """The fitted values as replay overrides."""
        return [f"cost_model.params.{k}={v:.6g}" for k, v in self.values.items()]


def split_runs(runs: Sequence[MeasuredRun], test_patterns: Sequence[str] = ()
               ) -> tuple[list[MeasuredRun], list[MeasuredRun]]:
    """``(train, test)``: runs whose name matches a pattern are held out; without patterns,
    every other workload in order of offered rate. Runs of one workload stay together."""
    groups: dict[tuple, list[MeasuredRun]] = {}
    for run in runs:
        groups.setdefault(_workload_key(run), []).append(run)
    ordered = sorted(groups.values(), key=lambda g: (g[0].rate_rps, g[0].name))
    if test_patterns:
        held = [any(fnmatch(r.name, p) for r in g for p in test_patterns) for g in ordered]
    else:
        held = [i % 2 == 1 for i in range(len(ordered))]
    train = [r for g, h in zip(ordered, held, strict=True) if not h for r in g]
    test = [r for g, h in zip(ordered, held, strict=True) if h for r in g]
    return train, test


def _workload_key(run: MeasuredRun) -> tuple:
    """Identical request streams (lengths and send-time pattern) give the same key."""
    ok = run.ok
    return (int(ok.sum()), int(run.prompt_tokens[ok].sum()), int(run.output_tokens[ok].sum()),
            round(float(run.arrival_s[ok][-1]) if ok.any() else 0.0, 0))


def fit(train: Sequence[MeasuredRun], profile: str, base_overrides: Sequence[str] = (), *,
        terms: Sequence[str] = tuple(ENGINE_TERMS), start: dict[str, float] | None = None,
        max_evaluations: int = 60) -> Calibration:
    """Fit ``terms`` (a subset of ``ENGINE_TERMS``) and the API latency on ``train``."""
    unknown = [t for t in terms if t not in ENGINE_TERMS]
    if unknown:
        raise ValueError(f"cannot fit {unknown[0]!r}; fittable: {', '.join(ENGINE_TERMS)}")
    start = {"cpu_overhead_ms": 0.0, "cpu_per_seq_ms": 0.0, "gpu_time_scale": 1.0,
             **(start or {})}
    bounds = [ENGINE_TERMS[t] for t in terms]
    history: list[tuple[dict[str, float], float]] = []

    def objective(x: np.ndarray) -> float:
        values = {t: float(np.clip(v, *b)) for t, v, b in zip(terms, x, bounds, strict=True)}
        loss, _ = _loss(train, profile, base_overrides, values)
        history.append((values, loss))
        return loss

    x0 = np.array([start[t] for t in terms], dtype=float)
    # first simplex steps of a sensible size for each term (not 5 % of a zero start)
    steps = np.array([{"cpu_overhead_ms": 1.0, "cpu_per_seq_ms": 0.02,
                       "gpu_time_scale": 0.05}[t] for t in terms])
    simplex = np.vstack([x0] + [x0 + np.eye(len(terms))[i] * steps[i]
                                for i in range(len(terms))])
    result = minimize(objective, x0, method="Nelder-Mead", bounds=bounds,
                      options={"maxfev": max_evaluations, "initial_simplex": simplex,
                               "xatol": 1e-3, "fatol": 1e-5})
    best_values, best_loss = min(history, key=lambda h: h[1])
    del result
    _, api = _loss(train, profile, base_overrides, best_values)
    return Calibration(values={**best_values, **api}, train=[r.name for r in train], test=[],
                       loss=best_loss, evaluations=len(history), history=history)


def _loss(runs: Sequence[MeasuredRun], profile: str, base_overrides: Sequence[str],
          values: dict[str, float]) -> tuple[float, dict[str, float]]:
    """Training loss of engine ``values`` with the API latency solved exactly, and that
    API latency."""
    overrides = [*base_overrides, *(f"cost_model.params.{k}={v:.9g}" for k, v in values.items()),
                 *(f"cost_model.params.{k}=0" for k in API_LATENCY_KEYS)]
    preds = [replay(run, profile, overrides) for run in runs]
    api = solve_api_latency(runs, preds)
    loss = 0.0
    for run, pred in zip(runs, preds, strict=True):
        shift = api_shift(run, pred, api)
        both = run.ok & pred.completed
        predicted = {"ttft": pred.ttft_s + shift, "e2e": pred.e2e_s + shift, "itl": pred.itl_s}
        measured = {"ttft": run.ttft_s, "e2e": run.e2e_s, "itl": run.itl_s}
        for metric, stat, weight in LOSS_TERMS:
            p = summary_stats(predicted[metric][both])[stat]
            m = summary_stats(measured[metric][both])[stat]
            if not (math.isfinite(p) and math.isfinite(m)) or p <= 0 or m <= 0:
                continue
            loss += weight * min(abs(math.log(p / m)), LOG_ERROR_CAP) ** 2
        missing = int((run.ok & ~pred.completed).sum())
        loss += LOG_ERROR_CAP ** 2 * missing / max(run.n_ok, 1)
    return loss / max(len(runs), 1), api


def _features(run: MeasuredRun, pred: Prediction) -> np.ndarray:
    """Per request: 1 (ms), prompt tokens (us each), requests active at arrival (us each),
    all in seconds per unit of the fitted coefficient."""
    end = run.arrival_s + np.where(np.isfinite(pred.e2e_s), pred.e2e_s, np.inf)
    active = active_at_arrival(run.arrival_s, end).astype(float)
    return np.column_stack([np.full(len(run), 1e-3), run.prompt_tokens * 1e-6, active * 1e-6])


def api_shift(run: MeasuredRun, pred: Prediction, api: dict[str, float]) -> np.ndarray:
    """The API latency (s) each request of ``run`` gets with coefficients ``api``."""
    coef = np.array([api[k] for k in API_LATENCY_KEYS])
    return _features(run, pred) @ coef


def measured_saturated(run: MeasuredRun) -> bool:
    """Whether the measured queue grew or the batch was full through the run
    (``sim.fidelity.score.overload_verdict``): such a run's latencies measure the backlog
    (and, with a capped client, the cap), not the engine, so it is scored but not fitted."""
    ok = run.ok
    return overload_verdict(run.arrival_s[ok], run.e2e_s[ok], run.engine.max_num_seqs).overloaded


def solve_api_latency(runs: Sequence[MeasuredRun], preds: Sequence[Prediction]
                      ) -> dict[str, float]:
    """Non-negative least squares of the TTFT residuals on the API features (see module
    docstring); zeros when no stable run has completed requests."""
    rows, targets = [], []
    for run, pred in zip(runs, preds, strict=True):
        both = run.ok & pred.completed
        if not both.any() or measured_saturated(run):
            continue
        weight = 1.0 / math.sqrt(int(both.sum()))
        rows.append(_features(run, pred)[both] * weight)
        targets.append((run.ttft_s - pred.ttft_s)[both] * weight)
    if not rows:
        return dict.fromkeys(API_LATENCY_KEYS, 0.0)
    coef, _ = nnls(np.vstack(rows), np.concatenate(targets))
    return {k: float(v) for k, v in zip(API_LATENCY_KEYS, coef, strict=True)}


def calibrated_profile(data: dict[str, Any], cal: Calibration, held_out: dict[str, Any],
                       trained: dict[str, Any], before: dict[str, Any], command: str
                       ) -> dict[str, Any]:
    """The profile document ``data`` with the fitted terms and their provenance."""
    out = dict(data)
    step = dict(out["step_model"])
    step.update({k: float(f"{v:.6g}") for k, v in cal.values.items()})
    out["step_model"] = step
    source = dict(out["source"])
    source["method"] = (
        f"{source['method']} Calibrated with simlb calibrate on {len(cal.train)} measured "
        f"runs (engine host time, a bounded GPU-time scale and the API latency; "
        f"docs/fidelity.md); held-out runs: {len(cal.test)}.")
    out["source"] = source
    fit_quality = dict(out.get("fit_quality") or {})
    fit_quality["calibration"] = {
        "command": command, "values": step_subset(step), "train_runs": cal.train,
        "test_runs": cal.test, "train_loss": round(cal.loss, 6),
        "evaluations": cal.evaluations, "median_abs_error_pct": {
            "before_test": before, "train": trained, "test": held_out}}
    out["fit_quality"] = fit_quality
    return out


def step_subset(step: dict[str, Any]) -> dict[str, float]:
    """The calibrated fields of a step model."""
    return {k: step[k] for k in (*ENGINE_TERMS, *API_LATENCY_KEYS) if k in step}
