"""Readers for microsoft/vidur's published GPU profiling data, and the fitting helpers.

Layout under the calibration root (``shared/calibration``, described in its ``SOURCES.md``)::

    vidur/compute/<gpu>/meta-llama/<model>/mlp.csv     per-op medians, ms per layer (emb once)
    vidur/legacy_attention/a100/attention.csv          A100 attention kernels, ms per layer
    vidur/network/<cluster>/all_reduce.csv             collective times, ms by message bytes
    vidur/model_configs/meta-llama/<model>.yml         model shapes
    vidur/device_configs/<gpu>.yml                     nominal TFLOP/s and memory

Every reader collapses repeated measurements of one shape (the grids overlap at 2048, 4096,
...) to their median, and returns rows sorted by the shape columns, so derived profiles are
deterministic.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.optimize import isotonic_regression, nnls

VIDUR_COMMIT = "7d47513363ec447a741ac5e47241580b47724fbf"
LICENCE = "MIT (microsoft/vidur, LICENSE)"
#: The token-linear ops of one transformer layer in Vidur's mlp.csv (attention excluded).
LAYER_OPS = ("input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj",
             "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")
ALL_OPS = ("emb", *LAYER_OPS)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_yaml(path: Path) -> dict:
    """A Vidur model or device config (flat YAML mapping)."""
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def mlp_csv(root: Path, gpu: str, model_dir: str) -> Path:
    """Path of ``compute/<gpu>/meta-llama/<model_dir>/mlp.csv`` under the vidur root."""
    return root / "compute" / gpu / "meta-llama" / model_dir / "mlp.csv"


def op_medians(path: Path, tensor_parallel: int) -> pd.DataFrame:
    """Per-op median times (ms; per layer, ``emb`` per step) indexed by ``num_tokens``."""
    df = pd.read_csv(path)
    df = df[df["num_tensor_parallel_workers"] == tensor_parallel]
    if df.empty:
        raise ValueError(f"{path}: no rows with num_tensor_parallel_workers={tensor_parallel}")
    cols = {f"time_stats.{op}.median": op for op in ALL_OPS}
    out = df[["num_tokens", *cols]].rename(columns=cols)
    return out.groupby("num_tokens").median().sort_index()


def step_sums(ops: pd.DataFrame, num_layers: int) -> pd.Series:
    """Token-linear time of a whole step in ms: ``num_layers * sum(layer ops) + emb``."""
    return ops[list(LAYER_OPS)].sum(axis=1) * num_layers + ops["emb"]


def attention_rows(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decode and prefill attention times (ms per layer) of the legacy A100 file.

    The time of a row is the attention kernel plus its output reshape (both per layer, neither
    in mlp.csv). Returns ``decode`` with columns ``batch, kv, t_ms`` and ``prefill`` with
    ``chunk, kv, t_ms`` (one chunk of ``chunk`` tokens after ``kv`` cached tokens).
    """
    df = pd.read_csv(path)
    reshape = df["time_stats.attn_output_reshape.median"].fillna(0.0)
    df = df.assign(t_dec=df["time_stats.attn_decode.median"] + reshape,
                   t_pf=df["time_stats.attn_prefill.median"] + reshape)
    dec = df[~df["is_prefill"]].rename(columns={"batch_size": "batch", "kv_cache_size": "kv"})
    pf = df[df["is_prefill"]].rename(columns={"prefill_chunk_size": "chunk",
                                              "kv_cache_size": "kv"})
    dec = dec.groupby(["batch", "kv"])["t_dec"].median().rename("t_ms").reset_index()
    pf = pf.groupby(["chunk", "kv"])["t_pf"].median().rename("t_ms").reset_index()
    return dec, pf


def all_reduce_medians(path: Path, num_workers: int) -> pd.Series:
    """All-reduce median time (ms) by message size (bytes), all workers in one node."""
    df = pd.read_csv(path)
    df = df[(df["num_workers"] == num_workers) & (df["devices_per_node"] == num_workers)]
    if df.empty:
        raise ValueError(f"{path}: no single-node rows with num_workers={num_workers}")
    return df.groupby("size")["time_stats.all_reduce.median"].median().sort_index()


