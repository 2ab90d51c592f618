"""Iteration cost models: how long one batch iteration of a node takes.

Two registered models share one interface (``CostModel``):

* ``profile``: the step model of a calibrated profile (``docs/profiling.md``)::

      T = lin(N) + comm(N) + head(S)
          + [p0*n_chunks + p1*prefill_tokens + p2*prefill_pairs]   (if any prefill chunk)
          + [c0 + c1*B + c2*sum_ctx]                                (if any decode)
      T *= mixed_factor (only when a step holds both), T *= gpu_time_scale
      T += cpu_overhead_ms + cpu_per_seq_ms * S                    (host time)

  with ``N = prefill_tokens + B`` tokens and ``S = n_chunks + B`` logits rows (the sequences
  the step schedules). The host terms are the engine's CPU time per step that the GPU waits
  for: scheduling, input preparation, sampling bookkeeping and output processing, a fixed part
  and a part per scheduled sequence (``docs/model.md`` §4 gives the sources and the fitted
  values). ``gpu_time_scale`` is a bounded calibration factor on the GPU terms (1 by default).
  The curves are tabulated into dense per-integer lists when the model is built, so one
  evaluation is a few list lookups and multiplications (O(1)).
* ``linear``: a test double, ``step_s + prefill_token_s*P + decode_seq_s*B + ctx_token_s*sum_ctx``,
  for queueing validations where a node must behave like a textbook server.

``prefill_pairs`` is the causal attention work of the prefill chunks, the sum over chunks of
``c*k + c*(c+1)/2`` for a chunk of ``c`` tokens after ``k`` tokens already in the KV cache.
Every method returns plain Python floats (no numpy scalars) because the node calls them on its
hot path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import Field, model_validator

from sim.errors import ProfileError
from sim.model.profile import (
    API_LATENCY_KEYS,
    GPU_TIME_SCALE_BOUNDS,
    Profile,
    Table,
    load_profile,
)
from sim.registry import Registry
from sim.spec import StrictModel


class CostModel(Protocol):
    """What a node needs from a cost model (all times in seconds)."""

    peak_flops: float
    max_model_len: int | None
    description: str

    def step_s(self, prefill_tokens: int, n_chunks: int, prefill_pairs: int,
               decode_batch: int, decode_ctx_sum: int) -> float: ...

    def decode_terms(self, decode_batch: int) -> tuple[float, float]: ...

    def api_latency_s(self, prompt_tokens: np.ndarray, active: np.ndarray) -> np.ndarray: ...

    def is_extrapolated(self, n_tokens: Any, n_seqs: Any) -> Any: ...

    def check_limits(self, max_num_batched_tokens: int, max_num_seqs: int) -> None: ...

    def flops(self, n_tokens: Any, prefill_pairs: Any, decode_ctx_sum: Any) -> Any: ...

    def kv_capacity_tokens(self, gpu_memory_utilization: float | None,
                           block_size: int) -> int | None: ...


cost_models: Registry[type] = Registry("cost_model")

_MS = 1e-3  # seconds per millisecond


def _dense_s(tables: list[Table], x_max: int, scale: float = 1.0) -> list[float]:
    """Sum of ``tables`` in seconds (times ``scale``) at x = 0..x_max (0 at x = 0: an empty
    step costs nothing).

    Each table is evaluated with its own rule (``y[0]`` below the grid, linear inside, its
    linear tail above), so the dense list is exact for every integer it covers.
    """
    out = [0.0] * (x_max + 1)
    for table in tables:
        xs, ys, j = table.x, table.y_ms, 0
        for x in range(1, x_max + 1):
            while j + 1 < len(xs) and xs[j + 1] <= x:
                j += 1
            if x <= xs[0]:
                y = ys[0]
            elif j + 1 < len(xs):
                y = ys[j] + (x - xs[j]) * (ys[j + 1] - ys[j]) / (xs[j + 1] - xs[j])
            else:
                y = ys[-1] + table.slope_ms * (x - xs[-1])
            out[x] += y * _MS * scale
    return out


@cost_models.register("profile")
class ProfileCostModel:
    """Step times from a calibrated profile (``profiles/<gpu>/<model>.json`` or a path).

    Beyond the measured grids the curves continue linearly (``is_extrapolated`` says when);
    ``check_limits`` refuses engine limits beyond ``max_factor`` times the grid maxima.
    """

    class Params(StrictModel):
        """Parameters of the ``profile`` cost model."""

        profile: str = Field(description="shipped profile name (h100/llama-3-8b) or JSON path")
        cpu_overhead_ms: float | None = Field(
            None, ge=0, allow_inf_nan=False,
            description="engine CPU time per step in ms; None keeps the profile's value")
        mixed_factor: float | None = Field(
            None, gt=0, allow_inf_nan=False,
            description="multiplier for steps mixing prefill and decode; None = profile's")
        cpu_per_seq_ms: float | None = Field(
            None, ge=0, allow_inf_nan=False,
            description="engine CPU time per scheduled sequence per step in ms; None keeps "
                        "the profile's value")
        gpu_time_scale: float | None = Field(
            None, ge=GPU_TIME_SCALE_BOUNDS[0], le=GPU_TIME_SCALE_BOUNDS[1],
            allow_inf_nan=False,
            description="multiplier on the profile's GPU terms; None keeps the profile's")
        api_latency_ms: float | None = Field(
            None, ge=0, allow_inf_nan=False,
            description="time a request spends outside the engine core (HTTP, template, "
                        "tokenisation, streaming) in ms; None keeps the profile's")
        api_latency_us_per_prompt_token: float | None = Field(
            None, ge=0, allow_inf_nan=False,
            description="part of that time per prompt token in us; None keeps the profile's")
        api_latency_us_per_active_request: float | None = Field(
            None, ge=0, allow_inf_nan=False,
            description="part of that time per request the node holds when this one arrives, "
                        "in us; None keeps the profile's")

    def __init__(self, params: ProfileCostModel.Params, base_dir: Path | None = None) -> None:
        self._setup(load_profile(params.profile, base_dir), params)

    @classmethod
    def from_profile(cls, profile: Profile, cpu_overhead_ms: float | None = None,
                     mixed_factor: float | None = None, cpu_per_seq_ms: float | None = None,
                     gpu_time_scale: float | None = None) -> ProfileCostModel:
        """Build the model from an already parsed profile (None keeps the profile's value)."""
        self = cls.__new__(cls)
        self._setup(profile, cls.Params.model_construct(
            profile=profile.name, cpu_overhead_ms=cpu_overhead_ms, mixed_factor=mixed_factor,
            cpu_per_seq_ms=cpu_per_seq_ms, gpu_time_scale=gpu_time_scale,
            api_latency_ms=None, api_latency_us_per_prompt_token=None,
            api_latency_us_per_active_request=None))
        return self

    def _setup(self, profile: Profile, params: ProfileCostModel.Params) -> None:
        sm, model, hw = profile.step_model, profile.model, profile.hardware
        self.profile = profile
        scale = float(sm.gpu_time_scale if params.gpu_time_scale is None
                      else params.gpu_time_scale)
        ms = _MS * scale  # seconds per profile-millisecond of GPU time
        n_tables = [sm.lin] if sm.comm is None else [sm.lin, sm.comm]
        self._n_top = max(t.x_max for t in n_tables)
        self._n_dense = _dense_s(n_tables, self._n_top, scale)
        self._n_slope = sum(t.slope_ms for t in n_tables) * ms
        self._n_grid = min(t.x_max for t in n_tables)
        self._n_limit = min(t.max_factor * t.x_max for t in n_tables)
        self._s_top = sm.head.x_max
        self._s_dense = _dense_s([sm.head], self._s_top, scale)
        self._s_slope = sm.head.slope_ms * ms
        self._s_limit = sm.head.max_factor * sm.head.x_max
        self._c0, self._c1, self._c2 = (float(c) * ms for c in sm.attn_decode.coef)
        self._p0, self._p1, self._p2 = (float(c) * ms for c in sm.attn_prefill.coef)
        self._mixed = float(sm.mixed_factor if params.mixed_factor is None
                            else params.mixed_factor)
        cpu_ms = sm.cpu_overhead_ms if params.cpu_overhead_ms is None else params.cpu_overhead_ms
        seq_ms = sm.cpu_per_seq_ms if params.cpu_per_seq_ms is None else params.cpu_per_seq_ms
        self._cpu_s = float(cpu_ms) * _MS
        self._cpu_seq_s = float(seq_ms) * _MS
        api = [getattr(sm, key) if getattr(params, key) is None else getattr(params, key)
               for key in API_LATENCY_KEYS]
        self._api_s, self._api_token_s, self._api_active_s = (
            float(api[0]) * _MS, float(api[1]) * 1e-6, float(api[2]) * 1e-6)
        # Model FLOPs (profiling.md §4.2): 2 FLOPs per parameter per token for the GEMMs, and
        # 4*L*H_q*D per causal (query, key) pair for Q.K^T and P.V.
        self._flops_token = 2.0 * model.params
        self._flops_pair = 4.0 * model.num_layers * model.num_heads * model.head_dim
        self.peak_flops = float(hw.peak_bf16_flops_per_gpu * hw.tensor_parallel)
        self.max_model_len: int | None = model.max_position
        self.description = f"{profile.name} ({profile.source.kind}; {profile.source.tool})"

    def step_s(self, prefill_tokens: int, n_chunks: int, prefill_pairs: int,
               decode_batch: int, decode_ctx_sum: int) -> float:
        """Seconds for one iteration (see the module docstring for the formula)."""
        if not n_chunks:
            base_s, per_ctx_s = self.decode_terms(decode_batch)
            return base_s + per_ctx_s * decode_ctx_sum
        n = prefill_tokens + decode_batch
        s = n_chunks + decode_batch
        dense = self._n_dense
        t = dense[n] if n <= self._n_top else dense[-1] + self._n_slope * (n - self._n_top)
        dense = self._s_dense
        t += dense[s] if s <= self._s_top else dense[-1] + self._s_slope * (s - self._s_top)
        t += self._p0 * n_chunks + self._p1 * prefill_tokens + self._p2 * prefill_pairs
        if decode_batch:
            t += self._c0 + self._c1 * decode_batch + self._c2 * decode_ctx_sum
            t *= self._mixed
        return t + self._cpu_s + self._cpu_seq_s * s

    def decode_terms(self, decode_batch: int) -> tuple[float, float]:
        """``(base_s, per_ctx_token_s)``: a pure-decode step of B sequences costs
        ``base_s + per_ctx_token_s * sum_ctx`` seconds (exactly what ``step_s`` returns)."""
        b = decode_batch
        if not b:  # an empty step costs the CPU overhead only
            return self._cpu_s, 0.0
        dense = self._n_dense
        t = dense[b] if b <= self._n_top else dense[-1] + self._n_slope * (b - self._n_top)
        dense = self._s_dense
        t += dense[b] if b <= self._s_top else dense[-1] + self._s_slope * (b - self._s_top)
        return t + self._c0 + self._c1 * b + self._cpu_s + self._cpu_seq_s * b, self._c2

    def api_latency_s(self, prompt_tokens: np.ndarray, active: np.ndarray) -> np.ndarray:
        """Seconds each request spends outside the engine core (element-wise), given its
        prompt and the requests its node held when it arrived: the client sees its first
        token and its last one this much later than the engine makes them."""
        return self._api_s + self._api_token_s * prompt_tokens + self._api_active_s * active

    def is_extrapolated(self, n_tokens: Any, n_seqs: Any) -> Any:
        """True when the step lies beyond the measured lin/comm or head grid (element-wise
        for numpy arrays)."""
        return (n_tokens > self._n_grid) | (n_seqs > self._s_top)

    def check_limits(self, max_num_batched_tokens: int, max_num_seqs: int) -> None:
        """Refuse engine limits that allow steps beyond ``max_factor`` x the grid maxima.

        Raises:
            ProfileError: naming the profile file and the limit that is too large.
        """
        n_max = max(max_num_batched_tokens, max_num_seqs)
        src = str(self.profile.path or self.profile.name)
        if n_max > self._n_limit:
            raise ProfileError(
                f"max_num_batched_tokens={n_max} is beyond the {self._n_limit:g}-token limit "
                f"of this profile (max_factor x the measured grid maximum); re-profile with a "
                f"larger grid", source=src, field="step_model.lin")
        if max_num_seqs > self._s_limit:
            raise ProfileError(
                f"max_num_seqs={max_num_seqs} is beyond the {self._s_limit:g}-sequence limit "
                f"of this profile's LM-head table; re-profile with a larger grid",
                source=src, field="step_model.head")

    def flops(self, n_tokens: Any, prefill_pairs: Any, decode_ctx_sum: Any) -> Any:
        """Model FLOPs of a step: ``2*params*N + 4*L*H_q*D*(pairs + sum_ctx)`` (element-wise
        for numpy arrays)."""
        return self._flops_token * n_tokens + self._flops_pair * (prefill_pairs + decode_ctx_sum)

    def kv_capacity_tokens(self, gpu_memory_utilization: float | None,
                           block_size: int) -> int | None:
        """KV tokens of the node by vLLM's rule (``Profile.kv_capacity_tokens``)."""
        return self.profile.kv_capacity_tokens(gpu_memory_utilization, block_size)


@cost_models.register("linear")
class LinearCostModel:
    """Test double: a step costs ``step_s + prefill_token_s*P + decode_seq_s*B + ctx_token_s*C``.

    It has no KV capacity (the scenario must give one), no token limit and no grid, and it
    counts one "FLOP" per token so that MFU reads as tokens/s over ``peak_flops``.
    """

    class Params(StrictModel):
        """Parameters of the ``linear`` cost model (seconds; all >= 0, not all zero)."""

        step_s: float = Field(0.0, ge=0, allow_inf_nan=False, description="s per iteration")
        prefill_token_s: float = Field(0.0, ge=0, allow_inf_nan=False,
                                       description="s per prefill token")
        decode_seq_s: float = Field(0.0, ge=0, allow_inf_nan=False,
                                    description="s per decoding sequence")
        ctx_token_s: float = Field(0.0, ge=0, allow_inf_nan=False,
                                   description="s per context token of decoding sequences")
        peak_flops: float = Field(1.0, gt=0, allow_inf_nan=False,
                                  description="peak 'FLOP'/s (tokens/s) for MFU")

        @model_validator(mode="after")
        def _some_cost(self) -> LinearCostModel.Params:
            if not (self.step_s or self.prefill_token_s or self.decode_seq_s
                    or self.ctx_token_s):
                raise ValueError("at least one of step_s, prefill_token_s, decode_seq_s, "
                                 "ctx_token_s must be > 0")
            return self

    max_model_len: int | None = None

    def __init__(self, params: LinearCostModel.Params, base_dir: Path | None = None) -> None:
        del base_dir  # nothing to load
        self._base = float(params.step_s)
        self._prefill = float(params.prefill_token_s)
        self._seq = float(params.decode_seq_s)
        self._ctx = float(params.ctx_token_s)
        self.peak_flops = float(params.peak_flops)
        self.description = (f"linear(step_s={params.step_s:g}, prefill_token_s="
                            f"{params.prefill_token_s:g}, decode_seq_s={params.decode_seq_s:g},"
                            f" ctx_token_s={params.ctx_token_s:g})")

    def step_s(self, prefill_tokens: int, n_chunks: int, prefill_pairs: int,
               decode_batch: int, decode_ctx_sum: int) -> float:
        """Seconds for one iteration."""
        if not n_chunks and not prefill_tokens:
            base_s, per_ctx_s = self.decode_terms(decode_batch)
            return base_s + per_ctx_s * decode_ctx_sum
        return (self._base + self._prefill * prefill_tokens + self._seq * decode_batch
                + self._ctx * decode_ctx_sum)

    def decode_terms(self, decode_batch: int) -> tuple[float, float]:
        """``(step_s + decode_seq_s*B, ctx_token_s)``."""
        return self._base + self._seq * decode_batch, self._ctx

    def api_latency_s(self, prompt_tokens: np.ndarray, active: np.ndarray) -> np.ndarray:
        """None: the test double has no API front end (zeros)."""
        return np.zeros(np.shape(prompt_tokens))

    def is_extrapolated(self, n_tokens: Any, n_seqs: Any) -> Any:
        """Never: the model has no grid (element-wise for numpy arrays)."""
        return n_tokens < 0

    def check_limits(self, max_num_batched_tokens: int, max_num_seqs: int) -> None:
        """Accept any limits."""

    def flops(self, n_tokens: Any, prefill_pairs: Any, decode_ctx_sum: Any) -> Any:
        """One unit per token processed (element-wise for numpy arrays)."""
        return n_tokens * 1.0

    def kv_capacity_tokens(self, gpu_memory_utilization: float | None,
                           block_size: int) -> int | None:
        """None: the scenario must set the KV capacity."""
        return None
