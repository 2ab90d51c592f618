"""Descriptive statistics of a request stream: rates, burstiness, lengths, prefix reuse.

Pure functions over a ``Workload``, so they describe a replayed trace and a synthetic workload
(a twin) alike. Definitions (``arrival_s`` are offsets from the first request):

* span: last arrival minus first; mean rate: ``(rows - 1) / span``, the inverse of the mean
  inter-arrival time;
* peak rate over ``w``-second windows: the largest request count in the aligned windows
  ``[k w, (k + 1) w)`` counted from the first request, over ``w``; only whole windows inside
  the span count (``nan`` when there is none);
* inter-arrival CV: standard deviation over mean of the gaps between consecutive requests;
* index of dispersion at ``w`` seconds: variance over mean of the request counts of the whole
  aligned ``w``-second windows (1 for Poisson, above 1 for bursty traffic; ``nan`` with fewer
  than two windows);
* length summaries: mean, p50, p90, p99 (numpy's linear interpolation) and max;
* length correlation: Spearman's rank correlation of prompt and output lengths (average ranks
  for ties; ``nan`` with fewer than 3 requests or a constant column);
* bursts: maximal runs of arrivals whose consecutive gaps are at most ``BURST_GAP_S`` (5 ms);
  ``share``: the fraction of requests in runs of 2 or more, ``mean_size``: the mean size of
  those runs (``nan`` without one) (sub-second structure a 1-s rate profile cannot see);
* timestamp rounding: the grid the arrival offsets lie on (the greatest common divisor of
  the offsets in whole microseconds; ``None`` when finer than ``MIN_GRID_S``, i.e. continuous
  timestamps), and the share of requests arriving at exactly the same instant as another. A
  coarse grid (BurstGPT: 1 s) makes replications of a replay identical unless
  ``workload.trace.jitter_within_s`` (a width, or ``auto`` for this grid) spreads arrivals;
* prefix reuse, for workloads whose prompts carry shareable segments (a trace with block
  hashes): each prompt is cut into ``block_tokens`` blocks (the last may be partial), a block's
  id is that of its content and everything before it, and a block is *reused* when its id was
  seen earlier (in arrival order). ``shared`` is the fraction of all prompt blocks reused with
  one infinite cache shared by every request: the upper bound of any routing. ``random`` is
  the fraction reused when each request goes to one of ``nodes`` nodes uniformly at random,
  each node an infinite cache of its own (mean over ``seeds`` seeded assignments).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.rng import stream
from sim.workload.base import OFFSET_BITS, Workload

#: Window widths of the peak-rate and dispersion figures, seconds.
PEAK_WINDOWS_S = (60.0, 10.0)
DISPERSION_WINDOWS_S = (1.0, 10.0, 60.0)
#: Largest gap between consecutive arrivals of one burst, seconds.
BURST_GAP_S = 0.005
#: Finest timestamp grid reported as rounding, seconds (finer is taken as continuous).
MIN_GRID_S = 1e-3
#: What ``trace stats`` says about a grid; formatted with the grid in seconds.
JITTER_HINT = ("timestamps lie on a {grid:g}-s grid: replications of a replay are identical "
               "unless workload.trace.jitter_within_s spreads arrivals (auto or {grid:g})")


@dataclass(frozen=True, slots=True)
class LengthSummary:
    """Mean and percentiles of a token-length column, tokens."""

    mean: float
    p50: float
    p90: float
    p99: float
    max: float


@dataclass(frozen=True, slots=True)
class PrefixReuse:
    """Prefix-reuse bounds (fractions of prompt blocks; see the module docstring)."""

    shared: float
    random: float
    nodes: int
    seeds: int
    block_tokens: int


@dataclass(frozen=True, slots=True)
class Bursts:
    """Runs of near-simultaneous arrivals (see the module docstring)."""

    share: float
    mean_size: float
    gap_s: float


@dataclass(frozen=True, slots=True)
class TimestampRounding:
    """The grid arrival offsets lie on (``None``: continuous) and the share of requests that
    arrive at the same instant as another (see the module docstring)."""

    grid_s: float | None
    simultaneous_share: float
    hint: str


@dataclass(frozen=True, slots=True)
class TraceStats:
    """The statistics ``simlb trace stats`` reports; ``to_dict`` gives them as JSON types."""

    rows: int
    span_s: float
    mean_rate_rps: float
    peak_rate_rps: dict[str, float]
    interarrival_cv: float
    index_of_dispersion: dict[str, float]
    prompt_tokens: LengthSummary
    output_tokens: LengthSummary
    prefix_reuse: PrefixReuse | None
    timestamp_rounding: TimestampRounding | None = None
    bursts: Bursts | None = None
    length_correlation: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (``nan`` kept as float('nan'))."""
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, float]:
        """The figures as one flat dict (``{"prompt_tokens.p50": ...}``), parameters left out.

        Used to compare a trace with its synthetic twin figure by figure.
        """
        out: dict[str, float] = {}
        for key, value in self.to_dict().items():
            if key == "timestamp_rounding":
                continue  # a property of the file's clock, not of the traffic
            if isinstance(value, dict):
                out.update({f"{key}.{k}": v for k, v in value.items()
                            if k not in ("nodes", "seeds", "block_tokens", "gap_s")})
            elif value is not None:
                out[key] = value
        return out


