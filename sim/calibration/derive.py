"""Derive the shipped profiles from Vidur's published measurements.

Run ``python -m sim.calibration.derive --calibration CALIBRATION --out profiles/``, where
``CALIBRATION`` holds microsoft/vidur's published profiling data (``data/profiling/``).
The output is deterministic: the same inputs give byte-identical files (``source.created`` is
the date of the method, not of the run). The method, per part of the step model:

* ``lin(N)``: Vidur's per-op medians (``mlp.csv``, rows of the profile's tensor-parallel degree)
  summed as ``num_layers * (9 layer ops) + emb`` at every measured N, made non-decreasing by
  isotonic regression, with a linear tail fitted on the upper half of the grid. H100
  Llama-3-8B, which Vidur did not measure, is a cross-GPU transfer (``Deriver.lin_transfer``).
* ``attn_*``: per-layer NNLS fits on the measured A100 Llama-2-70B TP2 attention rows, scaled to
  the profile's per-GPU heads (decode: KV bytes; prefill: query FLOPs) and GPU (decode: by
  effective bandwidth; prefill: by attention FLOP/s), times the layers (``attention``).
* ``comm(N)``: two all-reduces of ``N * hidden * 2`` bytes per layer, from Vidur's
  ``all_reduce.csv`` for two GPUs in one node (TP2 profiles only).
* ``head(S)``: LM head + sampling roofline, not in the data (``head_table``).
* KV capacity: vLLM's rule with analytic terms (``kv_cache``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sim.calibration import vidur
from sim.calibration.anchors import compare_with_anchors
from sim.calibration.vidur import sig
from sim.model.cost import ProfileCostModel
from sim.model.profile import SCHEMA_ID, Profile, parse_profile, vllm_kv_blocks, write_profile

CREATED = "2026-11-27"
TOOL = f"sim.calibration.derive from microsoft/vidur@{vidur.VIDUR_COMMIT[:7]} data"
MIB = 1 << 20
GIB = 1 << 30
HEAD_GRID = (1, 2, 4, 8, 16, 32, 64, 96, 128, 160, 192, 256, 320, 384, 512, 640, 768, 1024)
MAX_FACTOR = 4.0
#: vLLM's profile-run allowances; profiling.md §3.2 uses 2 GiB in all for one GPU.
PEAK_ACTIVATION_BYTES = 3 * GIB // 2
NON_TORCH_BYTES = {1: GIB // 2, 2: GIB}
#: Per-GPU query and KV widths (heads x head_dim) of the measured A100 attention file.
ATTN_REF_Q_DIM, ATTN_REF_KV_DIM = 32 * 128, 4 * 128


@dataclass(frozen=True)
class Gpu:
    """A GPU kind; ``attention_flops`` None means "from the measured A100 prefill fit"."""

    key: str
    name: str
    memory_bytes: int
    peak_flops: float
    hbm_bw: float
    attention_flops: float | None
    note: str


GPUS = {
    "h100": Gpu("h100", "NVIDIA H100 80GB HBM3", 81559 * MIB, 989.4e12, 3.35e12, 350e12,
                "memory as cudaMemGetInfo reports on the lent H100 (81559 MiB); peak is the "
                "dense bf16 datasheet figure; attention 350 TFLOP/s is profiling.md §4.2's "
                "effective FlashAttention-2 rate (35% of peak, the A100 file shows 41%)"),
    "a100": Gpu("a100", "NVIDIA A100-SXM4-80GB", 81920 * MIB, 312e12, 2.039e12, None,
                "memory 81920 MiB as cudaMemGetInfo reports; peak and HBM bandwidth are "
                "datasheet figures; attention FLOP/s from the NNLS fit of the measured "
                "A100 prefill attention"),
}


@dataclass(frozen=True)
class Model:
    """Model facts; the shape comes from Vidur's config, vocab and context from the HF config."""

    key: str
    vidur_dir: str
    vocab_size: int
    max_position: int


MODELS = {
    "llama-3-8b": Model("llama-3-8b", "Meta-Llama-3-8B", 128256, 8192),
    "llama-2-7b": Model("llama-2-7b", "Llama-2-7b-hf", 32000, 4096),
    "llama-2-70b": Model("llama-2-70b", "Llama-2-70b-hf", 32000, 4096),
}


