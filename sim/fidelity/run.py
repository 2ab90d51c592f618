"""The measured run a reader produces: per-request columns, the engine's settings, notes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class EngineConfig:
    """The serving engine's settings during a measured run (vLLM names; None: not recorded).

    ``num_gpu_blocks`` is the KV cache the engine reported at start-up; the replay gives the
    simulated node exactly ``num_gpu_blocks * block_size`` tokens of KV cache.
    """

    engine: str = "vllm"
    version: str = ""
    model: str = ""
    gpu: str = ""
    tp: int = 1
    dp: int = 1
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    chunked_prefill: bool | None = None
    prefix_caching: bool | None = None
    block_size: int | None = None
    num_gpu_blocks: int | None = None
    max_model_len: int | None = None

    @property
    def kv_capacity_tokens(self) -> int | None:
        """KV cache size in tokens, or None when the run did not record its block count."""
        if self.num_gpu_blocks is None:
            return None
        return self.num_gpu_blocks * (self.block_size or 16)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)


@dataclass
class MeasuredRun:
    """One measured serving run, as columns (one row per request in the source file).

    Times are seconds; ``arrival_s`` starts at 0 (the first send). ``ok`` marks requests that
    completed: the others (failed, errored, missing stamps) are kept in the columns so that
    every input row is counted, but neither replayed nor scored. ``itl_s`` is the request's
    mean inter-token latency, NaN where the source lacks it.
    """

    name: str
    source: str
    layout: str
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    ttft_s: np.ndarray
    e2e_s: np.ndarray
    itl_s: np.ndarray
    ok: np.ndarray
    engine: EngineConfig
    notes: list[str] = field(default_factory=list)
    #: offered load (req/s): (n - 1) / (last - first arrival) unless the source knows better
    rate_rps: float = float("nan")
    #: per-request group label (tenant), or None
    group: np.ndarray | None = None
    #: anything else a reader found worth keeping (peer predictions, send lag...)
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.arrival_s.shape[0])

    @property
    def n_ok(self) -> int:
        """Requests that completed (the replayed and scored ones)."""
        return int(self.ok.sum())

    def head(self, n: int) -> MeasuredRun:
        """The run cut to its first ``n`` rows by arrival (for quick checks)."""
        if n >= len(self):
            return self
        cut = {k: getattr(self, k)[:n] for k in ("arrival_s", "prompt_tokens",
                                                  "output_tokens", "ttft_s", "e2e_s", "itl_s",
                                                  "ok")}
        group = None if self.group is None else self.group[:n]
        notes = [*self.notes, f"cut to the first {n} of {len(self)} requests (--max-requests)"]
        return MeasuredRun(self.name, self.source, self.layout, engine=self.engine, notes=notes,
                           rate_rps=self.rate_rps, group=group, extra=dict(self.extra), **cut)


def sort_by_arrival(run: MeasuredRun) -> MeasuredRun:
    """The run with its rows in arrival order (stable), arrivals shifted to start at 0."""
    order = np.argsort(run.arrival_s, kind="stable")
    cols = {k: getattr(run, k)[order] for k in ("arrival_s", "prompt_tokens", "output_tokens",
                                                 "ttft_s", "e2e_s", "itl_s", "ok")}
    if len(order):
        cols["arrival_s"] = cols["arrival_s"] - cols["arrival_s"][0]
    group = None if run.group is None else run.group[order]
    return MeasuredRun(run.name, run.source, run.layout, engine=run.engine, notes=run.notes,
                       rate_rps=run.rate_rps, group=group, extra=run.extra, **cols)


def derived_itl(ttft_s: np.ndarray, e2e_s: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
    """Mean inter-token latency per request, ``(E2E - TTFT) / (output - 1)``; NaN for 1 token."""
    with np.errstate(divide="ignore", invalid="ignore"):
        itl = (e2e_s - ttft_s) / (output_tokens - 1)
    return np.where(output_tokens > 1, itl, np.nan)


def measured_rate(arrival_s: np.ndarray) -> float:
    """``(n - 1) / span`` of the arrivals, NaN for fewer than two or a zero span."""
    if arrival_s.size < 2:
        return float("nan")
    span = float(arrival_s.max() - arrival_s.min())
    return (arrival_s.size - 1) / span if span > 0 else float("nan")


def in_system(arrival_s: np.ndarray, e2e_s: np.ndarray, at_s: np.ndarray) -> np.ndarray:
    """Requests sent and not finished at each time of ``at_s`` (arrival inclusive)."""
    start = np.sort(arrival_s)
    end = np.sort(arrival_s + e2e_s)
    return (np.searchsorted(start, at_s, side="right")
            - np.searchsorted(end, at_s, side="right")).astype(float)