def _label(window_s: float) -> str:
    return f"{window_s:g}s"


def window_counts(arrival_s: np.ndarray, window_s: float) -> np.ndarray:
    """Request counts of the whole aligned ``window_s`` windows from the first arrival."""
    if arrival_s.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    offset = arrival_s - arrival_s[0]
    whole = math.floor(float(offset[-1]) / window_s)
    index = np.floor(offset / window_s).astype(np.int64)
    return np.bincount(index[index < whole], minlength=whole)


def timestamp_grid_s(offsets: np.ndarray) -> float | None:
    """The grid the arrival ``offsets`` (seconds from the first request) lie on: the greatest
    common divisor of the offsets in whole microseconds; ``None`` when it is below
    ``MIN_GRID_S`` or there is no second distinct time."""
    micro = np.unique(np.rint(np.asarray(offsets, dtype=np.float64) * 1e6).astype(np.int64))
    micro = micro[micro > 0]
    if micro.shape[0] == 0:
        return None
    grid = int(np.gcd.reduce(micro)) / 1e6
    return grid if grid >= MIN_GRID_S * (1 - 1e-9) else None


def timestamp_rounding(arrival_s: np.ndarray) -> TimestampRounding:
    """The timestamp grid, the share of simultaneous arrivals, and what to do about it."""
    n = arrival_s.shape[0]
    grid = timestamp_grid_s(arrival_s - arrival_s[0]) if n else None
    same = np.zeros(n, dtype=bool)
    if n > 1:
        tie = np.diff(arrival_s) == 0
        same[1:] |= tie
        same[:-1] |= tie
    share = float(same.mean()) if n else 0.0
    hint = JITTER_HINT.format(grid=grid) if grid is not None else (
        "timestamps finer than 1 ms: replications of a replay are identical (nothing to "
        "jitter); the report should show n=1")
    return TimestampRounding(grid_s=grid, simultaneous_share=share, hint=hint)


def bursts(arrival_s: np.ndarray, gap_s: float = BURST_GAP_S) -> Bursts:
    """Share of requests in bursts of 2 or more and the bursts' mean size."""
    n = arrival_s.shape[0]
    if n < 2:
        return Bursts(0.0, float("nan"), gap_s)
    starts = np.flatnonzero(np.concatenate(([True], np.diff(arrival_s) > gap_s)))
    sizes = np.diff(np.append(starts, n))
    many = sizes[sizes >= 2]
    return Bursts(float(many.sum() / n), float(many.mean()) if many.shape[0] else float("nan"),
                  gap_s)


def length_correlation(prompt: np.ndarray, output: np.ndarray) -> float:
    """Spearman's rank correlation of two length columns (``nan`` when undefined)."""
    if prompt.shape[0] < 3 or np.ptp(prompt) == 0 or np.ptp(output) == 0:
        return float("nan")
    from scipy.stats import rankdata

    return float(np.corrcoef(rankdata(prompt), rankdata(output))[0, 1])


def length_summary(values: np.ndarray) -> LengthSummary:
    """Mean, p50, p90, p99 and max of ``values`` (``nan`` when empty)."""
    if values.shape[0] == 0:
        nan = float("nan")
        return LengthSummary(nan, nan, nan, nan, nan)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return LengthSummary(float(values.mean()), float(p50), float(p90), float(p99),
                         float(values.max()))


def interarrival_cv(arrival_s: np.ndarray) -> float:
    """CV of the gaps between consecutive arrivals (``nan`` with fewer than 2 gaps)."""
    gaps = np.diff(arrival_s)
    if gaps.shape[0] < 2 or gaps.mean() <= 0:
        return float("nan")
    return float(gaps.std() / gaps.mean())


def index_of_dispersion(arrival_s: np.ndarray, window_s: float) -> float:
    """Variance over mean of the whole-window counts (``nan`` with fewer than 2 windows)."""
    counts = window_counts(arrival_s, window_s)
    if counts.shape[0] < 2 or counts.mean() <= 0:
        return float("nan")
    return float(counts.var() / counts.mean())


