"""The GPU profiler of simlb: measure a cost profile on this machine (``docs/profiling.md``).

Modules: ``shapes`` (model shapes), ``model`` (functional Llama, step inputs, float64 gate),
``grid`` (the measurement grid), ``bench`` (timers, device facts), ``kv`` (vLLM's KV sizing),
``fit`` (step model from raw samples), ``check`` (comparisons), ``cli`` (``simlb profile``).
``measure_profile`` below runs one measurement session. The package imports only the
standard library, numpy, scipy, pyyaml, click, pandas (through ``sim.calibration.vidur``) and
torch, never pydantic or SimPy, so ``python -m sim.profile`` runs on bare GPU machines; this
``__init__`` imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import sim


def _sdpa_context(torch: Any, cuda: bool) -> Any:
    """On CUDA, allow only FlashAttention, so a fallback to the math kernel (5-50x slower,
    profiling.md §5.3) fails loudly instead of producing a wrong profile."""
    if not cuda:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION])


def _gate(m: Any, seed: int, cuda: bool) -> dict[str, Any]:
    """The float64 correctness gate; on CUDA it also picks the prefix-attention call.

    ``causal_lower_right`` is tried first; if FlashAttention refuses it or it fails the gate,
    ``is_causal`` under the flash backend (bottom-right aligned) is tried (profiling.md §5.4
    lists this as a device check). The chosen mode is recorded.

    Raises:
        ProfileError: no mode passes, or flash attention is unavailable.
    """
    from sim.errors import ProfileError
    from sim.profile.model import check_correctness

    failures = []
    for mode in ("lower_right", "flash_causal") if cuda else ("lower_right",):
        m.prefix_mode = mode
        try:
            errs = check_correctness(m, seed)
        except (RuntimeError, ProfileError) as exc:
            failures.append(f"{mode}: {str(exc).splitlines()[0]}")
            continue
        return {"rel_err_vs_float64": {k: float(f"{v:.3g}") for k, v in errs.items()},
                "prefix_attention": mode, "rejected": failures,
                "what": "SDPA prefill (fresh and lower-right causal after a prefix, GQA) and "
                        "decode (GQA), and layer 0's update on a mixed step, against float64 "
                        "references"}
    raise ProfileError("; ".join(failures) + (" (on CUDA only FlashAttention is allowed: the "
                                              "math fallback would make the profile 5-50x "
                                              "too slow)" if cuda else ""),
                       field="checks.correctness")


def _kv(torch: Any, m: Any, opts: Any, spec: Any, gen: Any) -> tuple[dict, dict]:
    """The ``kv_cache`` block (measured on CUDA, analytic on the CPU) and the pool size."""
    from sim.profile import bench, grid, kv, model

    shape, cuda = m.shape, opts.device == "cuda"
    name, nbytes = ("bfloat16", 2) if cuda else ("float32", 4)
    tokens, seqs = opts.max_num_batched_tokens, opts.max_num_seqs
    if cuda:
        def run() -> Any:
            inp = model.step_inputs(m, tokens, 0, 0, 0, None, gen, head=False)
            inp.pos = inp.pos % m.cos.shape[0]  # vLLM splits the tokens over many sequences
            inp.rows = torch.arange(max(0, tokens - seqs), tokens, device=opts.device)
            return model.run_step(m, inp)

        block = kv.measure_cuda(shape, run, m.weight_bytes(), opts.device, name, nbytes,
                                opts.block_size,
                                opts.gpu_memory_utilization, tokens, seqs)
        pool = kv.pool_tokens(block, int(torch.cuda.mem_get_info(opts.device)[0]))
    else:
        block = kv.cpu_stand_in(shape, m.weight_bytes(), name, nbytes, opts.block_size,
                                opts.gpu_memory_utilization, tokens, seqs,
                                bench.host_memory_bytes())
        pool = grid.pool_tokens_needed(spec, shape.max_position)
    details = {"pool_tokens": pool, "profile_run": {"tokens": tokens, "seqs": seqs},
               "analytic_capacity_tokens": kv.analytic_tokens(
                   shape, block["total_bytes_per_gpu"], opts.gpu_memory_utilization, nbytes,
                   opts.block_size),
               "analytic_rule": "profiling.md §3.2: weights = params x dtype bytes, 2 GiB "
                                "allowance for activations and overhead"}
    return block, details


def _hardware(info: dict[str, Any], ceil: dict[str, float]) -> dict[str, Any]:
    """The profile's ``hardware`` block from device facts and measured ceilings."""
    from sim.profile import bench

    sheet = bench.datasheet(info["name"]) if info["kind"] == "cuda" else None
    peak, bw = sheet or (ceil["gemm_flops_per_s"], ceil["copy_bytes_per_s"])
    where = ("peak bf16 FLOP/s and HBM bandwidth: NVIDIA datasheet (matched by name)" if sheet
             else "no datasheet figures: peak and bandwidth are the measured ceilings")
    if info["kind"] == "cpu":
        where = (f"CPU STAND-IN ({info['threads']} torch threads): 'peak bf16' is the measured "
                 f"float32 GEMM rate and bandwidth the measured copy rate")
    return {"gpu": info["name"] if info["kind"] == "cuda" else f"CPU {info['name']}",
            "tensor_parallel": 1, "memory_bytes_per_gpu": int(info["total_memory_bytes"]),
            "peak_bf16_flops_per_gpu": float(f"{peak:.4g}"),
            "hbm_bandwidth_bytes_per_s": float(f"{bw:.4g}"),
            "effective_bandwidth_bytes_per_s": float(f"{ceil['copy_bytes_per_s']:.4g}"),
            "effective_gemm_flops_per_gpu": float(f"{ceil['gemm_flops_per_s']:.4g}"),
            "notes": f"{where}; effective bandwidth: measured {int(ceil['copy_bytes']) >> 20} MiB "
                     f"copy (read + write bytes / s); effective GEMM: measured "
                     f"{ceil['gemm_n']}^3 GEMM; effective attention: 4 L H_q D / the fitted "
                     f"prefill pair coefficient"}


