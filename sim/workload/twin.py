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
  - ``poisson``: the mean rate only;
  and, when at least ``MIN_BURST_SHARE`` of the requests come in bursts (runs with gaps of at
  most 5 ms, ``sim.workload.trace_stats.bursts``), and at least twice the share Poisson
  arrivals at the mean rate give by chance, the model is fitted to the bursts' starts and
  wrapped in ``clustered`` (defined here): each start brings a burst whose size is drawn from
  the trace's burst sizes, its members spread uniformly over ``spread_s`` (twice the members'
  mean offset from the burst's start). Sub-second bursts are kept.
* prompt and output lengths: ``empirical`` tables of ``points`` quantiles plus tail quantiles
  down to the minimum and maximum, each weighted by the mass it stands for. When prompt and
  output are correlated (Spearman above ``MIN_CORRELATION`` in size), outputs are
  ``empirical_by_prompt`` (defined here): one table per decile of the whole prompt's length
  (group prefix included; the builder draws the output given it), so the dependence is kept.
* shared prefixes, when prompts carry shareable segments (a trace with block hashes):
  ``grouped_prefix`` (defined here, registered in the ``prefixes`` registry), one group per
  first block that two or more requests share, ``fraction`` = share of requests in such a
  group, each group's prefix length (whole blocks) drawn from the table of the groups' mean
  cached depths (so the shared-cache reuse matches), and a Zipf popularity whose exponent
  makes the ratio of random-routing to shared-cache reuse match (expected values for Poisson
  group counts). The prompt-length table then describes each request's own content (prompt
  minus its group's prefix for group members), so prompts keep their distribution. Group
  popularity and prefix length are drawn independently.
* conversations, from the prefix tree (``prefix_tree``: the prompts' blocks walked in arrival
  order through a trie): a request *continues* an earlier one when it holds all of that
  request's whole blocks and is longer (a conversation's next turn). When at least
  ``MIN_CHAIN_SHARE`` of the requests do, the twin can model them as ``multi_turn`` sessions
  (``fit_sessions``: the table of turns per conversation, the mean gap between a turn and the
  one it continues as think time; each turn's new message is its prompt less the parent's
  prompt and output), the arrival model fitted to the conversations' starts over the whole
  span, and ``grouped_prefix`` fitted to the first turns only, so shared roots (a system
  prompt every conversation opens with) stay shared roots instead of one group holding every
  request. ``fit_twin(conversations=None)`` (the default) draws a twin with and one without
  conversations and keeps the one with fewer ``twin_warnings`` (``choose_conversations``).
* ``max_output_tokens``: the largest output.

``twin_warnings`` compares the statistics of a trace and of its twin against ``TOLERANCES``
(prefix reuse, dispersion at 1 s, burst share, length correlation), the lines ``simlb trace
fit`` prints as warnings. ``fit_twin`` takes ``target_rate_rps`` and ``prompt_scale`` to fit
a rescaled twin (as the replay options of the same names).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field

from sim.spec import ComponentSpec, StrictModel, build_params
from sim.workload.arrivals import ArrivalProcess, arrivals
from sim.workload.base import Workload
from sim.workload.lengths import MAX_TOKENS, EmpiricalLength, LengthDistribution, lengths
from sim.workload.prefixes import SharedPrefix, prefixes, take_requests
from sim.workload.trace_stats import (
    BURST_GAP_S,
    TraceStats,
    length_correlation,
    prefix_reuse,
    prompt_block_ids,
    window_counts,
)

