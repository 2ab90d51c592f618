"""Synthetic twins: a synthetic ``workload`` block whose statistics match a request stream.

``fit_twin`` is a pure function of a ``Workload`` (a replayed trace, or any other stream) and
returns the block as plain data, ready for YAML. What it models:

* arrivals, one of
  - ``profile`` (default): a ``piecewise`` rate profile, one piece per ``bucket_s`` of the span
    (1 s by default), repeating with period = span; the observed counts are shrunk level by
    level toward their parents' so that the twin's count variance matches the trace's at
    every level instead of adding Poisson noise twice (``fit_profile``). It reproduces the
    mean rate, the rate profile, the peaks and the dispersion at and above the bucket width;
    inside a piece arrivals are Poisson;
  - ``mmpp2``: a two-state MMPP fitted on 10-second counts (two-means split into low and high
    windows; each state's rate is its mean count; sojourns are the mean run lengths);
  - ``poisson``: the mean rate only.
* prompt and output lengths: ``empirical`` tables of ``points`` quantiles plus tail quantiles
  down to the minimum and maximum, each weighted by the mass it stands for. The joint
  distribution of prompt and output is not kept (they are drawn independently).
* shared prefixes, when prompts carry shareable segments (a trace with block hashes):
  ``grouped_prefix`` (defined here, registered in the ``prefixes`` registry), one group per
  first block that two or more requests share, ``fraction`` = share of requests in such a
  group, each group's prefix length (whole blocks) drawn from the table of the groups' mean
  cached depths (so the shared-cache reuse matches), and a Zipf popularity whose exponent
  makes the ratio of random-routing to shared-cache reuse match (expected values for Poisson
  group counts). The prompt-length table then describes each request's own content (prompt
  minus its group's prefix for group members), so prompts keep their distribution. A
  conversation's growing history collapses into one prefix per group, and group popularity
  and prefix length are drawn independently.
* ``max_output_tokens``: the largest output.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from pydantic import Field

from sim.spec import ComponentSpec, StrictModel, build_params
from sim.workload.base import Workload
from sim.workload.lengths import MAX_TOKENS, LengthDistribution, lengths
from sim.workload.prefixes import SharedPrefix, prefixes
from sim.workload.trace_stats import prefix_reuse, prompt_block_ids, window_counts

ARRIVAL_MODELS = ("profile", "mmpp2", "poisson")
#: At most this many pieces in a fitted rate profile.
MAX_PIECES = 3600


def _sig(x: float, digits: int = 6) -> float:
    """Round to ``digits`` significant digits (keeps YAML short)."""
    return float(f"{x:.{digits}g}")


def default_bucket_s(span_s: float) -> float:
    """The smallest of 1, 2, 5, 10, 30, 60, ... seconds giving at most ``MAX_PIECES`` pieces."""
    for width in (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400):
        if span_s / width <= MAX_PIECES:
            return float(width)
    return float(math.ceil(span_s / MAX_PIECES))


#: Window widths of the profile's levels, seconds (each level nests in the next).
LEVEL_WIDTHS_S = (1.0, 10.0, 60.0, 600.0, 3600.0, 21600.0, 86400.0, 604800.0)


def _level_pieces(span_s: float, bucket_s: float) -> list[int]:
    """Piece counts from the coarsest level to the finest; each divides the next."""
    widths = [bucket_s] + [x for x in LEVEL_WIDTHS_S if bucket_s < x < span_s]
    pieces = [1]
    for width in reversed(widths):
        ratio = max(1, round(span_s / pieces[-1] / width))
        if ratio > 1:
            pieces.append(pieces[-1] * ratio)
    return pieces


def fit_profile(arrival_s: np.ndarray, bucket_s: float) -> dict[str, Any]:
    """A ``piecewise`` rate profile over the span, pieces about ``bucket_s`` wide.

    Observed counts carry Poisson noise, and a twin drawn from them would carry it twice. The
    profile is therefore built top-down over nested levels (whole span, 1 h, 10 min, 1 min,
    10 s, 1 s, down to ``bucket_s``): at each level the deviation of a piece's count from its
    share of the parent's count is scaled by ``sqrt(1 - noise / observed)``, where
    ``observed`` is the variance of those deviations and ``noise`` the variance Poisson counts
    would give them. The twin's count variance then matches the trace's at every level.
    """
    t = arrival_s - arrival_s[0]
    span = float(t[-1])
    levels = _level_pieces(span, bucket_s)
    finest = levels[-1]
    counts = np.bincount(np.minimum((t / (span / finest)).astype(np.int64), finest - 1),
                         minlength=finest).astype(np.float64)
    rates = np.array([t.shape[0] / span])
    parent = np.array([float(t.shape[0])])
    for k_parent, k in itertools.pairwise(levels):
        ratio = k // k_parent
        child = counts.reshape(k, -1).sum(axis=1)
        detail = child - np.repeat(parent, ratio) / ratio
        observed = float(np.mean(detail**2))
        noise = float(child.mean()) * (1.0 - 1.0 / ratio)
        keep = math.sqrt(max(0.0, 1.0 - noise / observed)) if observed > 0 else 0.0
        rates = np.repeat(rates, ratio) + keep * detail / (span / k)
        parent = child
    rates = np.maximum(rates, 0.0)
    rates *= t.shape[0] / (rates.sum() * span / rates.shape[0])
    return {"name": "piecewise",
            "params": {"period_s": _sig(span, 9), "rates_rps": [_sig(r) for r in rates]}}


def fit_mmpp2(arrival_s: np.ndarray, window_s: float = 10.0) -> dict[str, Any]:
    """A two-state MMPP from the counts of ``window_s`` windows (two-means split)."""
    counts = window_counts(arrival_s, window_s).astype(np.float64)
    if counts.shape[0] < 2 or counts.min() == counts.max():
        return fit_poisson(arrival_s)
    threshold = counts.mean()
    for _ in range(50):
        high = counts > threshold
        new = (counts[high].mean() + counts[~high].mean()) / 2.0
        if new == threshold:
            break
        threshold = new
    high = counts > threshold
    edges = np.flatnonzero(np.diff(high.astype(np.int8))) + 1
    runs = np.diff(np.concatenate(([0], edges, [counts.shape[0]])))
    state = high[np.concatenate(([0], edges))]
    return {"name": "mmpp2", "params": {
        "low_rps": _sig(counts[~high].mean() / window_s),
        "high_rps": _sig(counts[high].mean() / window_s),
        "mean_low_s": _sig(runs[~state].mean() * window_s),
        "mean_high_s": _sig(runs[state].mean() * window_s)}}


def fit_poisson(arrival_s: np.ndarray) -> dict[str, Any]:
    """A Poisson process at the mean rate ``(n - 1) / span``."""
    span = float(arrival_s[-1] - arrival_s[0])
    return {"name": "poisson", "params": {"rate_rps": _sig((arrival_s.shape[0] - 1) / span)}}


def _quantile_grid(n: int, points: int) -> np.ndarray:
    """Probabilities ``(i + 1/2) / points`` plus tails halving toward ``1/(2n)`` at both ends."""
    tail = []
    p = 0.5 / points
    while p / 2 > 0.5 / n:
        p /= 2
        tail.append(p)
    tail.append(0.5 / n)
    tails = np.asarray(tail)
    body = (np.arange(points) + 0.5) / points
    return np.unique(np.concatenate((tails, body, 1.0 - tails)))


def fit_lengths(values: np.ndarray, points: int = 200) -> dict[str, Any]:
    """An ``empirical`` table of quantiles, finer in the tails, weighted by the mass they stand for.

    The grid is ``points`` evenly spaced probabilities plus tail probabilities halving down to
    ``1 / (2 n)`` at both ends, so the table holds the minimum and the maximum and the twin's
    extreme values come close to the trace's. Each value's weight is the probability between
    the midpoints to its neighbours (in requests).
    """
    n = values.shape[0]
    probs = _quantile_grid(n, points)
    q = np.quantile(values, probs, method="inverted_cdf").astype(np.int64)
    edges = np.concatenate(([0.0], (probs[1:] + probs[:-1]) / 2.0, [1.0]))
    vals, inverse = np.unique(np.clip(q, 1, MAX_TOKENS), return_inverse=True)
    weights = np.bincount(inverse, weights=np.diff(edges) * n)
    return {"name": "empirical", "params": {"values_tokens": [int(v) for v in vals],
                                            "weights": [_sig(x) for x in weights]}}


def _zipf_probs(groups: int, s: float) -> np.ndarray:
    w = np.arange(1, groups + 1, dtype=np.float64) ** -s
    return w / w.sum()


def _expected_hits(carriers: float, probs: np.ndarray, nodes: int) -> tuple[float, float]:
    """Expected prefix hits (in requests) with a shared cache and with random routing.

    Group counts are Poisson(``carriers * p``): a shared cache misses once per group used, a
    node once per group it sees.
    """
    m = carriers * probs
    shared = float(np.sum(m - (1.0 - np.exp(-m))))
    random = float(np.sum(m - nodes * (1.0 - np.exp(-m / nodes))))
    return shared, random


@prefixes.register("grouped_prefix")
class GroupedPrefix:
    """``shared_prefix`` with a prefix length of its own for every group.

    Each request carries, with probability ``fraction``, the prefix of one of ``groups``
    groups, group ``g`` chosen with Zipf probability proportional to ``(g + 1)**-zipf_s``.
    Group ``g``'s prefix is ``L_g`` tokens long, the ``L_g`` drawn once per workload,
    independently of popularity, from ``prefix_tokens`` (any entry of the ``lengths``
    registry), on the stream ``(seed, "workload", "prefix_lengths")``. Expected extra prompt
    tokens per request: ``fraction * E[L]``.
    """

    class Params(StrictModel):
        """Parameters of ``grouped_prefix``."""

        groups: int = Field(ge=1, le=1 << 24, description="number of distinct prefixes")
        zipf_s: float = Field(default=0.0, ge=0, le=20, description="Zipf exponent")
        prefix_tokens: ComponentSpec = Field(description="distribution of the groups' prefix "
                                                         "lengths (lengths registry), tokens")
        fraction: float = Field(default=1.0, ge=0, le=1,
                                description="probability that a request carries a prefix")

    def __init__(self, params: Params, *, path: str = "workload.prefixes") -> None:
        self.params = params
        cls, length_params = build_params(lengths, params.prefix_tokens,
                                          f"{path}.params.prefix_tokens")
        self.lengths: LengthDistribution = cls(length_params)
        self._groups = SharedPrefix(SharedPrefix.Params(
            groups=params.groups, zipf_s=params.zipf_s, prefix_tokens=1,
            fraction=params.fraction))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Return the int64 group of each of ``n`` requests, ``-1`` for no prefix."""
        return self._groups.sample(rng, n)

    def group_tokens(self, rng: np.random.Generator) -> np.ndarray:
        """Draw the prefix length of every group, tokens."""
        return self.lengths.sample(rng, self.params.groups)

    def mean_extra_tokens(self) -> float:
        """``fraction * E[L]``: mean prompt tokens the prefix adds to a request."""
        return self.params.fraction * self.lengths.mean()

    @property
    def key_count(self) -> int:
        """Number of segment keys the groups use (keys ``0 .. groups - 1``)."""
        return self.params.groups


