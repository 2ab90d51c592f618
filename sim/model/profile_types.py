"""The in-memory form of a cost profile: frozen dataclasses, the schema's constants and
vLLM's KV-capacity rule.

``sim.model.profile`` reads and validates profile files into these objects (the file format is
described there and in ``docs/profile-format.md``). Standard library only, like the profiler
that writes profiles on GPU machines without pydantic or SimPy.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_ID = "simlb.profile/v1"
#: Bytes per element of the KV-cache dtypes the loader can check.
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "fp8": 1, "float8_e4m3fn": 1,
               "float8_e5m2": 1}
DECODE_FEATURES = ("const", "batch", "sum_ctx")
PREFILL_FEATURES = ("per_chunk", "chunk_tokens", "attn_pairs")


@dataclass(frozen=True, slots=True)
class DataFile:
    """One input file of a derived profile: path, sha256 and licence."""

    path: str
    sha256: str
    licence: str


@dataclass(frozen=True, slots=True)
class Source:
    """Provenance: derived from published data, or measured by the profiler."""

    kind: str
    method: str
    data: tuple[DataFile, ...]
    created: str
    tool: str


@dataclass(frozen=True, slots=True)
class Hardware:
    """The node: GPU kind, tensor-parallel degree and per-GPU ceilings (bytes, FLOP/s)."""

    gpu: str
    tensor_parallel: int
    memory_bytes_per_gpu: int
    peak_bf16_flops_per_gpu: float
    hbm_bandwidth_bytes_per_s: float
    effective_bandwidth_bytes_per_s: float
    effective_gemm_flops_per_gpu: float | None
    effective_attention_flops_per_gpu: float | None
    notes: str


@dataclass(frozen=True, slots=True)
class ModelShape:
    """Transformer shape (Llama-style decoder) and parameter count."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    params: int
    dtype: str
    max_position: int


@dataclass(frozen=True, slots=True)
class KvCache:
    """The per-GPU memory terms of vLLM's KV-cache sizing rule (bytes)."""

    dtype: str
    kv_bytes_per_token_per_gpu: int
    block_size: int
    gpu_memory_utilization: float
    total_bytes_per_gpu: int
    weights_bytes_per_gpu: int
    peak_activation_bytes_per_gpu: int
    non_torch_bytes_per_gpu: int
    capacity_tokens: int
    method: str


@dataclass(frozen=True, slots=True)
class Table:
    """A monotone piecewise-linear curve in ms with a linear tail above the grid."""

    x: tuple[int, ...]
    y_ms: tuple[float, ...]
    slope_ms: float
    max_factor: float

    @property
    def x_max(self) -> int:
        """Largest measured x (tokens or sequences)."""
        return self.x[-1]

    def at(self, x: float) -> float:
        """Evaluate the curve at ``x`` in ms (reference implementation; O(log n))."""
        xs, ys = self.x, self.y_ms
        if x <= xs[0]:
            return ys[0]
        if x >= xs[-1]:
            return ys[-1] + self.slope_ms * (x - xs[-1])
        hi = bisect.bisect_right(xs, x)
        return ys[hi - 1] + (x - xs[hi - 1]) * (ys[hi] - ys[hi - 1]) / (xs[hi] - xs[hi - 1])


@dataclass(frozen=True, slots=True)
class LinearTerm:
    """A non-negative linear model: ``sum(coef[i] * feature_i)`` in ms."""

    features: tuple[str, ...]
    coef: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class StepModel:
    """The step-time model of profiling.md §5.9 (all times in ms)."""

    lin: Table
    comm: Table | None
    head: Table
    attn_decode: LinearTerm
    attn_prefill: LinearTerm
    mixed_factor: float
    cpu_overhead_ms: float
    cpu_per_seq_ms: float = 0.0
    gpu_time_scale: float = 1.0
    api_latency_ms: float = 0.0
    api_latency_us_per_prompt_token: float = 0.0
    api_latency_us_per_active_request: float = 0.0


def vllm_kv_blocks(total_bytes: int, gpu_memory_utilization: float, non_kv_bytes: int,
                   kv_bytes_per_token: int, block_size: int) -> int:
    """KV blocks per GPU by vLLM's rule (``Worker.determine_num_available_blocks``).

    ``floor((total * util - non_kv) / (block_size * kv_bytes_per_token))``, at least 0, where
    ``non_kv`` = weights + peak activation + non-torch memory, all bytes per GPU.

    Raises:
        ValueError: ``util`` outside (0, 1] or ``block_size`` < 1.
    """
    if not 0.0 < gpu_memory_utilization <= 1.0 or block_size < 1:
        raise ValueError(f"need 0 < gpu_memory_utilization <= 1 and block_size >= 1, "
                         f"got {gpu_memory_utilization} and {block_size}")
    budget = total_bytes * gpu_memory_utilization - non_kv_bytes
    return max(0, math.floor(budget / (block_size * kv_bytes_per_token)))


@dataclass(frozen=True, slots=True)
class Profile:
    """A parsed, validated profile. ``path`` is the file it came from (None if from a dict)."""

    name: str
    source: Source
    hardware: Hardware
    model: ModelShape
    kv_cache: KvCache
    step_model: StepModel
    fit_quality: Mapping[str, Any]
    checks: Mapping[str, Any]
    path: Path | None = None

    def kv_capacity_blocks(
        self, gpu_memory_utilization: float | None = None, block_size: int | None = None
    ) -> int:
        """KV blocks of the node by vLLM's rule for another utilisation or block size.

        Args:
            gpu_memory_utilization: fraction of *total* GPU memory vLLM may use; None = stored.
            block_size: tokens per block; None = stored.

        Returns:
            ``floor(budget_per_gpu / (block_size * kv_bytes_per_token_per_gpu))``, at least 0.
        """
        kv = self.kv_cache
        return vllm_kv_blocks(
            kv.total_bytes_per_gpu,
            kv.gpu_memory_utilization if gpu_memory_utilization is None
            else gpu_memory_utilization,
            kv.weights_bytes_per_gpu + kv.peak_activation_bytes_per_gpu
            + kv.non_torch_bytes_per_gpu,
            kv.kv_bytes_per_token_per_gpu,
            kv.block_size if block_size is None else block_size)

    def kv_capacity_tokens(
        self, gpu_memory_utilization: float | None = None, block_size: int | None = None
    ) -> int:
        """KV capacity of the node in tokens (blocks x block size); see ``kv_capacity_blocks``."""
        bs = self.kv_cache.block_size if block_size is None else block_size
        return self.kv_capacity_blocks(gpu_memory_utilization, bs) * bs