ARRIVAL_MODELS = ("profile", "mmpp2", "poisson")
#: At most this many pieces in a fitted rate profile.
MAX_PIECES = 3600
#: Bursts are modelled when at least this share of requests comes in bursts, and at least
#: ``CHANCE_FACTOR`` times the share Poisson arrivals at the mean rate would give.
MIN_BURST_SHARE = 0.05
CHANCE_FACTOR = 2.0
#: Outputs depend on the prompt when Spearman's correlation is at least this in size.
MIN_CORRELATION = 0.1
#: Prompt-length bins of ``empirical_by_prompt`` (deciles).
PROMPT_BINS = 10
#: How far a twin's statistic may miss the trace's: ("ratio", r) within a factor r, or
#: ("diff", d) within d; figures missing on either side are not compared.
TOLERANCES: dict[str, tuple[str, float]] = {
    "mean_rate_rps": ("ratio", 1.1),
    "index_of_dispersion.1s": ("ratio", 1.5),
    "index_of_dispersion.10s": ("ratio", 1.5),
    "bursts.share": ("diff", 0.1),
    "prompt_tokens.mean": ("ratio", 1.1),
    "output_tokens.mean": ("ratio", 1.1),
    "length_correlation": ("diff", 0.15),
    "prefix_reuse.shared": ("ratio", 1.25),
    "prefix_reuse.random": ("ratio", 1.25),
}


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


def fit_profile(arrival_s: np.ndarray, bucket_s: float,
                span_s: float | None = None) -> dict[str, Any]:
    """A ``piecewise`` rate profile over the span (``span_s`` from the first arrival when
    given, e.g. a trace's whole span for the starts of its conversations), pieces about
    ``bucket_s`` wide.

    Observed counts carry Poisson noise, and a twin drawn from them would carry it twice. The
    profile is therefore built top-down over nested levels (whole span, 1 h, 10 min, 1 min,
    10 s, 1 s, down to ``bucket_s``): at each level the deviation of a piece's count from its
    share of the parent's count is scaled by ``sqrt(1 - noise / observed)``, where
    ``observed`` is the variance of those deviations and ``noise`` the variance Poisson counts
    would give them. The twin's count variance then matches the trace's at every level.
    (With bursts the profile is fitted to every arrival in the same way and its rates divided
    by the mean burst size: Poisson noise, not compound noise, is taken out, as big bursts come
    in busy pieces; measured on the Azure code sample, this keeps the peaks and dispersion.)
    """
    t = arrival_s - arrival_s[0]
    span = float(t[-1]) if span_s is None else max(float(span_s), float(t[-1]))
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


@prefixes.register("grouped_prefix")  # type: ignore[arg-type]  # duck-types SharedPrefix
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


@arrivals.register("clustered")
class ClusteredArrivals(ArrivalProcess):
    """Bursts: a ``base`` process gives the bursts' starts; each burst has a size drawn from
    ``sizes`` (a ``lengths`` entry: 1, 2, ...), its first member at the start and the others
    uniform over ``[start, start + spread_s)``; members at or after the horizon are cut.

    Mean rate: the base's times the mean size (the few members cut at the horizon aside).
    """

    class Params(StrictModel):
        """Parameters of ``clustered``."""

        base: ComponentSpec = Field(description="process of the bursts' starts (arrivals "
                                                "registry)")
        sizes: ComponentSpec = Field(description="burst sizes (lengths registry), requests")
        spread_s: float = Field(default=0.0, ge=0, description="members spread over this, s")

    def __init__(self, params: Params) -> None:
        self.params = params
        cls, base = build_params(arrivals, params.base, "workload.arrivals.params.base")
        self.base: ArrivalProcess = cls(base)
        size_cls, sizes = build_params(lengths, params.sizes, "workload.arrivals.params.sizes")
        self.sizes: LengthDistribution = size_cls(sizes)

    def sample(self, rng: np.random.Generator, duration_s: float) -> np.ndarray:
        """Draw the starts, then each burst's size and its members' offsets."""
        starts = self.base.sample(rng, duration_s)
        size = self.sizes.sample(rng, starts.shape[0])
        times = np.repeat(starts, size)
        offset = rng.random(times.shape[0]) * self.params.spread_s
        first = np.zeros(starts.shape[0], dtype=np.int64)
        np.cumsum(size[:-1], out=first[1:])
        offset[first[size > 0]] = 0.0
        times = times + offset
        return np.sort(times[times < duration_s])

    @property
    def mean_rate_rps(self) -> float:
        """The base rate times the mean burst size."""
        return self.base.mean_rate_rps * self.sizes.mean()

    def expected_draws(self, duration_s: float) -> float:
        """The base's draws plus one size per burst."""
        return self.base.expected_draws(duration_s) + self.base.expected_count(duration_s)