@dataclass(frozen=True)
class Target:
    """One shipped profile; ``transfer_from`` names the model whose H100 lin is transferred."""

    name: str
    gpu: str
    model: str
    tp: int
    comm_cluster: str | None = None
    transfer_from: str | None = None


TARGETS = (
    Target("h100/llama-3-8b", "h100", "llama-3-8b", 1, transfer_from="llama-2-7b"),
    Target("h100/llama-2-7b", "h100", "llama-2-7b", 1),
    Target("h100/llama-2-70b-tp2", "h100", "llama-2-70b", 2, comm_cluster="h100_dgx"),
    Target("a100/llama-3-8b", "a100", "llama-3-8b", 1),
    Target("a100/llama-2-7b", "a100", "llama-2-7b", 1),
    Target("a100/llama-2-70b-tp2", "a100", "llama-2-70b", 2, comm_cluster="a100_pairwise_nvlink"),
)


class Deriver:
    """Reads the calibration root and builds the profile dict of each target."""

    def __init__(self, calibration: Path) -> None:
        self.calibration = calibration
        self.root = calibration / "vidur"
        self.used: set[Path] = set()
        self.attn_path = self.root / "legacy_attention" / "a100" / "attention.csv"
        self.attn_dec, self.attn_pf = vidur.fit_attention(self._use(self.attn_path))
        #: effective rates of the measured A100 attention (per-layer sum_ctx and pairs slopes)
        self.a100_attn_bw = 2 * ATTN_REF_KV_DIM * 2 / (self.attn_dec.coef[2] * 1e-3)
        self.a100_attn_flops = 4 * ATTN_REF_Q_DIM / (self.attn_pf.coef[2] * 1e-3)

    def _use(self, path: Path) -> Path:
        if not path.is_file():
            raise FileNotFoundError(f"calibration file missing: {path}")
        self.used.add(path)
        return path

    def shape(self, model: Model) -> dict[str, int]:
        """Model shape from Vidur's config; params counted for a Llama decoder."""
        cfg = vidur.read_yaml(self._use(
            self.root / "model_configs" / "meta-llama" / f"{model.vidur_dir}.yml"))
        h, hq, hkv = cfg["embedding_dim"], cfg["num_q_heads"], cfg["num_kv_heads"]
        d, inter, layers = h // hq, cfg["mlp_hidden_dim"], cfg["num_layers"]
        per_layer = h * (hq + 2 * hkv) * d + hq * d * h + 3 * h * inter + 2 * h
        params = layers * per_layer + 2 * model.vocab_size * h + h  # + embedding, head, norm
        return {"num_layers": layers, "hidden_size": h, "num_heads": hq, "num_kv_heads": hkv,
                "head_dim": d, "intermediate_size": inter, "vocab_size": model.vocab_size,
                "params": params, "max_position": model.max_position}

    def ops(self, gpu: str, model: str, tp: int) -> pd.DataFrame:
        """Per-op medians of Vidur's mlp.csv for one GPU, model and TP degree."""
        path = self._use(vidur.mlp_csv(self.root, gpu, MODELS[model].vidur_dir))
        return vidur.op_medians(path, tp)

    def gpu_rates(self, gpu: str) -> tuple[float, float]:
        """Effective GEMV bandwidth (B/s) and GEMM FLOP/s read off ``mlp_up_proj``.

        Llama-2-7B's up projection (4096 x 22016, 180 MB) streams its weights at N <= 8
        (bandwidth-bound) and runs at the large-GEMM rate at N >= 2048 (compute-bound).
        """
        up = self.ops(gpu, "llama-2-7b", 1)["mlp_up_proj"]
        n, t_s = up.index.to_numpy(), up.to_numpy() * 1e-3
        weights, flops_per_token = 2.0 * 4096 * 2 * 11008, 2.0 * 4096 * 2 * 11008
        bw = np.median(weights / t_s[n <= 8])
        flops = np.median(flops_per_token * n[n >= 2048] / t_s[n >= 2048])
        return sig(bw, 3), sig(flops, 3)

    def lin_raw(self, t: Target, layers: int) -> tuple[np.ndarray, np.ndarray]:
        """Measured N and the summed token-linear step time at each (ms)."""
        if t.transfer_from is None:
            sums = vidur.step_sums(self.ops(t.gpu, t.model, t.tp), layers)
        else:
            sums = self.lin_transfer(t.gpu, t.transfer_from, t.model, layers)
        return sums.index.to_numpy(dtype=np.int64), sums.to_numpy(dtype=float)

    def lin_transfer(self, gpu: str, src: str, dst: str, layers: int) -> pd.Series:
        """``dst`` on ``gpu`` = ``src`` on ``gpu`` x per-op (dst / src) ratio measured on A100.

        Assumption: at equal N, the change of each op's time between the two model shapes is
        the same on both GPUs (the op shapes scale alike; tile effects may differ).
        """
        ops_g = self.ops(gpu, src, 1)
        ratio = (self.ops("a100", dst, 1) / self.ops("a100", src, 1)).dropna()
        common = ops_g.index.intersection(ratio.index)
        return vidur.step_sums(ops_g.loc[common] * ratio.loc[common], layers)

    def transfer_check(self) -> dict[str, Any]:
        """Error of the transfer where the answer is known: H100 Llama-2-70B (TP1 rows, 80
        layers) from H100 Llama-2-7B x A100 (70B / 7B) per-op ratios, against its measured
        sums. A much larger change of shape than 7B -> 8B, so a pessimistic bound."""
        layers = self.shape(MODELS["llama-2-70b"])["num_layers"]
        pred = self.lin_transfer("h100", "llama-2-7b", "llama-2-70b", layers)
        meas = vidur.step_sums(self.ops("h100", "llama-2-70b", 1), layers).loc[pred.index]
        err = (pred.to_numpy() / meas.to_numpy() - 1.0) * 100.0
        return {"what": "H100 Llama-2-70B (TP1) sums predicted by the same transfer from "
                        "H100 Llama-2-7B, against Vidur's measurement",
                "mape_pct": sig(np.abs(err).mean(), 4), "max_ape_pct": sig(np.abs(err).max(), 4),
                "mean_err_pct_n_le_128": sig(err[pred.index <= 128].mean(), 3),
                "mean_err_pct_n_ge_1024": sig(err[pred.index >= 1024].mean(), 3),
                "n": len(err)}

    def comm(self, t: Target, x: np.ndarray, shape: dict[str, int]) -> tuple[dict, dict]:
        """The all-reduce table of a tensor-parallel target."""
        path = self._use(self.root / "network" / str(t.comm_cluster) / "all_reduce.csv")
        ar = vidur.all_reduce_medians(path, t.tp)
        return vidur.comm_table(ar, x, shape["hidden_size"], shape["num_layers"], MAX_FACTOR)

    def attention(self, shape: dict[str, int], tp: int, bw: float,
                  flops: float) -> tuple[dict, dict, dict]:
        """Scale the per-layer A100 fits to this shape and GPU, times the layers.

        Decode batch and context terms scale with the KV bytes per GPU and inversely with the
        bandwidth (so the context term is the roofline ``kv_bytes / bw``); prefill token and
        pair terms scale with the query width per GPU and inversely with the attention
        FLOP/s; the constant (launch) terms are kept.
        """
        layers, hd = shape["num_layers"], shape["head_dim"]
        kv_ratio = shape["num_kv_heads"] // tp * hd / ATTN_REF_KV_DIM
        q_ratio = shape["num_heads"] // tp * hd / ATTN_REF_Q_DIM
        dec_k = kv_ratio * self.a100_attn_bw / bw
        pf_k = q_ratio * self.a100_attn_flops / flops
        dec = [sig(layers * c * k) for c, k in zip(self.attn_dec.coef, (1.0, dec_k, dec_k),
                                                    strict=True)]
        pf = [sig(layers * c * k) for c, k in zip(self.attn_pf.coef, (1.0, pf_k, pf_k),
                                                   strict=True)]
        quality = {}
        for key, fit, k in (("attn_decode", self.attn_dec, dec_k),
                            ("attn_prefill", self.attn_pf, pf_k)):
            quality[key] = {"fitted_on": f"{self.attn_path.relative_to(self.calibration)}",
                            "per_layer_coef": [sig(c) for c in fit.coef], "n": fit.n,
                            "mape_pct": sig(fit.mape_pct, 4), "r2": sig(fit.r2, 4),
                            "max_ape_pct": sig(fit.max_ape_pct, 4), "scale": sig(k),
                            "layers": layers}
        return ({"features": ["const", "batch", "sum_ctx"], "coef": dec},
                {"features": ["per_chunk", "chunk_tokens", "attn_pairs"], "coef": pf}, quality)


