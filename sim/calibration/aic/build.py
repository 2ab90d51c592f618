"""Assemble a derived cost profile from aiconfigurator-core's tables (``simlb profile derive``).

The step terms are in ``sim.calibration.aic.terms``. This module adds the KV-cache sizing, the
hardware block, the checks and the provenance. KV capacity follows vLLM's rule
``floor((total * util - weights - peak_activation - non_torch) / (block * kv_bytes))`` with:

* total: memory as ``cudaMemGetInfo`` reports it (``REPORTED_TOTAL``; the nominal YAML capacity
  for other systems);
* weights: the parameter count from the config x 2 bytes / tp (bf16, every matrix split);
* peak activation (assumption, vLLM's profile run): the larger of the forward pass at
  ``max_num_batched_tokens`` T (residual + normed hidden, 2 T h bf16, plus the MLP's live set
  3 T I/tp, the attention's (2Hq + 2Hkv) D/tp, or for MoE the fused-MoE caches T k (3 I/tp + h))
  and the dummy sampler run (``max_num_seqs`` rows of fp32 logits and probabilities);
* non-torch: 128 MiB (assumption: cuBLAS/Triton scratch outside PyTorch's allocator; the CUDA
  context is in vLLM's baseline) plus, for TP > 1, the YAML's ``misc.nccl_mem[tp]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sim.calibration.aic import terms
from sim.calibration.aic.model import ModelSpec, load_config, model_spec
from sim.calibration.aic.tables import (
    LICENCE,
    Tables,
    engine_versions,
    package_root,
    package_version,
    sha256_file,
    systems,
)
from sim.calibration.anchors import anchor_key, compare_with_anchors
from sim.calibration.vidur import sig
from sim.errors import InputError
from sim.model.cost import ProfileCostModel
from sim.model.profile import SCHEMA_ID, Profile, parse_profile, vllm_kv_blocks

CREATED = "2026-12-02"
#: vLLM v1 engine host time and API latency, fitted with ``simlb calibrate`` (terms
#: cpu_overhead_ms and cpu_per_seq_ms by replay, the API latency in closed form) on the
#: training half of the measured vLLM 0.23 Qwen3-14B H100 runs (docs/fidelity.md gives the
#: split and the held-out errors). They describe the engine and its host, not the model, so
#: every derived profile starts from them; ``simlb calibrate`` refits them for one's own runs.
ENGINE_HOST_DEFAULTS: dict[str, float] = {
    "cpu_overhead_ms": 0.0, "cpu_per_seq_ms": 0.0103, "api_latency_ms": 9.42,
    "api_latency_us_per_prompt_token": 7.0, "api_latency_us_per_active_request": 742.0}
MIB, GIB = 1 << 20, 1 << 30
ALIASES = {"h100": "h100_sxm", "h200": "h200_sxm", "a100": "a100_sxm"}
SHORT = {v: k for k, v in ALIASES.items()}
#: total memory as cudaMemGetInfo reports it, and the source of the figure
REPORTED_TOTAL: dict[str, tuple[int, str]] = {
    "h100_sxm": (81559 * MIB, "81559 MiB as cudaMemGetInfo reported on a lent H100 80GB HBM3 "
                              "(read by simlb's GPU profiler)"),
    "a100_sxm": (81920 * MIB, "81920 MiB as cudaMemGetInfo reports on an A100-SXM4-80GB "
                              "(80 GiB, NVIDIA A100 datasheet)"),
    "h200_sxm": (143771 * MIB, "143771 MiB as cudaMemGetInfo reports on an H200 "
                               "(NVIDIA H200 141 GB; not re-read here)"),
}
NON_TORCH_BASE = 128 * MIB
#: measured KV capacities: (system, model, tp) -> (blocks, block size, util, source)
MEASURED_KV: dict[tuple[str, str, int], tuple[int, int, float, str]] = {
    ("h100_sxm", "qwen3-14b", 1): (18038, 16, 0.9, "vLLM 0.23 on an H100 80GB HBM3, "
                                   "gpu_memory_utilization 0.9, block 16: 18,038 blocks "
                                   "(288,608 tokens), measured"),
}
#: anchors of another model name with the same shape
ANCHOR_ALIAS = {"llama-3.1-8b": "llama-3-8b"}


@dataclass(frozen=True)
class Options:
    """``simlb profile derive`` options; ``engine`` None = the newest version of the system."""

    model: str
    gpu: str
    tp: int = 1
    engine: str | None = None
    dtype: str = "bfloat16"
    gpu_memory_utilization: float = 0.9
    block_size: int = 16
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    model_name: str | None = None
    name: str | None = None


def resolve_system(gpu: str) -> str:
    """An aiconfigurator system name (``h100_sxm``; ``h100`` also works).

    Raises:
        InputError: unknown GPU, listing the systems with vLLM data.
    """
    system = ALIASES.get(gpu.lower(), gpu.lower())
    have = systems()
    if system not in have:
        raise InputError(f"unknown GPU {gpu!r}; aiconfigurator-core has vLLM data for: "
                         f"{', '.join(have)}")
    return system


def resolve_version(system: str, engine: str | None) -> str:
    """The vLLM version: ``vllm==X`` / ``X``, or the newest with GEMM and attention tables.

    Raises:
        InputError: another engine or an unmeasured version, listing the available ones.
    """
    have = engine_versions(system)
    if not have:
        raise InputError(f"no vLLM GEMM and attention data for {system}")
    if engine is None:
        return have[-1]
    name, _, version = engine.partition("==") if "==" in engine else ("vllm", "", engine)
    if name.lower() != "vllm" or version not in have:
        raise InputError(f"engine {engine!r} not available for {system}; available: "
                         f"{', '.join('vllm==' + v for v in have)}")
    return version


def model_name(ref: str) -> str:
    """A short lower-case name: ``Qwen/Qwen3-14B`` -> ``qwen3-14b``."""
    stem = ref.rstrip("/").split("/")[-1]
    for suffix in (".json", "_config"):
        stem = stem.removesuffix(suffix)
    return stem.split("--")[-1].lower().replace("meta-llama-", "llama-")


def kv_cache(m: ModelSpec, tp: int, opts: Options, system: str,
             yaml_: dict[str, Any]) -> dict[str, Any]:
    """vLLM's KV sizing terms per GPU (assumptions in the module docstring)."""
    total, total_note = REPORTED_TOTAL.get(system, (int(yaml_["gpu"]["mem_capacity"]),
                                                    "nominal mem_capacity of the system YAML"))
    kv_bytes = 2 * m.layers * (m.kv_heads // tp) * m.head_dim * 2
    weights = math.ceil(m.params * 2 / tp)
    t, h, d = opts.max_num_batched_tokens, m.hidden, m.head_dim
    live = "max(3*T*I/tp, T*(2Hq+2Hkv)*D/tp)"
    if m.experts:
        block = t * m.topk * (3 * m.inter // tp + h)
        live = "T*topk*(3*I/tp + h) fused-MoE caches"
    else:
        block = max(3 * t * m.inter // tp, t * (2 * m.q_heads + 2 * m.kv_heads) * d // tp)
    forward = 2 * (2 * t * h + block)
    sampler = opts.max_num_seqs * m.vocab * 4 * 2
    nccl = int((yaml_.get("misc", {}).get("nccl_mem") or {}).get(tp, 0)) if tp > 1 else 0
    non_torch = NON_TORCH_BASE + nccl
    peak = max(forward, sampler)
    blocks = vllm_kv_blocks(total, opts.gpu_memory_utilization, weights + peak + non_torch,
                            kv_bytes, opts.block_size)
    return {
        "dtype": "bfloat16", "kv_bytes_per_token_per_gpu": kv_bytes,
        "block_size": opts.block_size, "gpu_memory_utilization": opts.gpu_memory_utilization,
        "total_bytes_per_gpu": total, "weights_bytes_per_gpu": weights,
        "peak_activation_bytes_per_gpu": peak, "non_torch_bytes_per_gpu": non_torch,
        "capacity_tokens": blocks * opts.block_size,
        "method": (
            f"vLLM rule with analytic terms, not measured: total {total_note}; weights = "
            f"{m.params} params x 2 bytes / {tp}; peak activation = max(forward at "
            f"max_num_batched_tokens={t}: 2 bytes x (2*T*h + {live}) = {forward} B, "
            f"dummy sampler: max_num_seqs={opts.max_num_seqs} x vocab x fp32 logits and "
            f"probabilities = {sampler} B) (assumption); non-torch = 128 MiB "
            f"(assumption: scratch outside PyTorch's allocator)"
            + (f" + aiconfigurator's misc.nccl_mem[{tp}] = {nccl} B" if tp > 1 else "")),
    }


def hardware(t: Tables, tp: int, yaml_: dict[str, Any], total: int, note: str,
             attn_flops: float) -> dict[str, Any]:
    """Datasheet figures (system YAML) and effective rates read off the measured GEMMs."""
    g = t.gemm_frame()
    small = g[(g.m == 1) & (g.n * g.k >= 1 << 26)]
    bw = float((small.n * small.k * 2 / (small.latency * 1e-3)).median())
    big = g[(g.m >= 4096) & (g.n >= 4096) & (g.k >= 4096)]
    flops = float((2 * big.m * big.n * big.k / (big.latency * 1e-3)).median())
    gpu = yaml_["gpu"]
    return {
        "gpu": t.device(), "tensor_parallel": tp, "memory_bytes_per_gpu": total,
        "peak_bf16_flops_per_gpu": float(gpu["bfloat16_tc_flops"]),
        "hbm_bandwidth_bytes_per_s": float(gpu["mem_bw"]),
        "effective_bandwidth_bytes_per_s": sig(bw, 4),
        "effective_gemm_flops_per_gpu": sig(flops, 4),
        "effective_attention_flops_per_gpu": sig(attn_flops, 4),
        "notes": (f"memory: {note}; peak bf16 FLOP/s and HBM bandwidth from aiconfigurator-core "
                  f"systems/{t.system}.yaml; effective bandwidth = median weight bytes / latency "
                  f"of the measured bf16 GEMMs at m=1 (n*k >= 2^26), effective GEMM FLOP/s = "
                  f"median of those with m, n, k >= 4096; attention FLOP/s = 4*Hq/tp*D / the "
                  f"fitted per-layer pair coefficient"),
    }


def key_figures(profile: Profile) -> dict[str, float]:
    """Headline numbers (ms unless named otherwise), as ``sim.calibration.derive`` reports."""
    from sim.calibration.derive import key_figures as base

    cm = ProfileCostModel.from_profile(profile)
    figs = base(profile)
    figs["lin_ms@8192"] = profile.step_model.lin.at(8192)
    for b in (1, 32, 128):
        figs[f"decode_ms@B{b}_ctx1100"] = cm.step_s(0, 0, 0, b, b * 1100) * 1e3
    figs["prefill_ms@1000"] = cm.step_s(1000, 1, 1000 * 1001 // 2, 0, 0) * 1e3
    return {k: sig(v, 5) if isinstance(v, float) else v for k, v in figs.items()}


def method_text(m: ModelSpec, tp: int, system: str, version: str) -> str:
    """``source.method`` prose: the terms module's description, specialised."""
    moe = (f" MoE layers: router GEMM [h -> {m.experts}] + measured fused-MoE block "
           f"({m.experts} experts, top-{m.topk}, inter {m.inter}, moe_tp {tp}, balanced).")
    return " ".join((
        f"Derived from NVIDIA aiconfigurator-core {package_version()} measured kernel tables "
        f"({system}, vllm {version}), no run of this model. "
        + terms.__doc__.split("\n\n", 1)[1].replace("\n", " ").strip()
        + (moe if m.experts else "")
        + " KV: vLLM rule with analytic terms (kv_cache.method). mixed_factor 1.0 (additive). "
          "Host time and API latency: the vLLM v1 defaults that simlb calibrate fitted on "
          "measured vLLM 0.23 runs (ENGINE_HOST_DEFAULTS, docs/fidelity.md), not this model's."
    ).split())


def derive(opts: Options, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build the profile dict for ``opts``; notes on far extrapolations go to ``echo``.

    Raises:
        InputError: unknown GPU, engine version, model or architecture; a config field missing;
            a dtype other than bfloat16; TP not dividing the heads.
    """
    if opts.dtype != "bfloat16":
        raise InputError(f"dtype {opts.dtype!r} not supported; the derivation uses the bf16 "
                         f"tables (bfloat16)")
    system = resolve_system(opts.gpu)
    version = resolve_version(system, opts.engine)
    config, config_src = load_config(opts.model)
    name = opts.model_name or model_name(opts.model)
    m = model_spec(config, name, source=opts.model if opts.model.endswith(".json") else name)
    tp = opts.tp
    if tp < 1 or m.kv_heads % tp or m.q_heads % tp:
        raise InputError(f"--tp {tp} must divide the {m.q_heads} query and {m.kv_heads} KV heads")
    t = Tables(system, version)
    yaml_ = t.system_yaml()
    roof = terms.Roofline.from_yaml(yaml_["gpu"])
    lin, lin_quality = terms.lin_table(t, m, tp, roof)
    comm = terms.comm_table(t, m, tp)
    head = terms.head_table(t, m, tp, roof)
    dec, pf, quality = terms.attention(t, m, tp)
    kv = kv_cache(m, tp, opts, system, yaml_)
    attn_flops = 4 * m.q_heads // tp * m.head_dim / (quality["attn_prefill"]["per_layer_coef"][2]
                                                     * 1e-3)
    note = REPORTED_TOTAL.get(system, (0, "nominal mem_capacity of the system YAML"))[1]
    short = SHORT.get(system, system)
    pname = opts.name or f"{short}/{name}{f'-tp{tp}' if tp > 1 else ''}-aic"
    files = sorted(t.used)
    data_files = [{"path": p.relative_to(package_root().parent).as_posix(),
                   "sha256": sha256_file(p), "licence": LICENCE} for p in files]
    if config_src.endswith(".json"):
        cpath = Path(config_src)
        shown = (cpath.relative_to(package_root().parent).as_posix()
                 if package_root() in cpath.parents else f"model_configs/{cpath.name}")
        data_files.append({"path": shown, "sha256": sha256_file(cpath),
                           "licence": "model config.json (Hugging Face model card licence)"})
    quality.update({
        "lin": lin_quality,
        "head": "LM-head GEMM lookup + sampling allowance (roofline), not fitted",
        "comm": None if comm is None else ("vLLM custom all-reduce (<= 8 MiB) and NCCL "
                                            "lookups, not fitted"),
        "lookups": {"scaled": dict(sorted(t.scaled.items())),
                    "extrapolated": dict(sorted(t.extrapolated.items())),
                    "n_extrapolated": len(t.extrapolated)},
    })
    data: dict[str, Any] = {
        "schema": SCHEMA_ID, "name": pname,
        "source": {"kind": "derived", "method": method_text(m, tp, system, version),
                   "data": data_files, "created": CREATED,
                   "tool": (f"sim.calibration.aic (simlb profile derive) from aiconfigurator-core "
                            f"{package_version()} tables, engine vllm=={version}")},
        "hardware": hardware(t, tp, yaml_, kv["total_bytes_per_gpu"], note, attn_flops),
        "model": {"name": name, "num_layers": m.layers, "hidden_size": m.hidden,
                  "num_heads": m.q_heads, "num_kv_heads": m.kv_heads, "head_dim": m.head_dim,
                  "intermediate_size": m.inter, "vocab_size": m.vocab, "params": m.params,
                  "dtype": "bfloat16", "max_position": m.max_position},
        "kv_cache": kv,
        "step_model": {"units": "ms", "lin": lin, "comm": comm, "head": head,
                       "attn_decode": dec, "attn_prefill": pf, "mixed_factor": 1.0,
                       **ENGINE_HOST_DEFAULTS},
        "fit_quality": quality, "checks": {},
        "metadata": {"engine": f"vllm=={version}", "system": system,
                     "aiconfigurator_core": package_version(), "config": config_src.split("/")[-1],
                     "active_params": m.active_params, "architecture": m.arch,
                     "command": (f"simlb profile derive --model {opts.model} --gpu {system} "
                                 f"--tp {tp} --engine vllm=={version}")},
    }
    prof = parse_profile(data, source=pname)
    figs = key_figures(prof)
    checks: dict[str, Any] = {"key_figures": figs, "anchors": compare_with_anchors(
        anchor_key(short, ANCHOR_ALIAS.get(name, name), tp), figs),
        "extrapolated_lookups": len(t.extrapolated)}
    meas = MEASURED_KV.get((system, name, tp))
    if meas is not None:
        blocks, bs, util, src = meas
        got = prof.kv_capacity_blocks(util, bs)
        checks["kv_measured"] = {"expected_blocks": blocks, "got_blocks": got,
                                 "rel_err_pct": sig((got / blocks - 1) * 100, 3), "source": src}
    data["checks"] = checks
    if echo is not None:
        for key, why in sorted(t.extrapolated.items()):
            echo(f"note: extrapolated beyond the measured shapes: {key}: {why}")
    return data


def summary(data: dict[str, Any]) -> str:
    """One line of headline figures."""
    f = data["checks"]["key_figures"]
    return (f"lin(1) {f['lin_ms@1']:.2f} ms, lin(1024) {f['lin_ms@1024']:.2f} ms, decode B32/"
            f"ctx1100 {f['decode_ms@B32_ctx1100']:.2f} ms, prefill 1000 "
            f"{f['prefill_ms@1000']:.1f} ms, KV {f['kv_capacity_tokens']} tokens")


def lin_at(data: dict[str, Any], n: int) -> float:
    """lin(n) of a profile dict (for reports)."""
    lin = data["step_model"]["lin"]
    return float(np.interp(n, lin["x_tokens"], lin["y_ms"]))
