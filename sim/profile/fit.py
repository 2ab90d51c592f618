"""Fit the step model from raw samples and assemble the profile (``docs/profiling.md``).

* ``lin(N)`` and ``head(S)``: the per-shape statistic (median on a GPU, min on the CPU), made
  non-decreasing with ``scipy.optimize.isotonic_regression``, interpolated linearly, with a
  linear tail (least-squares slope over the upper half of the grid, at least the last three
  points); ``sim.calibration.vidur`` helpers.
* Attention, on residuals of whole steps: ``r_dec = T(B, C) - lin(B) - head(B)`` by NNLS on
  ``[1, B, sum_ctx]`` with ``sum_ctx = B (C + 1)`` (keys attended, the new token included, as the
  simulator's batcher counts), and ``r_pf = T(P, K) - lin(P) - head(1)`` by NNLS on
  ``[1, P, P K + P (P + 1) / 2]``; rows weighted by ``1 / T`` (relative error, as Vidur's MAPE
  scoring). NNLS keeps coefficients >= 0 (DistServe's negative fits blow up, §4.1).
* ``mixed_factor``: ``1 + median(T_mixed / T_additive - 1)`` when that exceeds 3%, else 1.
* Quality: grid and held-out MAPE, max APE and R^2; ``lin`` leave-one-out; repeatability
  (held-out steps timed twice); the global 4- and 5-coefficient linear baselines.

Deterministic: the same samples give the same file (``profile fit`` relies on it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from scipy.optimize import nnls

from sim.calibration import vidur
from sim.calibration.vidur import sig
from sim.errors import ProfileError
from sim.model.profile import SCHEMA_ID

SAMPLES_SCHEMA = "simlb.profile-samples/v1"
COLUMNS = ("set", "P", "K", "B", "C", "S", "rep", "median_ms", "min_ms", "p10_ms", "p90_ms",
           "n", "mode")
MAX_FACTOR = 4.0
MIXED_THRESHOLD = 0.03
STEP_SETS = ("decode", "prefill", "mixed")


@dataclass
class Measurement:
    """Everything measured in a run: what ``fit`` needs to (re)build the profile."""

    name: str
    created: str
    tool: str
    hardware: dict[str, Any]
    model: dict[str, Any]
    kv_cache: dict[str, Any]
    correctness: dict[str, Any]
    metadata: dict[str, Any]
    samples: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The samples file's content."""
        return {"schema": SAMPLES_SCHEMA, **asdict(self)}


def measurement_from_json(data: Any, source: str) -> Measurement:
    """Read a samples file or a measured profile (which holds the same parts).

    Raises:
        ProfileError: neither kind, or a profile without raw samples.
    """
    if not isinstance(data, dict) or data.get("schema") not in (SAMPLES_SCHEMA, SCHEMA_ID):
        raise ProfileError(f"expected a profile ({SCHEMA_ID}) or samples file "
                           f"({SAMPLES_SCHEMA})", source=source, field="schema")
    if data["schema"] == SAMPLES_SCHEMA:
        try:
            return Measurement(**{f.name: data[f.name] for f in fields(Measurement)})
        except KeyError as exc:
            raise ProfileError("missing required field", source=source,
                               field=str(exc.args[0])) from None
    if not isinstance(data.get("samples"), dict) or "rows" not in data["samples"]:
        raise ProfileError("this profile holds no raw samples to refit (only profiles written "
                           "by simlb profile do)", source=source, field="samples")
    hw = {k: v for k, v in data["hardware"].items() if k != "effective_attention_flops_per_gpu"}
    return Measurement(data["name"], data["source"]["created"], data["source"]["tool"], hw,
                       data["model"], data["kv_cache"],
                       data.get("checks", {}).get("correctness", {}),
                       data.get("metadata", {}), data["samples"])