def _hit_blocks(w: Workload, block_tokens: int) -> np.ndarray:
    """Per request, how many of its prompt blocks an earlier request had (shared cache)."""
    request, block_id = prompt_block_ids(w, block_tokens)
    keyed = np.flatnonzero(block_id >= 0)
    _, first = np.unique(block_id[keyed], return_index=True)
    hit = np.zeros(block_id.shape[0], dtype=bool)
    hit[keyed] = True
    hit[keyed[first]] = False
    return np.bincount(request[hit], minlength=len(w))


def _ratio(carriers: float, probs: np.ndarray, nodes: int) -> float:
    shared, random = _expected_hits(carriers, probs, nodes)
    return random / shared if shared > 0 else 0.0


def fit_prefixes(w: Workload, block_tokens: int, nodes: int,
                 points: int = 200) -> tuple[dict[str, Any] | None, np.ndarray]:
    """Fit ``grouped_prefix``; return it (or ``None``) and each request's own-content length.

    Groups are the first blocks two or more requests share. Group ``g``'s prefix length is the
    mean number of blocks its later members find cached (whole blocks, at least one), so that
    the twin's shared-cache hits match the trace's; the Zipf exponent matches the ratio of
    random-routing to shared-cache reuse (expected values for Poisson group counts).
    """
    reuse = prefix_reuse(w, block_tokens=block_tokens, nodes=nodes)
    first = w.seg_key[w.seg_ptr[:-1]]
    keys, inverse, count = np.unique(first, return_inverse=True, return_counts=True)
    shared = (count >= 2) & (keys >= 0)
    if reuse is None or reuse.shared <= 0 or not shared.any():
        return None, w.prompt_tokens
    group = np.where(shared, np.cumsum(shared) - 1, -1)[inverse]
    member = group >= 0
    groups = int(shared.sum())
    hits = _hit_blocks(w, block_tokens)
    later_members = np.maximum(np.bincount(group[member], minlength=groups) - 1, 1)
    mean_hits = np.bincount(group[member], weights=hits[member], minlength=groups) / later_members
    group_tokens = np.minimum(np.maximum(np.rint(mean_hits), 1).astype(np.int64) * block_tokens,
                              MAX_TOKENS)
    own = np.where(member, np.maximum(w.prompt_tokens - group_tokens[np.maximum(group, 0)], 1),
                   w.prompt_tokens)
    carriers = float(member.sum())
    grid = np.linspace(0.0, 4.0, 401)
    ratios = np.array([_ratio(carriers, _zipf_probs(groups, s), nodes) for s in grid])
    zipf_s = float(grid[int(np.argmin(np.abs(ratios - reuse.random / reuse.shared)))])
    spec = {"name": "grouped_prefix", "params": {
        "groups": groups, "zipf_s": _sig(zipf_s, 3),
        "prefix_tokens": fit_lengths(group_tokens, points),
        "fraction": _sig(carriers / len(w))}}
    return spec, own