@lengths.register("empirical_by_prompt")
class EmpiricalByPrompt(LengthDistribution):
    """Output lengths that depend on the prompt: one ``empirical`` table per bin of prompt
    length (bin ``i``: prompts below ``prompt_edges_tokens[i]`` and at or above the edge
    before). Drawn alone (``sample``), a mixture of the tables with weights ``bin_weights``;
    given the prompts (``sample_given``, as the workload builder calls it), from each prompt's
    bin."""

    class Params(StrictModel):
        """Parameters of ``empirical_by_prompt``."""

        prompt_edges_tokens: list[int] = Field(description="ascending upper bin edges (one "
                                                           "fewer than tables), tokens")
        tables: list[EmpiricalLength.Params] = Field(min_length=1, description="per bin")
        bin_weights: list[float] = Field(description="share of prompts in each bin")

    def __init__(self, params: Params) -> None:
        self.params = params
        k = len(params.tables)
        edges = params.prompt_edges_tokens
        if len(edges) != k - 1 or len(params.bin_weights) != k:
            raise ValueError(f"expected {k - 1} edges and {k} weights for {k} tables")
        if any(b <= a for a, b in itertools.pairwise(edges)):
            raise ValueError("prompt_edges_tokens must be strictly ascending")
        self._edges = np.asarray(edges, dtype=np.int64)
        self._tables = [EmpiricalLength(t) for t in params.tables]
        w = np.asarray(params.bin_weights, dtype=np.float64)
        if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError("bin_weights must be finite and >= 0 with a positive sum")
        self._weights = w / w.sum()

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Draw ``n`` outputs from the mixture of the tables."""
        return self._draw(rng, rng.choice(len(self._tables), size=n, p=self._weights))

    def sample_given(self, rng: np.random.Generator, prompt: np.ndarray) -> np.ndarray:
        """Draw one output per prompt, from the table of the prompt's bin."""
        return self._draw(rng, np.searchsorted(self._edges, prompt, side="right"))

    def _draw(self, rng: np.random.Generator, bins: np.ndarray) -> np.ndarray:
        out = np.empty(bins.shape[0], dtype=np.int64)
        draws = rng.random(bins.shape[0])
        for i, table in enumerate(self._tables):
            pick = bins == i
            at = np.searchsorted(table._cdf, draws[pick], side="right")  # type: ignore[call-overload,index]
            out[pick] = table._values[at]
        return out

    def mean(self) -> float:
        """The mixture's mean."""
        return float(sum(w * t.mean() for w, t in zip(self._weights, self._tables,
                                                     strict=True)))

    def variance(self) -> float:
        """The mixture's variance."""
        m = self.mean()
        return float(sum(w * (t.variance() + (t.mean() - m) ** 2)
                         for w, t in zip(self._weights, self._tables, strict=True)))

    def upper_bound(self) -> int:
        """The largest value of any table."""
        return max(t.upper_bound() for t in self._tables)


def fit_bursts(arrival_s: np.ndarray, gap_s: float = BURST_GAP_S,
               ) -> tuple[dict[str, Any] | None, float]:
    """Split arrivals into bursts (gaps of at most ``gap_s``): the ``empirical`` table of
    their sizes (``None`` when too few requests come in bursts of 2 or more; see the module
    docstring) and the members' spread, seconds."""
    n = arrival_s.shape[0]
    first = np.flatnonzero(np.concatenate(([True], np.diff(arrival_s) > gap_s)))
    size = np.diff(np.append(first, n))
    share = size[size >= 2].sum() / n
    rate = (n - 1) / float(arrival_s[-1] - arrival_s[0])
    chance = 1.0 - math.exp(-2.0 * rate * gap_s)  # Poisson at the mean rate
    if share < max(MIN_BURST_SHARE, CHANCE_FACTOR * chance):
        return None, 0.0
    offset = arrival_s - np.repeat(arrival_s[first], size)
    members = np.ones(n, dtype=bool)
    members[first] = False
    spread = 2.0 * float(offset[members].mean()) if members.any() else 0.0
    values, counts = np.unique(size, return_counts=True)
    table = {"name": "empirical", "params": {"values_tokens": [int(v) for v in values],
                                             "weights": [int(c) for c in counts]}}
    return table, _sig(spread)