def isotonic(y: np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit (``scipy.optimize.isotonic_regression``)."""
    return np.asarray(isotonic_regression(np.asarray(y, dtype=float)).x)


def tail_slope(x: np.ndarray, y: np.ndarray, from_frac: float = 0.5) -> float:
    """Least-squares slope of ``y`` on ``x`` over ``x >= from_frac * x.max()`` (clipped >= 0).

    Above about 1k tokens the token-linear work is compute-bound, so the slope of the upper
    half of the grid is the physical cost per token (profiling.md §5.6-§5.7).
    """
    mask = x >= from_frac * x.max()
    slope = float(np.polyfit(x[mask].astype(float), y[mask], 1)[0])
    return max(slope, 0.0)


def table_eval(xq: np.ndarray, xs: np.ndarray, ys: np.ndarray, slope: float) -> np.ndarray:
    """Evaluate a table like the simulator: ``ys[0]`` below, linear inside, tail above."""
    xq = np.asarray(xq, dtype=float)
    out = np.interp(xq, xs, ys)
    above = xq > xs[-1]
    out[above] = ys[-1] + slope * (xq[above] - xs[-1])
    return out


def loo_ape(x: np.ndarray, y_raw: np.ndarray) -> np.ndarray:
    """Leave-one-out absolute percentage errors of the isotonic table at interior points.

    Each interior point is dropped, the table is re-fitted on the rest and evaluated there.
    """
    errs = []
    for i in range(1, len(x) - 1):
        keep = np.arange(len(x)) != i
        fit = isotonic(y_raw[keep])
        pred = np.interp(x[i], x[keep], fit)
        errs.append(abs(pred / y_raw[i] - 1.0) * 100.0)
    return np.asarray(errs)


def every_other_ape(x: np.ndarray, y_raw: np.ndarray) -> np.ndarray:
    """Held-out APE: fit on even-indexed points, predict the odd-indexed interior ones."""
    train = np.arange(len(x)) % 2 == 0
    fit = isotonic(y_raw[train])
    test = ~train & (x < x[train][-1])
    pred = np.interp(x[test], x[train], fit)
    return np.abs(pred / y_raw[test] - 1.0) * 100.0


@dataclass(frozen=True)
class LinearFit:
    """A non-negative least-squares fit: coefficients and quality on the fitted rows."""

    coef: tuple[float, ...]
    mape_pct: float
    max_ape_pct: float
    r2: float
    n: int


def nnls_relative(X: np.ndarray, t: np.ndarray) -> LinearFit:
    """NNLS of ``t ~ X @ coef`` with rows weighted by ``1/t`` (minimises relative error)."""
    w = 1.0 / t
    coef, _ = nnls(X * w[:, None], t * w)
    pred = X @ coef
    ape = np.abs(pred / t - 1.0) * 100.0
    r2 = 1.0 - float(((pred - t) ** 2).sum() / ((t - t.mean()) ** 2).sum())
    return LinearFit(tuple(float(c) for c in coef), float(ape.mean()), float(ape.max()),
                     r2, len(t))


def decode_features(batch: np.ndarray, kv: np.ndarray) -> np.ndarray:
    """Decode attention features ``[1, B, sum_ctx]`` with ``sum_ctx = B * kv``."""
    b = np.asarray(batch, dtype=float)
    return np.column_stack([np.ones_like(b), b, b * np.asarray(kv, dtype=float)])


def prefill_features(chunk: np.ndarray, kv: np.ndarray) -> np.ndarray:
    """Prefill attention features ``[1, c, c*kv + c*(c+1)/2]`` (one chunk; causal pairs)."""
    c = np.asarray(chunk, dtype=float)
    return np.column_stack([np.ones_like(c), c, c * np.asarray(kv, dtype=float)
                            + c * (c + 1) / 2])


def fit_attention(path: Path) -> tuple[LinearFit, LinearFit]:
    """Per-layer NNLS fits (decode, prefill) on the measured A100 attention rows."""
    dec, pf = attention_rows(path)
    dec_fit = nnls_relative(decode_features(dec["batch"], dec["kv"]), dec["t_ms"].to_numpy())
    pf_fit = nnls_relative(prefill_features(pf["chunk"], pf["kv"]), pf["t_ms"].to_numpy())
    return dec_fit, pf_fit


def sig(x: float, digits: int = 6) -> float:
    """Round to ``digits`` significant digits (monotone, so tables stay non-decreasing)."""
    return float(f"{float(x):.{digits}g}")


def _apes(pred: np.ndarray, meas: np.ndarray, prefix: str) -> dict[str, float]:
    ape = np.abs(np.asarray(pred) / np.asarray(meas) - 1.0) * 100.0
    return {f"{prefix}mape_pct": sig(ape.mean(), 4), f"{prefix}max_ape_pct": sig(ape.max(), 4)}


def lin_table(x: np.ndarray, raw: np.ndarray, max_factor: float) -> tuple[dict, dict]:
    """The ``lin`` table (isotonic fit of the summed op times, linear tail) and its quality.

    Quality: the table against the raw sums at every measured N (``table_*``), leave-one-out
    interpolation (``loo_*``), fit on every other point (``every_other_*``), and, when the grid
    goes beyond 4096 tokens, the tail fitted on N <= 4096 predicting the rest.
    """
    y = isotonic(raw)
    slope = tail_slope(x, y)
    loo, half = loo_ape(x, raw), every_other_ape(x, raw)
    quality: dict = {
        "n_points": len(x), **_apes(y, raw, "table_"),
        "loo_mape_pct": sig(loo.mean(), 4), "loo_max_ape_pct": sig(loo.max(), 4),
        "every_other_mape_pct": sig(half.mean(), 4),
        "every_other_max_ape_pct": sig(half.max(), 4),
        "monotone": "scipy.optimize.isotonic_regression (least squares, non-decreasing)",
        "tail": "least-squares slope over x >= x_max / 2",
    }
    if x.max() > 4096:
        low = x <= 4096
        y_low = isotonic(raw[low])
        pred = table_eval(x[~low], x[low], y_low, tail_slope(x[low], y_low))
        quality.update(_apes(pred, raw[~low], "tail_from_4096_"))
    table = {"x_tokens": [int(v) for v in x], "y_ms": [sig(v) for v in y],
             "extrapolation": {"kind": "linear", "slope_ms_per_token": sig(slope),
                               "max_factor": max_factor}}
    return table, quality


def comm_table(ar: pd.Series, x: np.ndarray, hidden: int, layers: int,
               max_factor: float) -> tuple[dict, dict]:
    """Tensor-parallel all-reduce time per step vs N (ms).

    Megatron-style layers all-reduce twice per layer (after attention and after the MLP) a
    message of ``N * hidden * 2`` bytes (bf16 activations): ``comm(N) = 2 * layers *
    AR(N * hidden * 2)``, with ``AR`` the isotonic fit of the per-size medians ``ar``
    interpolated linearly in bytes.
    """
    sizes, med = ar.index.to_numpy(dtype=float), ar.to_numpy()
    iso = isotonic(med)
    y = 2 * layers * np.interp(x * hidden * 2.0, sizes, iso)
    table = {"x_tokens": [int(v) for v in x], "y_ms": [sig(v) for v in y],
             "extrapolation": {"kind": "linear", "slope_ms_per_token": sig(tail_slope(x, y)),
                               "max_factor": max_factor}}
    quality = {"all_reduce_sizes": len(sizes), **_apes(iso, med, "all_reduce_isotonic_"),
               "note": "small messages are bimodal (about 7 us or 60 us per all-reduce); the "
                       "isotonic fit averages the two modes locally"}
    return table, quality
