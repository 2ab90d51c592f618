"""The step-model terms of a derived profile, from aiconfigurator-core's measured op tables.

Per term (every figure per GPU, milliseconds):

* ``lin(N)``, N tokens in the step (tabulated up to the largest measured GEMM m, 16384 at most,
  at every measured m, where the tile staircase jumps, e.g. from m = 1024 to 1025, and on a
  geometric grid in between): per layer the four GEMMs of the TP-split layer (QKV
  [h -> (Hq+2Hkv)D/tp], O [HqD/tp -> h], gate+up [h -> 2I/tp], down [I/tp -> h]) looked up in
  ``gemm_perf.parquet`` (bf16 ``torch.nn.functional.linear``); for MoE layers the router GEMM
  [h -> E] plus the fused-MoE block of ``moe_perf.parquet`` (bf16 Triton experts, balanced
  routing, moe_tp = tp), whose measured latency at N tokens already reflects how many distinct
  experts N tokens activate. Plus memory-bound element-wise kernels by the roofline
  ``t = c + bytes / (bw * s)`` with bw, s (``mem_bw_empirical_scaling_factor``) and c
  (``mem_empirical_constant_latency``, per kernel) from the system YAML: two fused
  residual-add+RMSNorm (4 N h bf16 reads/writes each), RoPE on q and k, the Qwen3 per-head
  q/k RMSNorm, SiLU-and-mul (dense; inside the fused-MoE kernel for MoE), the top-k softmax
  (MoE) and the KV-cache write (reshape_and_cache, not in the attention tables). Times the layers,
  plus the embedding gather and the final RMSNorm on all N rows (vLLM normalises every row before
  selecting the logits rows).
* ``comm(N)``: two all-reduces per layer, plus one after the vocab-parallel embedding, of
  ``N * h`` bf16 values (``N * h * 2`` bytes), vLLM's custom all-reduce up to 8 MiB
  (``custom_allreduce_perf.parquet``, whose ``message_size`` counts elements): backend
  ``vllm_graph`` for N <= 512 (vLLM's largest default CUDA-graph capture size, so decode-size
  steps replay graphs), ``vllm_eager`` above; NCCL (``comm/nccl/<YAML nccl_version>``) for
  larger tensors, as vLLM falls back to it (its symmetric-memory all-reduce is not modelled).
* ``head(S)``: the LM-head GEMM [h -> V/tp] at m = S (n beyond the measured 65536 scaled
  proportionally: column blocks of a GEMM are independent), for TP > 1 the logits all-gather
  (approximated by the all-reduce of the S*V gathered values: an upper bound), and a sampling
  allowance (assumption): 10 small kernels and six fp32 passes over the S x V logits
  (cast, temperature, softmax, top-k/top-p, sample), roofline as above.
* attention: NNLS fits (rows weighted 1/t, i.e. relative error) of the measured per-layer
  FlashAttention latencies (bf16 KV, no sliding window) of the model's per-GPU layout
  (Hq/tp, Hkv/tp, D), times the layers. Prefill (``context_attention_perf``: ``batch_size``
  prompts of ``isl`` tokens, no cached prefix) on [chunks, tokens, causal pairs]; decode
  (``generation_attention_perf``: ``batch_size`` sequences, one query each, ``step`` cached
  tokens, so a context of step + 1) on [1, B, sum of contexts]. The prefill fit uses the rows of
  chunked-prefill-like steps (>= 128 tokens, <= 64 prompts): outside them a per-launch constant
  (~12 us) that the per-chunk term cannot express dominates; the error on all rows is reported.
  A layout not measured is taken from the nearest measured one and scaled: decode's context
  term by KV bytes, prefill's token and pair terms by query FLOPs (Hq D); constants kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import nnls

from sim.calibration.aic.model import ModelSpec
from sim.calibration.aic.tables import Tables
from sim.calibration.vidur import sig

LIN_GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256,
            320, 384, 448, 512, 640, 768, 896, 1024, 1280, 1536, 1792, 2048, 2560, 3072, 3584,
            4096, 5120, 6144, 7168, 8192, 10240, 12288, 14336, 16384)
HEAD_GRID = (1, 2, 4, 8, 16, 32, 64, 96, 128, 160, 192, 256, 320, 384, 512, 640, 768, 1024)
CUDA_GRAPH_MAX_TOKENS = 512
MAX_FACTOR = 4.0
SAMPLING_KERNELS, SAMPLING_FP32_PASSES = 10, 6
PREFILL_MIN_TOKENS, PREFILL_MAX_CHUNKS = 128, 64


@dataclass(frozen=True)
class Roofline:
    """Memory-bound kernel time ``const + bytes / bw`` (s), from the system YAML."""

    bw: float
    const: float

    @classmethod
    def from_yaml(cls, gpu: dict[str, Any]) -> Roofline:
        return cls(float(gpu["mem_bw"]) * float(gpu.get("mem_bw_empirical_scaling_factor", 1.0)),
                   float(gpu.get("mem_empirical_constant_latency", 0.0)))

    def ms(self, nbytes: np.ndarray, kernels: int = 1) -> np.ndarray:
        return (kernels * self.const + np.asarray(nbytes, float) / self.bw) * 1e3


def _table(x: tuple[int, ...], y: np.ndarray, slope_key: str, x_key: str) -> dict[str, Any]:
    y = np.maximum.accumulate(np.asarray(y, float))
    n = len(x) // 2
    slope = max(0.0, float(np.polyfit(np.asarray(x[n:], float), y[n:], 1)[0]))
    return {x_key: list(x), "y_ms": [sig(v) for v in y],
            "extrapolation": {"kind": "linear", slope_key: sig(slope), "max_factor": MAX_FACTOR}}


def lin_parts(t: Tables, m: ModelSpec, tp: int, roof: Roofline,
              n: np.ndarray) -> dict[str, np.ndarray]:
    """Per-step ms of each lin component at token counts ``n`` (already times the layers)."""
    h, d, L = m.hidden, m.head_dim, m.layers
    q, kv, inter = m.q_heads * d // tp, m.kv_heads * d // tp, m.inter // tp
    parts = {
        "qkv_gemm": t.gemm_ms(n, q + 2 * kv, h, "qkv"),
        "o_gemm": t.gemm_ms(n, h, q, "o_proj"),
    }
    ew_bytes = 2 * 4 * n * h * 2 + 2 * n * (q + kv) * 2 + 4 * n * kv * 2  # norms, RoPE, KV write
    kernels = 4
    if m.qk_norm:
        ew_bytes = ew_bytes + 2 * n * (q + kv) * 2
        kernels += 1
    if m.experts:
        parts["router_gemm"] = t.gemm_ms(n, m.experts, h, "router")
        moe, _note = t.moe_ms(n, h, m.inter, m.topk, m.experts, tp)
        parts["moe_block"] = moe
        ew_bytes = ew_bytes + n * m.experts * 4 * 2  # top-k softmax over fp32 router logits
        kernels += 1
    else:
        parts["gate_up_gemm"] = t.gemm_ms(n, 2 * inter, h, "gate_up")
        parts["down_gemm"] = t.gemm_ms(n, h, inter, "down")
        ew_bytes = ew_bytes + 3 * n * inter * 2
        kernels += 1
    parts = {k: v * L for k, v in parts.items()}
    parts["elementwise"] = roof.ms(ew_bytes, kernels) * L
    parts["embed_final_norm"] = roof.ms(2 * n * h * 2 + 2 * n * h * 2, 2)
    return parts


def lin_table(t: Tables, m: ModelSpec, tp: int, roof: Roofline) -> tuple[dict, dict]:
    """The ``lin`` table and its breakdown at a few N (for ``fit_quality``)."""
    # the grid ends at the largest measured GEMM m (16384 at most); the measured m keep the
    # GEMM staircase; beyond the grid the simulator's linear tail applies (and counts the step)
    measured = {int(v) for v in t.gemm_frame().m.unique()}
    cap = min(LIN_GRID[-1], max(measured))
    grid = tuple(sorted(v for v in measured | set(LIN_GRID) if v <= cap))
    x = np.asarray(grid, float)
    parts = lin_parts(t, m, tp, roof, x)
    table = _table(grid, sum(parts.values()), "slope_ms_per_token", "x_tokens")
    at = {v: i for i, v in enumerate(grid)}
    # the piecewise-linear table against the direct lookup sum at ~400 N between grid points
    dense = np.unique(np.geomspace(1, grid[-1], 400).round())
    direct = sum(lin_parts(t, m, tp, roof, dense).values())
    ape = np.abs(np.interp(dense, x, table["y_ms"]) / direct - 1.0) * 100.0
    quality = {
        "breakdown_ms": {f"N={k}": {p: sig(float(v[at[k]]), 4) for p, v in parts.items()}
                         for k in (1, 256, 8192)},
        "table_vs_lookup_mape_pct": sig(ape.mean(), 4),
        "table_vs_lookup_max_ape_pct": sig(ape.max(), 4),
        "gemm_rows_vs_monotone_curve_mape_pct": {k: sig(v, 3)
                                                 for k, v in sorted(t.gemm_noise.items())},
        "monotone": "per-GEMM isotonic regression in m; the sum made non-decreasing "
                    "(cumulative max)",
    }
    return table, quality


def comm_table(t: Tables, m: ModelSpec, tp: int) -> dict | None:
    """Two all-reduces per layer and one after the vocab-parallel embedding, of ``N*h`` bf16
    values each; None at TP 1."""
    if tp == 1:
        return None
    x = np.asarray(LIN_GRID, float)
    ms = (2 * m.layers + 1) * t.allreduce_ms(x * m.hidden, tp, x <= CUDA_GRAPH_MAX_TOKENS)
    return _table(LIN_GRID, ms, "slope_ms_per_token", "x_tokens")


def head_table(t: Tables, m: ModelSpec, tp: int, roof: Roofline) -> dict:
    """LM head GEMM + (TP) logits gather + sampling allowance, per step of S logits rows."""
    s = np.asarray(HEAD_GRID, float)
    ms = t.gemm_ms(s, -(-m.vocab // tp), m.hidden, "lm_head")
    if tp > 1:
        ms = ms + t.allreduce_ms(s * m.vocab, tp, s <= CUDA_GRAPH_MAX_TOKENS)
    ms = ms + roof.ms(s * m.vocab * 4 * 2 * SAMPLING_FP32_PASSES, SAMPLING_KERNELS)
    return _table(HEAD_GRID, ms, "slope_ms_per_seq", "x_seqs")


def _fit(a: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    coef = nnls(a / y[:, None], np.ones(len(y)))[0]
    pred = a @ coef
    ape = np.abs(pred / y - 1.0) * 100.0
    return coef, {"n": len(y), "mape_pct": sig(ape.mean(), 4), "max_ape_pct": sig(ape.max(), 4),
                  "r2": sig(1 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum(), 4)}


def attention(t: Tables, m: ModelSpec, tp: int) -> tuple[dict, dict, dict[str, Any]]:
    """``attn_decode`` and ``attn_prefill`` terms (whole model) and their fit quality."""
    q, kv, d = m.q_heads // tp, m.kv_heads // tp, m.head_dim
    quality: dict[str, Any] = {}

    rows, lay = t.attention_rows("generation", q, kv, d)
    b, ctx = rows.batch_size.to_numpy(float), rows.step.to_numpy(float) + 1.0
    coef, qual = _fit(np.column_stack([np.ones_like(b), b, b * ctx]), rows.latency.to_numpy())
    kv_scale = kv * d / (lay[1] * lay[2])
    per_layer = [coef[0], coef[1], coef[2] * kv_scale]
    quality["attn_decode"] = {**qual, "kernel": t.kernels["generation"],
                              "fitted_layout_q_kv_d": list(lay),
                              "kv_bytes_scale": sig(kv_scale, 4), "layers": m.layers,
                              "per_layer_coef": [sig(c) for c in per_layer]}
    dec = {"features": ["const", "batch", "sum_ctx"],
           "coef": [sig(c * m.layers) for c in per_layer]}

    rows, lay = t.attention_rows("context", q, kv, d)
    b, s = rows.batch_size.to_numpy(float), rows.isl.to_numpy(float)
    a, y = np.column_stack([b, b * s, b * s * (s + 1) / 2]), rows.latency.to_numpy()
    use = (b * s >= PREFILL_MIN_TOKENS) & (b <= PREFILL_MAX_CHUNKS)
    if use.sum() < 3:  # too few chunked-prefill-like rows: fit all
        use = np.ones(len(y), bool)
    coef, qual = _fit(a[use], y[use])
    all_ape = np.abs(a @ coef / y - 1.0) * 100.0
    qual.update({"fit_rows": f"batch_size*isl >= {PREFILL_MIN_TOKENS} and batch_size <= "
                             f"{PREFILL_MAX_CHUNKS} (chunked-prefill steps)",
                 "all_rows_n": len(y), "all_rows_mape_pct": sig(all_ape.mean(), 4)})
    fl_scale = q * d / (lay[0] * lay[2])
    per_layer = [coef[0], coef[1] * fl_scale, coef[2] * fl_scale]
    quality["attn_prefill"] = {**qual, "kernel": t.kernels["context"],
                               "fitted_layout_q_kv_d": list(lay),
                               "flops_scale": sig(fl_scale, 4), "layers": m.layers,
                               "per_layer_coef": [sig(c) for c in per_layer]}
    pf = {"features": ["per_chunk", "chunk_tokens", "attn_pairs"],
          "coef": [sig(c * m.layers) for c in per_layer]}
    for key, lay_ in (("attn_decode", quality["attn_decode"]),
                      ("attn_prefill", quality["attn_prefill"])):
        if lay_["fitted_layout_q_kv_d"] != [q, kv, d]:
            t.extrapolated[key] = (f"layout {q}/{kv}/{d} not measured; fitted on "
                                   f"{lay_['fitted_layout_q_kv_d']} and scaled")
    return dec, pf, quality