def _mean_size(sizes: dict[str, Any] | None) -> float:
    """Mean burst size of an ``empirical`` size table (1 without bursts)."""
    if sizes is None:
        return 1.0
    v = np.asarray(sizes["params"]["values_tokens"], dtype=np.float64)
    w = np.asarray(sizes["params"]["weights"], dtype=np.float64)
    return float(w @ v / w.sum())


def _scale_rates(process: dict[str, Any], factor: float) -> dict[str, Any]:
    """``process`` (piecewise, mmpp2 or poisson) with every rate times ``factor``."""
    params = dict(process["params"])
    for key in ("rates_rps",):
        if key in params:
            params[key] = [_sig(r * factor) for r in params[key]]
    for key in ("rate_rps", "low_rps", "high_rps"):
        if key in params:
            params[key] = _sig(params[key] * factor)
    return {"name": process["name"], "params": params}


def fit_outputs(prompt: np.ndarray, output: np.ndarray, points: int = 200,
                prompt_table: dict[str, Any] | None = None) -> dict[str, Any]:
    """``empirical_by_prompt`` on prompt deciles when Spearman's correlation of ``prompt``
    and ``output`` is at least ``MIN_CORRELATION`` in size, else one ``empirical`` table.

    With ``prompt_table`` (the twin's ``empirical`` prompt table), each prompt is first
    replaced by the table's value of the same rank, so that the bins hold the same shares of
    the twin's prompts as of the trace's (a table value on a bin edge would move mass)."""
    rho = length_correlation(prompt, output)
    if prompt_table is not None:
        prompt = _same_rank(prompt, prompt_table["params"])
    edges = np.unique(np.quantile(prompt, np.arange(1, PROMPT_BINS) / PROMPT_BINS,
                                  method="inverted_cdf").astype(np.int64) + 1)
    if not (abs(rho) >= MIN_CORRELATION) or edges.shape[0] == 0:
        return fit_lengths(output, points)
    bins = np.searchsorted(edges, prompt, side="right")
    per_bin = max(points // PROMPT_BINS * 2, 20)
    tables, weights, kept = [], [], []
    for i in range(edges.shape[0] + 1):
        values = output[bins == i]
        if values.shape[0] == 0:
            continue
        tables.append(fit_lengths(values, per_bin)["params"])
        weights.append(_sig(values.shape[0] / output.shape[0]))
        kept.append(i)
    return {"name": "empirical_by_prompt", "params": {
        "prompt_edges_tokens": [int(edges[i - 1]) for i in kept[1:]],
        "tables": tables, "bin_weights": weights}}


def _same_rank(values: np.ndarray, table: dict[str, Any]) -> np.ndarray:
    """Each value replaced by the ``empirical`` table's value at its mid-rank quantile."""
    n = values.shape[0]
    order = np.argsort(values, kind="stable")
    u = np.empty(n)
    u[order] = (np.arange(n) + 0.5) / n
    table_values = np.asarray(table["values_tokens"], dtype=np.int64)
    cdf = np.cumsum(table["weights"], dtype=np.float64)
    return table_values[np.minimum(np.searchsorted(cdf / cdf[-1], u), n and len(cdf) - 1)]


def twin_warnings(trace: TraceStats, twin: TraceStats,
                  tolerances: dict[str, tuple[str, float]] | None = None) -> list[str]:
    """One line per statistic where ``twin`` misses ``trace`` by more than its tolerance."""
    a, b = trace.flat(), twin.flat()
    lines = []
    for key, (kind, limit) in (tolerances or TOLERANCES).items():
        x, y = a.get(key), b.get(key)
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            continue
        if kind == "ratio":
            if x <= 0 or y <= 0:
                miss = x != y
            else:
                miss = max(y / x, x / y) > limit
            how = f"{y / x:.3g}x the trace's" if x > 0 else "vs the trace's"
            want = f"within {limit:g}x"
        else:
            miss = abs(y - x) > limit
            how, want = f"off by {y - x:+.3g} from the trace's", f"within {limit:g}"
        if miss:
            lines.append(f"twin's {key} {y:.4g} is {how} {x:.4g} (tolerance: {want})")
    return lines


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


#: Conversations are modelled (``multi_turn`` sessions over the prefix tree) when at least
#: this share of requests continues an earlier request.
MIN_CHAIN_SHARE = 0.1


@dataclass(frozen=True)
class PrefixTree:
    """The prefix tree of a request stream's prompt blocks (``prefix_tree``).

    Attributes:
        depth: per request, the leading blocks an earlier request had (the shared-cache hit
            depth, in blocks).
        parent: per request, the latest earlier request holding its deepest shared block
            (``-1`` when no block is shared).
        chain: per request, whether it continues ``parent``: it holds all of the parent's
            whole blocks (a conversation's next turn).
        session: per request, its conversation: the first request of its chain.
        turn: per request, its turn in the conversation (0 for the first).
    """

    depth: np.ndarray
    parent: np.ndarray
    chain: np.ndarray
    session: np.ndarray
    turn: np.ndarray

    def figures(self) -> dict[str, float]:
        """Shares of requests that start a new root (no shared block), branch off a shared
        prefix, or continue a conversation; conversations, their mean and largest turn
        count, and the share of continued requests continued more than once (branching)."""
        n = self.depth.shape[0]
        if n == 0:
            return {}
        chained = self.parent[self.chain]
        counts = np.bincount(chained, minlength=n) if chained.shape[0] else np.zeros(n, int)
        turns = np.bincount(self.session, minlength=n)
        turns = turns[turns > 0]
        continued = counts > 0
        return {"root_share": float((self.depth == 0).mean()),
                "branch_share": float(((self.depth > 0) & ~self.chain).mean()),
                "chain_share": float(self.chain.mean()),
                "conversations": int(turns.shape[0]), "mean_turns": float(turns.mean()),
                "max_turns": int(turns.max()),
                "branching": float((counts[continued] > 1).mean()) if continued.any() else 0.0}


def prefix_tree(w: Workload, block_tokens: int) -> PrefixTree:
    """Walk the prompts' blocks in arrival order through a trie (block ids are chained, so
    equal ids mean equal prefixes): each request's shared depth, the request it shares it
    with last, and whether it continues that request (``PrefixTree``)."""
    n = len(w)
    request, block_id = prompt_block_ids(w, block_tokens)
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(request, minlength=n), out=ptr[1:])
    depth = np.zeros(n, dtype=np.int64)
    parent = np.full(n, -1, dtype=np.int64)
    last: dict[int, int] = {}
    ids = block_id.tolist()
    for r in range(n):
        row = ids[ptr[r]:ptr[r + 1]]
        d, p = 0, -1
        for b in row:
            q = last.get(b) if b >= 0 else None
            if q is None:
                break
            d, p = d + 1, q
        depth[r], parent[r] = d, p
        for b in row:
            if b >= 0:
                last[b] = r
    whole = w.prompt_tokens // block_tokens
    has = parent >= 0
    chain = has & (depth >= np.maximum(whole[np.maximum(parent, 0)], 1)) & (
        w.prompt_tokens > w.prompt_tokens[np.maximum(parent, 0)])
    session = np.arange(n, dtype=np.int64)
    turn = np.zeros(n, dtype=np.int64)
    for r in np.flatnonzero(chain).tolist():  # parents come first: arrival order
        session[r] = session[parent[r]]
        turn[r] = turn[parent[r]] + 1
    return PrefixTree(depth, parent, chain, session, turn)