def peak_rate(arrival_s: np.ndarray, window_s: float) -> float:
    """Largest whole-window count over ``window_s`` (``nan`` without a whole window)."""
    counts = window_counts(arrival_s, window_s)
    return float(counts.max()) / window_s if counts.shape[0] else float("nan")


def prompt_block_ids(w: Workload, block_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut every prompt into ``block_tokens`` blocks and identify them by content.

    Returns:
        ``(request, block_id)`` per block, in request order. ``block_id`` is
        ``key << OFFSET_BITS | end`` with ``key`` the segment holding the block's last token and
        ``end`` that token's end offset in it (a chained id: the key implies all earlier
        tokens), or ``-1`` when some token up to the block's end is in an unshareable segment.
    """
    n = len(w)
    prompt = w.prompt_tokens
    blocks = -(-prompt // block_tokens)
    request = np.repeat(np.arange(n, dtype=np.int64), blocks)
    first_block = np.zeros(n, dtype=np.int64)
    np.cumsum(blocks[:-1], out=first_block[1:])
    j = np.arange(request.shape[0], dtype=np.int64) - first_block[request]
    token_start = np.zeros(n, dtype=np.int64)
    np.cumsum(prompt[:-1], out=token_start[1:])
    last_token = token_start[request] + np.minimum((j + 1) * block_tokens, prompt[request]) - 1
    seg_start = np.zeros(w.seg_len.shape[0], dtype=np.int64)
    np.cumsum(w.seg_len[:-1], out=seg_start[1:])
    seg = np.searchsorted(seg_start, last_token, side="right") - 1
    unkeyed = np.where(w.seg_key < 0, np.arange(w.seg_key.shape[0]), w.seg_key.shape[0])
    seg_counts = np.diff(w.seg_ptr)
    first_unkeyed = (np.minimum.reduceat(unkeyed, w.seg_ptr[:-1]) if n
                     else np.zeros(0, np.int64))
    first_unkeyed = np.where(seg_counts > 0, first_unkeyed, w.seg_ptr[1:])
    shareable = seg < first_unkeyed[request]
    end = last_token - seg_start[seg] + 1
    block_id = np.where(shareable, (w.seg_key[seg] << OFFSET_BITS) | end, -1)
    return request, block_id


def prefix_reuse(w: Workload, *, block_tokens: int = 512, nodes: int = 8,
                 seeds: int = 5) -> PrefixReuse | None:
    """Prefix-reuse bounds of ``w`` (module docstring); ``None`` when nothing is shareable."""
    if len(w) == 0 or not np.any(w.seg_key >= 0):
        return None
    request, block_id = prompt_block_ids(w, block_tokens)
    total = block_id.shape[0]
    keyed = block_id >= 0
    ids = block_id[keyed]
    shared = (ids.shape[0] - np.unique(ids).shape[0]) / total
    random = []
    for seed in range(seeds):
        node = stream(seed, "stats", "random_routing").integers(nodes, size=len(w))[request]
        node = node[keyed]
        order = np.lexsort((ids, node))
        new = np.ones(ids.shape[0], dtype=bool)
        new[1:] = (np.diff(node[order]) != 0) | (np.diff(ids[order]) != 0)
        random.append((ids.shape[0] - int(new.sum())) / total)
    return PrefixReuse(shared=float(shared), random=float(np.mean(random)), nodes=nodes,
                       seeds=seeds, block_tokens=block_tokens)


def trace_stats(w: Workload, *, nodes: int = 8, seeds: int = 5,
                block_tokens: int = 512) -> TraceStats:
    """Compute every statistic of ``w`` (see the module docstring for the definitions)."""
    t = w.arrival_s
    n = len(w)
    span = float(t[-1] - t[0]) if n else 0.0
    return TraceStats(
        rows=n, span_s=span,
        mean_rate_rps=(n - 1) / span if n > 1 and span > 0 else float("nan"),
        peak_rate_rps={_label(x): peak_rate(t, x) for x in PEAK_WINDOWS_S},
        interarrival_cv=interarrival_cv(t),
        index_of_dispersion={_label(x): index_of_dispersion(t, x)
                             for x in DISPERSION_WINDOWS_S},
        prompt_tokens=length_summary(w.prompt_tokens),
        output_tokens=length_summary(w.output_tokens),
        prefix_reuse=prefix_reuse(w, block_tokens=block_tokens, nodes=nodes, seeds=seeds),
        timestamp_rounding=timestamp_rounding(t), bursts=bursts(t),
        length_correlation=length_correlation(w.prompt_tokens, w.output_tokens))