def head_table(shape: dict[str, int], tp: int, bw: float, flops: float) -> dict:
    """LM head + sampling roofline per step (ms) vs logits rows S (profiling.md §4.2).

    ``head(S) = max(W / bw, 2*S*(V/TP)*h / flops) + S*V*8 / bw``: the head GEMM (``W =
    (V/TP)*h*2`` bytes per GPU) is bandwidth- or compute-bound; sampling reads and writes the
    fp32 logits (8 bytes per vocabulary entry and row).
    """
    v, h = shape["vocab_size"], shape["hidden_size"]
    w_bytes = v // tp * h * 2

    def at_ms(s: int) -> float:
        return (max(w_bytes / bw, 2 * s * (v // tp) * h / flops) + s * v * 8 / bw) * 1e3

    slope = (2 * (v // tp) * h / flops + v * 8 / bw) * 1e3
    return {"x_seqs": list(HEAD_GRID), "y_ms": [sig(at_ms(s)) for s in HEAD_GRID],
            "extrapolation": {"kind": "linear", "slope_ms_per_seq": sig(slope),
                              "max_factor": MAX_FACTOR}}


def kv_cache(shape: dict[str, int], gpu: Gpu, tp: int) -> dict[str, Any]:
    """vLLM's KV sizing terms per GPU and the node's capacity (profiling.md §3.2)."""
    kv_bytes = 2 * shape["num_layers"] * shape["num_kv_heads"] // tp * shape["head_dim"] * 2
    weights = shape["params"] * 2 // tp
    non_kv = weights + PEAK_ACTIVATION_BYTES + NON_TORCH_BYTES[tp]
    blocks = vllm_kv_blocks(gpu.memory_bytes, 0.9, non_kv, kv_bytes, 16)
    return {
        "dtype": "bfloat16", "kv_bytes_per_token_per_gpu": kv_bytes, "block_size": 16,
        "gpu_memory_utilization": 0.9, "total_bytes_per_gpu": gpu.memory_bytes,
        "weights_bytes_per_gpu": weights, "peak_activation_bytes_per_gpu": PEAK_ACTIVATION_BYTES,
        "non_torch_bytes_per_gpu": NON_TORCH_BYTES[tp], "capacity_tokens": blocks * 16,
        "method": (
            "vLLM rule floor((total*util - weights - peak_activation - non_torch) / "
            "(block_size*kv_bytes_per_token_per_gpu)) * block_size with analytic terms, not "
            "measured: total as cudaMemGetInfo reports, weights = params*2 bytes / TP, peak "
            "activation 1.5 GiB (vLLM's profile run at 8192 batched tokens: MLP intermediates "
            f"and fp32 logits), non-torch {NON_TORCH_BYTES[tp] / GIB:g} GiB (CUDA context, "
            f"cuBLAS workspace{', NCCL buffers' if tp > 1 else ''})"),
    }


def hardware(gpu: Gpu, tp: int, rates: dict[str, float]) -> dict[str, Any]:
    """The ``hardware`` block: datasheet figures and the effective (roofline) rates."""
    return {
        "gpu": gpu.name, "tensor_parallel": tp, "memory_bytes_per_gpu": gpu.memory_bytes,
        "peak_bf16_flops_per_gpu": gpu.peak_flops, "hbm_bandwidth_bytes_per_s": gpu.hbm_bw,
        "effective_bandwidth_bytes_per_s": rates["bw"],
        "effective_gemm_flops_per_gpu": rates["gemm"],
        "effective_attention_flops_per_gpu": sig(rates["attn_flops"], 4),
        "notes": f"{gpu.note}; effective bandwidth and GEMM FLOP/s read off Vidur's "
                 f"{gpu.key} Llama-2-7B mlp_up_proj medians (N<=8, N>=2048)"}


def method_text(t: Target, shape: dict[str, int], rates: dict[str, float]) -> str:
    """The ``source.method`` prose of a target."""
    layers, model, g = shape["num_layers"], MODELS[t.model], t.gpu.upper()
    ops = "input_layernorm, attn_pre_proj, attn_rope, attn_post_proj, post_attention_layernorm, " \
          "mlp_up_proj, mlp_act, mlp_down_proj, add"
    if t.transfer_from is None:
        lin = (f"lin: Vidur compute/{t.gpu}/meta-llama/{model.vidur_dir}/mlp.csv rows with "
               f"num_tensor_parallel_workers={t.tp}, per-op medians ({ops}) summed x {layers} "
               f"layers + emb at every measured N")
    else:
        src = MODELS[t.transfer_from].vidur_dir
        lin = (f"lin: CROSS-GPU TRANSFER, Vidur did not measure this model on the {g}: "
               f"{g} {src} per-op medians ({ops}, emb) x the per-op ratio "
               f"A100 {model.vidur_dir} / A100 {src} at the same N, summed x {layers} layers "
               f"+ emb; assumes each op's change between the two shapes is the same on both "
               f"GPUs (checked on H100 Llama-2-70B, fit_quality.lin.transfer_check)")
    lin += ("; repeated N collapsed to their median; made non-decreasing with "
            "scipy.optimize.isotonic_regression; linear tail = least-squares slope over the "
            "upper half of the grid; kernel time only (PyTorch profiler, fp16 kernels standing "
            "for bf16).")
    gpu_part = "" if t.gpu == "a100" else (
        f" and to the {g} (context and batch terms x A100 attention bandwidth "
        f"{rates['a100_attn_bw']:.3g} / {rates['attn_bw']:.3g} B/s; chunk-token and pair terms x "
        f"A100 attention {rates['a100_attn_flops']:.3g} / {rates['attn_flops']:.3g} FLOP/s, "
        f"i.e. roofline slopes)")
    attn = (f" Attention: NNLS fits (rows weighted 1/t) of Vidur's measured A100 attention "
            f"(legacy_attention/a100/attention.csv: Llama-2-70B TP2, 32 query and 4 KV heads "
            f"per GPU, head dim 128, FlashAttention kernel + output reshape, ms per layer), "
            f"decode on [1, B, B*kv], prefill on [1, c, c*kv + c(c+1)/2]; scaled to "
            f"{shape['num_heads'] // t.tp} query / {shape['num_kv_heads'] // t.tp} KV heads per "
            f"GPU (decode terms by KV bytes, prefill terms by query FLOPs){gpu_part}; constant "
            f"terms kept; x {layers} layers.")
    comm = "" if t.comm_cluster is None else (
        f" comm: 2 all-reduces per layer of N*hidden*2 bytes, Vidur network/{t.comm_cluster}/"
        f"all_reduce.csv (2 GPUs in one node), isotonic over message size.")
    head = (f" head: roofline max(W/bw, 2*S*V/TP*h/F) + S*V*8/bw, bw = {rates['bw']:.3g} B/s "
            f"and F = {rates['gemm']:.3g} FLOP/s (Vidur {g} Llama-2-7B mlp_up_proj at N<=8 "
            f"and N>=2048); the LM head is not in Vidur's data.")
    rest = (" KV: vLLM rule with analytic terms (kv_cache.method). mixed_factor 1.0 and "
            "cpu_overhead_ms 0: no engine CPU overhead (set it in the scenario, profiling.md "
            "§4.4).")
    return lin + attn + comm + head + rest


def build(d: Deriver, t: Target) -> dict[str, Any]:
    """The profile dict of one target, with its fit quality and checks."""
    d.used = {d.attn_path}
    gpu, shape = GPUS[t.gpu], d.shape(MODELS[t.model])
    bw, gemm = d.gpu_rates(t.gpu)
    # the A100 keeps its measured attention rates; other GPUs: effective bandwidth (decode
    # streams the KV cache like a GEMV streams weights) and the stated attention FLOP/s
    attn_bw = d.a100_attn_bw if gpu.attention_flops is None else bw
    attn_flops = gpu.attention_flops or d.a100_attn_flops
    x, raw = d.lin_raw(t, shape["num_layers"])
    lin, lin_q = vidur.lin_table(x, raw, MAX_FACTOR)
    quality: dict[str, Any] = {"lin": lin_q}
    if t.transfer_from is not None:
        lin_q["transfer_check"] = d.transfer_check()
    comm = None
    if t.comm_cluster is not None:
        comm, quality["comm"] = d.comm(t, x, shape)
    dec, pf, attn_q = d.attention(shape, t.tp, attn_bw, attn_flops)
    quality.update(attn_q)
    quality["head"] = "roofline (hardware.effective_*), not fitted"
    rates = {"bw": bw, "gemm": gemm, "attn_bw": attn_bw, "attn_flops": attn_flops,
             "a100_attn_bw": d.a100_attn_bw, "a100_attn_flops": d.a100_attn_flops}
    data: dict[str, Any] = {
        "schema": SCHEMA_ID, "name": t.name,
        "source": {"kind": "derived", "method": method_text(t, shape, rates),
                   "data": [{"path": p.relative_to(d.calibration).as_posix(),
                             "sha256": vidur.sha256_file(p), "licence": vidur.LICENCE}
                            for p in sorted(d.used)],
                   "created": CREATED, "tool": TOOL},
        "hardware": hardware(gpu, t.tp, rates),
        "model": {"name": MODELS[t.model].key, "dtype": "bfloat16", **shape},
        "kv_cache": kv_cache(shape, gpu, t.tp),
        "step_model": {"units": "ms", "lin": lin, "comm": comm,
                       "head": head_table(shape, t.tp, bw, gemm),
                       "attn_decode": dec, "attn_prefill": pf,
                       "mixed_factor": 1.0, "cpu_overhead_ms": 0.0},
        "fit_quality": quality, "checks": {},
    }
    figs = key_figures(parse_profile(data, source=t.name))
    data["checks"] = {"key_figures": figs, "anchors": compare_with_anchors(t.name, figs)}
    return data
def key_figures(profile: Profile) -> dict[str, float]:
    """Headline numbers of a profile (ms unless named otherwise)."""
    cm = ProfileCostModel.from_profile(profile)
    sm = profile.step_model
    figs = {f"lin_ms@{n}": sm.lin.at(n) for n in (1, 64, 128, 256, 512, 1024, 2048, 4096)}
    figs.update({
        "head_ms@1": sm.head.at(1), "head_ms@256": sm.head.at(256),
        "lin_slope_us_per_token": sm.lin.slope_ms * 1e3,
        "decode_ctx_slope_ns_per_token": sm.attn_decode.coef[2] * 1e6,
        "decode_ms@B1_ctx1024": cm.step_s(0, 0, 0, 1, 1024) * 1e3,
        "decode_ms@B64_ctx1024": cm.step_s(0, 0, 0, 64, 64 * 1024) * 1e3,
        "prefill_ms@2048": cm.step_s(2048, 1, 2048 * 2049 // 2, 0, 0) * 1e3,
        "kv_capacity_tokens": profile.kv_capacity_tokens(),
    })
    if sm.comm is not None:
        figs["comm_ms@1"] = sm.comm.at(1)
        figs["comm_ms@2048"] = sm.comm.at(2048)
    return {k: sig(v, 5) if isinstance(v, float) else v for k, v in figs.items()}


def main(argv: list[str] | None = None) -> int:
    """Command line: derive every shipped profile (or ``--only`` some) into ``--out``."""
    parser = argparse.ArgumentParser(prog="python -m sim.calibration.derive",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=Path, required=True,
                        help="calibration root holding vidur/ (shared/calibration)")
    parser.add_argument("--out", type=Path, default=Path("profiles"), help="output folder")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="derive only this profile (repeatable), e.g. h100/llama-3-8b")
    args = parser.parse_args(argv)
    deriver = Deriver(args.calibration)
    for target in TARGETS:
        if args.only and target.name not in args.only:
            continue
        data = build(deriver, target)
        path = write_profile(data, args.out / f"{target.name}.json")
        f = data["checks"]["key_figures"]
        line = (f"{path}: lin(1) {f['lin_ms@1']:.2f} ms, lin(4096) {f['lin_ms@4096']:.1f} ms, "
                f"decode B64/ctx1024 {f['decode_ms@B64_ctx1024']:.1f} ms, prefill 2048 "
                f"{f['prefill_ms@2048']:.1f} ms, KV {f['kv_capacity_tokens']} tokens")
        print(line)  # noqa: T201 (the CLI reports what it wrote)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