def samples_block(results: list[tuple[Any, Any]], statistic: str) -> dict[str, Any]:
    """Columnar raw samples (5 significant digits) from ``bench.measure`` results."""
    rows = [[s.set, s.P, s.K, s.B, s.C, s.S, s.rep, sig(t.median_ms, 5), sig(t.min_ms, 5),
             sig(t.p10_ms, 5), sig(t.p90_ms, 5), t.n, t.mode] for s, t in results]
    return {"columns": list(COLUMNS), "rows": rows, "statistic": statistic, "units": "ms"}


def columns(samples: dict[str, Any], set_names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Rows of the given sets as numpy columns; ``t`` is the statistic's column."""
    cols = samples["columns"]
    rows = [r for r in samples["rows"] if r[cols.index("set")] in set_names]
    out = {c: np.asarray([r[i] for r in rows]) for i, c in enumerate(cols)}
    stat = samples.get("statistic", "median")
    out["t"] = np.asarray(out.get(f"{stat}_ms", np.zeros(0)), dtype=float)
    for key in ("P", "K", "B", "C", "S", "rep"):
        out[key] = np.asarray(out.get(key, np.zeros(0)), dtype=np.int64)
    return out


def metrics(pred: np.ndarray, meas: np.ndarray) -> dict[str, Any]:
    """n, MAPE, max APE (%) and R^2 of predictions against measurements."""
    if len(meas) == 0:
        return {"n": 0}
    ape = np.abs(pred / meas - 1.0) * 100.0
    ss = float(((meas - meas.mean()) ** 2).sum())
    r2 = 1.0 - float(((pred - meas) ** 2).sum()) / ss if ss > 0 else 1.0
    return {"n": len(meas), "mape_pct": sig(ape.mean(), 4), "max_ape_pct": sig(ape.max(), 4),
            "r2": sig(r2, 4)}


def fit_table(x: np.ndarray, raw: np.ndarray, x_key: str,
              slope_key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A monotone table with a linear tail from (x, time) samples, and its quality.

    Repeated x collapse to their median. The tail slope is the least-squares slope over
    ``x >= x_max / 2`` or the last three points, whichever holds more (``vidur.tail_slope``).
    """
    xs = np.unique(x)
    if len(xs) == 0:
        raise ProfileError(f"no samples for the {x_key} table", field="samples")
    ys = np.asarray([np.median(raw[x == v]) for v in xs], dtype=float)
    y = vidur.isotonic(ys)
    frac = 0.5 if len(xs) < 3 else min(0.5, xs[-3] / xs[-1])
    slope = vidur.tail_slope(xs, y, frac) if len(xs) >= 2 else 0.0
    table = {x_key: [int(v) for v in xs], "y_ms": [sig(v) for v in y],
             "extrapolation": {"kind": "linear", slope_key: sig(slope), "max_factor": MAX_FACTOR}}
    quality: dict[str, Any] = {"n_points": len(xs), **metrics(y, ys)}
    if len(xs) >= 3:
        loo = vidur.loo_ape(xs, ys)
        quality.update(loo_mape_pct=sig(loo.mean(), 4), loo_max_ape_pct=sig(loo.max(), 4))
    return table, quality


def _table(t: dict[str, Any], q: np.ndarray) -> np.ndarray:
    xs = next(k for k in t if k.startswith("x_"))
    slope = next(v for k, v in t["extrapolation"].items() if k.startswith("slope"))
    return vidur.table_eval(q, np.asarray(t[xs], dtype=float), np.asarray(t["y_ms"]), slope)


def predict_ms(sm: dict[str, Any], p: np.ndarray, k: np.ndarray, b: np.ndarray,
               c: np.ndarray) -> np.ndarray:
    """Step times (ms) as ``ProfileCostModel.step_s`` computes them (profiling.md §5.9), for
    one chunk of ``p`` after ``k`` and ``b`` decodes of context ``c`` (element-wise)."""
    p, k, b, c = (np.asarray(v, dtype=float) for v in (p, k, b, c))
    has_p, has_b = p > 0, b > 0
    t = _table(sm["lin"], p + b) + _table(sm["head"], has_p + b)
    if sm.get("comm"):
        t = t + _table(sm["comm"], p + b)
    p0, p1, p2 = sm["attn_prefill"]["coef"]
    c0, c1, c2 = sm["attn_decode"]["coef"]
    t = t + has_p * (p0 + p1 * p + p2 * (p * k + p * (p + 1) / 2))
    t = t + has_b * (c0 + c1 * b + c2 * b * (c + 1))
    t = np.where(has_p & has_b, t * sm["mixed_factor"], t)
    return t + sm["cpu_overhead_ms"]


def nnls_weighted(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Non-negative least squares of ``y ~ x @ coef`` with row weights ``w``."""
    coef, _ = nnls(x * w[:, None], y * w)
    return coef


def _attention(sm: dict[str, Any], s: dict[str, np.ndarray], decode: bool
               ) -> tuple[list[float], dict[str, Any]]:
    """NNLS fit of one attention term on whole-step residuals (see module doc)."""
    if decode:
        x = vidur.decode_features(s["B"], s["C"] + 1)
        base = _table(sm["lin"], s["B"]) + _table(sm["head"], s["B"])
        valid = {"max_batch": int(s["B"].max()), "max_ctx": int(s["C"].max()),
                 "max_sum_ctx": int((s["B"] * (s["C"] + 1)).max())}
    else:
        x = vidur.prefill_features(s["P"], s["K"])
        base = _table(sm["lin"], s["P"]) + _table(sm["head"], np.ones(len(s["P"])))
        valid = {"max_chunk": int(s["P"].max()), "max_prefix": int(s["K"].max())}
    r = s["t"] - base
    coef = nnls_weighted(x, r, 1.0 / s["t"])
    q = metrics(x @ coef + base, s["t"])
    q["residual_r2"] = metrics(x @ coef, r).get("r2")
    return [sig(v) for v in coef], {**q, "valid": valid}


def _baselines(grid: dict[str, np.ndarray], held: dict[str, np.ndarray],
               held_t: np.ndarray) -> dict[str, Any]:
    """Global ``a + b P + c B + d sum_ctx`` (+ ``e pairs``) by relative NNLS on grid steps."""
    def feats(s: dict[str, np.ndarray], pairs: bool) -> np.ndarray:
        p, k, b, c = (s[key].astype(float) for key in ("P", "K", "B", "C"))
        cols = [np.ones_like(p), p, b, b * (c + 1)] + ([p * k + p * (p + 1) / 2] if pairs else [])
        return np.column_stack(cols)

    out = {}
    for name, pairs in (("global_linear4", False), ("global_linear5", True)):
        fit = vidur.nnls_relative(feats(grid, pairs), grid["t"])
        entry: dict[str, Any] = {"coef": [sig(v) for v in fit.coef],
                                 "grid_mape_pct": sig(fit.mape_pct, 4)}
        if len(held_t):
            pred = feats(held, pairs) @ np.asarray(fit.coef)
            m = metrics(pred, held_t)
            entry.update(heldout_mape_pct=m["mape_pct"], heldout_max_ape_pct=m["max_ape_pct"])
        out[name] = entry
    return out


def heldout_steps(
        samples: dict[str, Any]) -> tuple[dict[str, np.ndarray], np.ndarray, float | None]:
    """Held-out steps: one row per shape (rep 0), the mean of its two timings, and the
    repeatability (mean of |t0 - t1| / their mean, %)."""
    h = columns(samples, ("heldout",))
    first = h["rep"] == 0
    one = {c: v[first] for c, v in h.items()}
    if not first.any():
        return one, one["t"], None
    second = {key[:4]: key[4] for key in zip(h["P"], h["K"], h["B"], h["C"], h["t"], h["rep"],
                                               strict=True) if key[5] == 1}
    t0 = one["t"]
    t1 = np.asarray([second.get(key[:4], key[4]) for key in zip(
        one["P"], one["K"], one["B"], one["C"], t0, strict=True)], dtype=float)
    mean = (t0 + t1) / 2
    return one, mean, sig(float(np.mean(np.abs(t0 - t1) / mean)) * 100.0, 4)


def fit_step_model(samples: dict[str, Any], gpu: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``step_model`` and ``fit_quality`` from raw samples (module doc)."""
    lin_s, head_s = columns(samples, ("lin",)), columns(samples, ("head",))
    lin, lin_q = fit_table(lin_s["P"], lin_s["t"], "x_tokens", "slope_ms_per_token")
    head, head_q = fit_table(head_s["S"], head_s["t"], "x_seqs", "slope_ms_per_seq")
    sm: dict[str, Any] = {"units": "ms", "lin": lin, "comm": None, "head": head,
                          "mixed_factor": 1.0, "cpu_overhead_ms": 0.0,
                          "attn_decode": {"features": ["const", "batch", "sum_ctx"],
                                          "coef": [0.0, 0.0, 0.0]},
                          "attn_prefill": {"features": ["per_chunk", "chunk_tokens",
                                                        "attn_pairs"], "coef": [0.0, 0.0, 0.0]}}
    q: dict[str, Any] = {"statistic": samples.get("statistic", "median"), "lin": lin_q,
                         "head": head_q}
    for key, decode in (("attn_decode", True), ("attn_prefill", False)):
        s = columns(samples, ("decode",) if decode else ("prefill",))
        if len(s["t"]):
            sm[key]["coef"], q[key] = _attention(sm, s, decode)
    mixed = columns(samples, ("mixed",))
    if len(mixed["t"]):
        rel = float(np.median(mixed["t"] / predict_ms(sm, mixed["P"], mixed["K"], mixed["B"],
                                                      mixed["C"]) - 1.0))
        q["mixed_median_rel_residual"] = sig(rel, 4)
        if abs(rel) > MIXED_THRESHOLD:
            sm["mixed_factor"] = sig(1.0 + rel, 4)
    _quality(sm, samples, q, gpu)
    return sm, q


def _quality(sm: dict[str, Any], samples: dict[str, Any], q: dict[str, Any], gpu: bool) -> None:
    """Grid, held-out, repeatability, baselines and warnings into ``q``."""
    grid = columns(samples, STEP_SETS)
    pred = predict_ms(sm, grid["P"], grid["K"], grid["B"], grid["C"])
    q["grid"] = metrics(pred, grid["t"])
    q["grid_by_set"] = {name: metrics(pred[grid["set"] == name], grid["t"][grid["set"] == name])
                        for name in STEP_SETS}
    held, held_t, repeat = heldout_steps(samples)
    q["heldout"] = metrics(predict_ms(sm, held["P"], held["K"], held["B"], held["C"]), held_t)
    q["repeatability_pct"] = repeat
    q["lin_loo_mape_pct"] = q["lin"].get("loo_mape_pct")
    if len(grid["t"]) >= 5:
        q["baselines"] = _baselines(grid, held, held_t)
    all_rows = columns(samples, ("lin", "head", *STEP_SETS, "heldout"))
    spread = all_rows["p90_ms"].astype(float) / np.maximum(all_rows["p10_ms"].astype(float),
                                                           1e-12)
    q["noisy_shapes_p90_over_p10_gt_1.1"] = int((spread > 1.1).sum())
    q["eager_shapes"] = int((all_rows["mode"] == "eager").sum()) if gpu else None
    warn = []
    limit_mape, limit_rep = (5.0, 2.0) if gpu else (15.0, 15.0)
    if q["heldout"].get("mape_pct", 0.0) > limit_mape:
        warn.append(f"held-out MAPE {q['heldout']['mape_pct']}% > {limit_mape}%")
    if repeat is not None and repeat > limit_rep:
        warn.append(f"repeatability {repeat}% > {limit_rep}% (noisy machine)")
    q["warnings"] = warn


def key_figures(sm: dict[str, Any], kv_capacity_tokens: int) -> dict[str, Any]:
    """Headline numbers (ms unless named otherwise), as ``sim.calibration.derive`` reports."""
    def lin(n: int) -> float:
        return float(_table(sm["lin"], np.asarray([n]))[0])

    def step(p: int, k: int, b: int, c: int) -> float:
        return float(predict_ms(sm, np.asarray([p]), np.asarray([k]), np.asarray([b]),
                                np.asarray([c]))[0])

    figs: dict[str, Any] = {f"lin_ms@{n}": sig(lin(n), 5) for n in (1, 64, 128, 256, 512,
                                                                    1024, 2048, 4096)}
    figs.update({
        "head_ms@1": sig(float(_table(sm["head"], np.asarray([1]))[0]), 5),
        "lin_slope_us_per_token": sig(sm["lin"]["extrapolation"]["slope_ms_per_token"] * 1e3, 5),
        "decode_ctx_slope_ns_per_token": sig(sm["attn_decode"]["coef"][2] * 1e6, 5),
        "decode_ms@B1_ctx1024": sig(step(0, 0, 1, 1023), 5),
        "decode_ms@B64_ctx1024": sig(step(0, 0, 64, 1023), 5),
        "prefill_ms@2048": sig(step(2048, 0, 0, 0), 5),
        "kv_capacity_tokens": kv_capacity_tokens})
    return figs


def method_text(m: Measurement, sm: dict[str, Any]) -> str:
    """The ``source.method`` prose of a measured profile."""
    timing = m.metadata.get("timing", {})
    gpu = m.metadata.get("device", {}).get("kind") == "cuda"
    return (
        f"Measured by simlb profile on {m.hardware['gpu']} ({'GPU' if gpu else 'CPU fallback'})"
        f": the {m.model['name']} shape with random normal(0, 0.02) weights in "
        f"{m.model['dtype']}, PyTorch SDPA attention (enable_gqa), whole forward steps timed "
        f"with {timing.get('method', '?')} ({timing.get('statistic', '?')} of "
        f"{timing.get('min_iters', '?')}-{timing.get('max_iters', '?')} repeats, "
        f"{timing.get('warmup', '?')} warm-up, shapes in one shuffled order). lin(N): "
        "embedding + all layers without attention, isotonic table with a linear tail; "
        "head(S): final norm + LM head + fp32 argmax; attention: NNLS (rows weighted 1/T) on "
        "whole-step residuals T - lin - head, decode on [1, B, B(C+1)], prefill on "
        "[1, P, PK + P(P+1)/2]; mixed_factor from mixed steps "
        f"({sm['mixed_factor']}); cpu_overhead_ms 0 (GPU time only, profiling.md §4.4). "
        f"Correctness checked against float64 first. KV: {m.kv_cache['method']}.")


def build_profile(m: Measurement) -> dict[str, Any]:
    """Fit the samples and assemble a ``simlb.profile/v1`` dict (deterministic)."""
    gpu = m.metadata.get("device", {}).get("kind") == "cuda"
    sm, quality = fit_step_model(m.samples, gpu)
    hw = dict(m.hardware)
    p2_ms = sm["attn_prefill"]["coef"][2]
    mdl = m.model
    hw["effective_attention_flops_per_gpu"] = (sig(4 * mdl["num_layers"] * mdl["num_heads"]
                                                   * mdl["head_dim"] / (p2_ms * 1e-3), 4)
                                               if p2_ms > 0 else None)
    return {
        "schema": SCHEMA_ID, "name": m.name,
        "source": {"kind": "measured", "method": method_text(m, sm), "data": [],
                   "created": m.created, "tool": m.tool},
        "hardware": hw, "model": mdl, "kv_cache": m.kv_cache, "step_model": sm,
        "fit_quality": quality,
        "checks": {"correctness": m.correctness,
                   "key_figures": key_figures(sm, m.kv_cache["capacity_tokens"])},
        "samples": m.samples, "metadata": m.metadata,
    }