def _subset(w: Workload, index: np.ndarray) -> Workload:
    """The requests ``index`` of ``w`` (in that order), with their segments."""
    import dataclasses

    seg_ptr, seg = take_requests(w.seg_ptr, index)
    columns = {name: getattr(w, name)[index] for name in (
        "arrival_s", "prompt_tokens", "output_tokens", "max_output_tokens", "session_id",
        "prefix_group", "output_key")}
    return dataclasses.replace(w, seg_ptr=seg_ptr, seg_key=w.seg_key[seg],
                               seg_len=w.seg_len[seg], extra={}, **columns)


def fit_sessions(w: Workload, tree: PrefixTree, points: int = 200,
                 ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """``multi_turn`` sessions from the tree's conversations: the turn counts' table and the
    mean gap between a turn and the one it continues; return it, the conversations' first
    requests and each request's new message (its own content for a first turn; for a later
    turn its prompt less the parent's prompt and output, at least 1 token)."""
    starts = np.flatnonzero(~tree.chain)
    turns = np.bincount(tree.session, minlength=len(w))[starts]
    later = np.flatnonzero(tree.chain)
    parent = tree.parent[later]
    think = float(np.mean(w.arrival_s[later] - w.arrival_s[parent])) if later.shape[0] else 1.0
    message = w.prompt_tokens.copy()
    message[later] = np.maximum(w.prompt_tokens[later] - w.prompt_tokens[parent]
                                - w.output_tokens[parent], 1)
    spec = {"name": "multi_turn", "params": {"turns": fit_lengths(turns, points),
                                             "think_time_s": _sig(max(think, 1e-3))}}
    return spec, starts, message


def _fit_arrivals(t: np.ndarray, arrivals: str, bucket_s: float | None,
                  bursts: bool, span_s: float | None = None) -> dict[str, Any]:
    """The arrival model of times ``t`` (sorted, a positive span; over ``span_s`` from the
    first when given): the rate model, wrapped in ``clustered`` when the times come in
    sub-second bursts (module docstring)."""
    sizes, spread = fit_bursts(t) if bursts else (None, 0.0)
    mean_size = _mean_size(sizes)
    span = float(t[-1] - t[0]) if span_s is None else max(float(span_s), float(t[-1] - t[0]))
    if arrivals == "profile":
        process = fit_profile(t, bucket_s or default_bucket_s(span), span)
    elif arrivals == "mmpp2":  # the span's end as a last time: whole windows up to it
        process = fit_mmpp2(np.append(t, t[0] + span) if span_s is not None else t)
    else:
        process = {"name": "poisson", "params": {"rate_rps": _sig((t.shape[0] - 1) / span)}}
    if sizes is not None:  # bursts start at the request rate over the mean burst size
        process = {"name": "clustered", "params": {
            "base": _scale_rates(process, 1.0 / mean_size), "sizes": sizes,
            "spread_s": spread}}
    return process


def fit_twin(w: Workload, *, arrivals: str = "profile", bucket_s: float | None = None,
             block_tokens: int = 512, nodes: int = 8, points: int = 200,
             bursts: bool = True, target_rate_rps: float | None = None,
             prompt_scale: float | None = None,
             conversations: bool | None = None) -> dict[str, Any]:
    """Fit a synthetic ``workload`` block to ``w`` (see the module docstring).

    Args:
        w: the request stream, at least two requests at different times.
        arrivals: ``profile``, ``mmpp2`` or ``poisson``.
        bucket_s: piece width of the profile (default: ``default_bucket_s`` of the span).
        block_tokens: block size of the prefix-reuse figures the prefix fit matches.
        nodes: node count of the random-routing reuse figure it matches.
        points: quantiles in each length table.
        bursts: model sub-second bursts (``clustered``) when the trace has them.
        target_rate_rps: fit the twin of the trace rescaled to this mean rate.
        prompt_scale: fit the twin of the trace with every prompt shrunk by this factor
            (prefix lengths included), as the replay option of that name.
        conversations: model the prefix tree's conversations as ``multi_turn`` sessions
            (when at least ``MIN_CHAIN_SHARE`` of the requests continue an earlier one);
            ``None``: chosen by measurement (``choose_conversations``).

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
    factor = 1.0
    if target_rate_rps is not None:
        factor = ((len(w) - 1) / float(t[-1] - t[0])) / target_rate_rps
        t = (t - t[0]) * factor
    tree = (prefix_tree(w, block_tokens) if conversations is not False
            and np.any(w.seg_key >= 0) else None)
    if conversations is None and tree is not None and tree.chain.mean() >= MIN_CHAIN_SHARE:
        options: dict[str, Any] = {"arrivals": arrivals, "bucket_s": bucket_s,
                                   "block_tokens": block_tokens, "nodes": nodes,
                                   "points": points, "bursts": bursts}
        if not choose_conversations(w, tree, **options):
            tree = None
    session_model = None
    if tree is not None and tree.chain.mean() >= MIN_CHAIN_SHARE:
        session_model, starts, message = fit_sessions(w, tree, points)
        params = session_model["params"]
        params["think_time_s"] = _sig(max(params["think_time_s"] * factor, 1e-3))
        t_starts = t[starts]
        if starts.shape[0] < 2 or t_starts[-1] <= t_starts[0]:
            session_model = None
    if session_model is not None:  # conversations start over the trace's whole span
        process = _fit_arrivals(t_starts, arrivals, bucket_s, bursts, float(t[-1] - t[0]))
        prefix_model, own = fit_prefixes(_subset(w, starts), block_tokens, nodes, points)
        message[starts] = own
        prompt = message
    else:
        process = _fit_arrivals(t, arrivals, bucket_s, bursts)
        prefix_model, own = fit_prefixes(w, block_tokens, nodes, points)
        prompt = w.prompt_tokens
    if prompt_scale is not None:
        own = np.maximum(np.rint(own * prompt_scale), 1).astype(np.int64)
        prompt = np.maximum(np.rint(prompt * prompt_scale), 1).astype(np.int64)
        if session_model is not None:
            own = prompt
        if prefix_model is not None:  # each value scaled, its weight kept
            table = prefix_model["params"]["prefix_tokens"]["params"]
            table["values_tokens"] = [max(round(v * prompt_scale), 1)
                                      for v in table["values_tokens"]]
    elif session_model is not None:
        own = prompt
    prompt_table = fit_lengths(own, points)
    block: dict[str, Any] = {
        "arrivals": process,
        "prompt_tokens": prompt_table,
        "output_tokens": fit_outputs(prompt, w.output_tokens, points,
                                     prompt_table if prefix_model is None
                                     or session_model is not None else None),
        "max_output_tokens": int(w.output_tokens.max()),
    }
    if prefix_model is not None:
        block["prefixes"] = prefix_model
    if session_model is not None:
        block["sessions"] = session_model
    return block


def choose_conversations(w: Workload, tree: PrefixTree, seed: int = 0,
                         **options: Any) -> bool:
    """Whether a twin with conversations (``multi_turn`` over the prefix tree) comes closer to
    ``w`` than one with prefix groups only: each is drawn once (``seed``) over the span and
    the one with fewer ``twin_warnings`` wins; conversations on a tie."""
    from sim.workload.spec import WorkloadSpec, build_workload
    from sim.workload.trace_stats import trace_stats

    kwargs = {"nodes": options.get("nodes", 8), "block_tokens": options.get("block_tokens", 512)}
    reference = trace_stats(w, **kwargs)
    span = float(w.arrival_s[-1] - w.arrival_s[0])
    misses = []
    for flag in (True, False):
        block = fit_twin(w, conversations=flag, **options)
        twin = build_workload(WorkloadSpec.model_validate(block), span, seed)
        misses.append(len(twin_warnings(reference, trace_stats(twin, **kwargs))))
    return misses[0] <= misses[1]