def _progress(echo: Callable[[str], None], t0: float) -> Callable[..., None]:
    def report(i: int, n: int, s: Any, t: Any) -> None:
        if (i + 1) % max(1, n // 20) == 0 or i + 1 == n:
            echo(f"[{i + 1:>4}/{n}] {time.perf_counter() - t0:6.1f} s  {s.set} P={s.P} K={s.K} "
                 f"B={s.B} C={s.C} S={s.S}: {t.median_ms:.4g} ms ({t.mode}, n={t.n})")
    return report


def _timer(opts: Any, cuda: bool) -> Any:
    """The timer of the run (CUDA graphs unless ``--no-cuda-graph``; CPU fallback)."""
    from sim.profile import bench

    if not cuda:
        return bench.CpuTimer(bench.CPU_TIMER)
    cfg = bench.CUDA_TIMER if opts.cuda_graph else replace(
        bench.CUDA_TIMER, method="cuda_events (eager)", cuda_graph=False)
    return bench.CudaTimer(opts.device, cfg)


def _metadata(torch: Any, shape: Any, opts: Any, spec: Any, shapes: list[Any],
              facts: dict[str, Any]) -> dict[str, Any]:
    """Provenance of a run: versions, device, clocks, options, grid, timing, durations."""
    from sim.profile import bench

    cuda, cfg = opts.device == "cuda", facts["timer"].cfg
    counts = {k: sum(s.set == k for s in shapes) for k in dict.fromkeys(s.set for s in shapes)}
    return {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "simlb_version": sim.__version__, "command": opts.command, "seed": opts.seed,
        "options": {"gpu_memory_utilization": opts.gpu_memory_utilization,
                    "max_num_batched_tokens": opts.max_num_batched_tokens,
                    "max_num_seqs": opts.max_num_seqs, "block_size": opts.block_size,
                    "threads": torch.get_num_threads()},
        "grid": {"name": spec.name, "counts": counts},
        "device": {**facts["info"], "clocks_before": facts["clocks"][0],
                   "clocks_after": facts["clocks"][1], "ceilings": facts["ceilings"]},
        "software": {**bench.software_info(), "cuda_graphs": cfg.cuda_graph,
                     "attention": {"impl": "torch scaled_dot_product_attention, enable_gqa",
                                   "backend": "flash only" if cuda else "default (cpu)",
                                   "paged": False}},
        "model": {**shape.as_dict(), "dtype": facts["dtype"],
                  "weights": "random normal(0, 0.02), norms 1"},
        "timing": cfg.as_dict(), "kv": facts["kv_details"], "duration_s": facts["durations"],
    }


MODEL_KEYS = ("name", "num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
              "intermediate_size", "vocab_size", "params", "dtype", "max_position")


def _prepare(torch: Any, shape: Any, opts: Any, facts: dict[str, Any],
             echo: Callable[[str], None]) -> tuple[Any, Any, list[Any]]:
    """Build the model, run the gate, measure ceilings and KV terms, fill the pool, plan.

    Fills ``facts`` (correctness, ceilings, kv, timer, grid); returns (model, pool, shapes).
    """
    import numpy as np

    from sim.profile import bench, grid, model

    cuda, t0 = opts.device == "cuda", time.perf_counter()
    dtype = torch.bfloat16 if cuda else torch.float32
    spec = facts["grid"] = grid.GRIDS[opts.grid or ("full" if cuda else "ci")]
    gen = facts["gen"] = torch.Generator(opts.device)
    gen.manual_seed(opts.seed)
    # RoPE rows for every position a shape uses: lin runs N tokens as one sequence, which can
    # exceed the context limit (N = 16384 > 8192 for Llama-3-8B)
    n_pos = max(shape.max_position, *spec.lin_n, opts.max_num_batched_tokens)
    m = model.build_model(shape, opts.device, dtype, opts.seed, n_pos)
    echo(f"{shape.name}: {shape.params / 1e9:.3g}B params, {m.weight_bytes() / 2**30:.2f} GiB "
         f"of {facts['dtype']} on {facts['info']['name']} ({time.perf_counter() - t0:.1f} s)")
    facts["correctness"] = _gate(m, opts.seed, cuda)
    facts["ceilings"] = c = bench.ceilings(opts.device, dtype)
    echo(f"gate ok ({facts['correctness']['prefix_attention']}); ceilings: copy "
         f"{c['copy_bytes_per_s'] / 1e12:.3g} TB/s, GEMM {c['gemm_flops_per_s'] / 1e12:.4g} "
         f"TFLOP/s")
    facts["kv"], facts["kv_details"] = _kv(torch, m, opts, spec, gen)
    pool_n = facts["kv_details"]["pool_tokens"]
    pool = model.new_pool(shape, pool_n, dtype, opts.device, gen)
    shapes = grid.plan(spec, pool_n, shape.max_position, np.random.default_rng(opts.seed))
    facts["timer"] = _timer(opts, cuda)
    echo(f"KV capacity {facts['kv']['capacity_tokens']} tokens; timing {len(shapes)} shapes "
         f"({spec.name} grid, {facts['timer'].cfg.method})")
    return m, pool, shapes


def measure_profile(torch: Any, shape: Any, opts: Any, echo: Callable[[str], None]) -> Any:
    """One session: build, gate, size the KV cache, time the shuffled grid.

    Args:
        torch: the imported torch module (checked for the device by the caller).
        shape: a ``shapes.LlamaShape``.
        opts: ``cli.RunOptions``.
        echo: progress output (one line per call).

    Returns:
        A ``fit.Measurement`` (samples, memory terms, provenance) ready for ``build_profile``.
    """
    from sim.profile import bench, check, fit, model

    t0, cuda = time.perf_counter(), opts.device == "cuda"
    torch.set_num_threads(opts.threads or (torch.get_num_threads() if cuda else 1))
    facts: dict[str, Any] = {"info": bench.device_info(opts.device),
                             "dtype": "bfloat16" if cuda else "float32"}
    with torch.inference_mode(), _sdpa_context(torch, cuda):
        m, pool, shapes = _prepare(torch, shape, opts, facts, echo)
        facts["clocks"], t1 = [bench.clocks_mhz()], time.perf_counter()
        results = bench.measure(shapes, lambda s: model.make_fn(m, s, pool, facts["gen"]),
                                facts["timer"], _progress(echo, t1))
        facts["clocks"].append(bench.clocks_mhz())
    facts["durations"] = {"setup": round(t1 - t0, 2),
                          "measuring": round(time.perf_counter() - t1, 2)}
    metadata = _metadata(torch, shape, opts, facts["grid"], shapes, facts)
    hardware = _hardware(facts["info"], facts["ceilings"])
    return fit.Measurement(
        name=f"{check.gpu_key(hardware['gpu'])}/{shape.name}",
        created=datetime.now(timezone.utc).date().isoformat(),
        tool=f"simlb {sim.__version__} profile (sim.profile)", hardware=hardware,
        model={k: metadata["model"][k] for k in MODEL_KEYS}, kv_cache=facts["kv"],
        correctness=facts["correctness"], metadata=metadata,
        samples=fit.samples_block(results, facts["timer"].cfg.statistic))
