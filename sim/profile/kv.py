"""KV-cache capacity by vLLM's rule (``vllm/v1/worker/gpu_worker.py::determine_available_memory``).

vLLM (``Worker.determine_num_available_blocks``; v1 ``determine_available_memory``)::

    kv_budget = total * util - weights - peak_activation - non_torch
    blocks    = floor(kv_budget / (block_size * kv_bytes_per_token))
    tokens    = blocks * block_size,   kv_bytes_per_token = 2 L H_kv D dtype_bytes

On a GPU the terms are measured: ``weights`` = memory allocated before the profile run,
``peak_activation`` = the peak above it during one forward of ``max_num_batched_tokens``
tokens with logits for ``max_num_seqs`` rows, ``non_torch`` = ``(total - free) - reserved``
after ``empty_cache`` (CUDA context, cuBLAS workspaces). Every term is stored so the
simulator recomputes the capacity for another utilisation (``Profile.kv_capacity_tokens``).
On the CPU there is no device memory to measure: an analytic stand-in, clearly marked, uses
host RAM as the total.
"""

from __future__ import annotations

from typing import Any

from sim.model.profile import vllm_kv_blocks
from sim.profile.shapes import LlamaShape

GIB = 1 << 30
#: The analytic allowance for activations and overhead of profiling.md §3.2's table.
ANALYTIC_ALLOWANCE_BYTES = 2 * GIB


def kv_block(shape: LlamaShape, dtype: str, dtype_bytes: int, block_size: int, util: float,
             total: int, weights: int, peak: int, non_torch: int, method: str) -> dict[str, Any]:
    """The profile's ``kv_cache`` object; ``capacity_tokens`` by ``vllm_kv_blocks``, so it
    equals what the loader recomputes from the stored terms."""
    kv_bytes = shape.kv_bytes_per_token(dtype_bytes)
    blocks = vllm_kv_blocks(total, util, weights + peak + non_torch, kv_bytes, block_size)
    return {"dtype": dtype, "kv_bytes_per_token_per_gpu": kv_bytes, "block_size": block_size,
            "gpu_memory_utilization": util, "total_bytes_per_gpu": int(total),
            "weights_bytes_per_gpu": int(weights), "peak_activation_bytes_per_gpu": int(peak),
            "non_torch_bytes_per_gpu": int(non_torch), "capacity_tokens": blocks * block_size,
            "method": method}


def analytic_tokens(shape: LlamaShape, total: int, util: float, dtype_bytes: int,
                    block_size: int = 16) -> int:
    """profiling.md §3.2's analytic capacity: 2 GiB allowance for activations and overhead."""
    non_kv = shape.params * dtype_bytes + ANALYTIC_ALLOWANCE_BYTES
    return vllm_kv_blocks(total, util, non_kv, shape.kv_bytes_per_token(dtype_bytes),
                          block_size) * block_size


def activation_estimate(shape: LlamaShape, tokens: int, seqs: int, dtype_bytes: int) -> int:
    """Rough peak activation bytes of a forward of ``tokens`` tokens with ``seqs`` logits rows.

    Per token: residual, normed input, QKV, attention output, gate-up (2I) and SiLU x up (I)
    in the model dtype; per row: the logits in the model dtype and in fp32.
    """
    per_token = (3 * shape.hidden_size + shape.qkv_width
                 + shape.num_heads * shape.head_dim + 3 * shape.intermediate_size)
    return tokens * per_token * dtype_bytes + seqs * shape.vocab_size * (dtype_bytes + 4)


def cpu_stand_in(shape: LlamaShape, weights: int, dtype: str, dtype_bytes: int,
                 block_size: int, util: float, tokens: int, seqs: int,
                 total: int) -> dict[str, Any]:
    """The CPU's analytic ``kv_cache``: host RAM as total, real weight bytes, estimated
    activations, no non-torch term. NOT a measurement."""
    peak = activation_estimate(shape, tokens, seqs, dtype_bytes)
    method = ("ANALYTIC CPU STAND-IN, not measured: vLLM rule floor((total*util - weights - "
              "peak_activation - non_torch) / (block_size*kv_bytes_per_token)) * block_size "
              f"with host RAM as total, the model's weight bytes, an activation estimate for a "
              f"profile run of {tokens} tokens and {seqs} logits rows, and non_torch 0; set "
              f"kv_capacity_tokens in the scenario instead")
    return kv_block(shape, dtype, dtype_bytes, block_size, util, total, weights, peak, 0,
                    method)


def measure_cuda(shape: LlamaShape, run_profile: Any, weights: int, device: str, dtype: str,
                 dtype_bytes: int, block_size: int, util: float, tokens: int,
                 seqs: int) -> dict[str, Any]:
    """Measure the terms on the GPU around ``run_profile()`` (one forward, see module doc).

    Args:
        run_profile: callable running vLLM's dummy forward (weights already allocated).
        weights: bytes of the model's weights (what vLLM's model loading allocates).
        tokens, seqs: ``max_num_batched_tokens`` and ``max_num_seqs`` of the profile run.
    """
    import torch

    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    run_profile()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    non_torch = max(0, (total - free) - torch.cuda.memory_reserved(device))
    method = ("measured (vLLM rule, Worker.determine_num_available_blocks): weights = "
              "the model's parameter bytes; peak_activation = torch.cuda."
              f"max_memory_allocated() above memory_allocated() before one forward of "
              f"{tokens} tokens with "
              f"logits for {seqs} rows; non_torch = (total - free) - memory_reserved() after "
              "empty_cache (cudaMemGetInfo); no CUDA-graph pool allowance")
    return kv_block(shape, dtype, dtype_bytes, block_size, util, total, weights, peak,
                    non_torch, method)


def pool_tokens(kv: dict[str, Any], free_bytes: int, fraction: float = 0.8) -> int:
    """Tokens of the random KV pool for the decode grid: ``fraction`` of the KV budget, and
    at most what the free memory holds after a 4 GiB margin (timing buffers, activations)."""
    per_token = kv["kv_bytes_per_token_per_gpu"]
    budget = fraction * kv["capacity_tokens"]
    return max(1, int(min(budget, (free_bytes - 4 * GIB) / per_token)))