def fit_twin(w: Workload, *, arrivals: str = "profile", bucket_s: float | None = None,
             block_tokens: int = 512, nodes: int = 8, points: int = 200) -> dict[str, Any]:
    """Fit a synthetic ``workload`` block to ``w`` (see the module docstring).

    Args:
        w: the request stream, at least two requests at different times.
        arrivals: ``profile``, ``mmpp2`` or ``poisson``.
        bucket_s: piece width of the profile (default: ``default_bucket_s`` of the span).
        block_tokens: block size of the prefix-reuse figures the prefix fit matches.
        nodes: node count of the random-routing reuse figure it matches.
        points: quantiles in each length table.

    Returns:
        The workload block as plain data (``WorkloadSpec.model_validate`` accepts it).

    Raises:
        ValueError: fewer than two requests, a zero span, or an unknown ``arrivals`` model.
    """
    t = w.arrival_s
    if len(w) < 2 or t[-1] <= t[0]:
        raise ValueError("a twin needs at least two requests at different times")
    if arrivals not in ARRIVAL_MODELS:
        raise ValueError(f"unknown arrivals model {arrivals!r} (known: {ARRIVAL_MODELS})")
    if arrivals == "profile":
        process = fit_profile(t, bucket_s or default_bucket_s(float(t[-1] - t[0])))
    else:
        process = fit_mmpp2(t) if arrivals == "mmpp2" else fit_poisson(t)
    prefix_model, own = fit_prefixes(w, block_tokens, nodes, points)
    block: dict[str, Any] = {
        "arrivals": process,
        "prompt_tokens": fit_lengths(own, points),
        "output_tokens": fit_lengths(w.output_tokens, points),
        "max_output_tokens": int(w.output_tokens.max()),
    }
    if prefix_model is not None:
        block["prefixes"] = prefix_model
    return block
