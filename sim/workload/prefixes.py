"""Shared prompt prefixes (system prompts, few-shot templates) and the segment layout helpers.

A request that carries prefix group ``g`` starts with the group's ``prefix_tokens`` tokens,
followed by its own content: segment key ``g`` (path-unique, since the prefix is always the first
segment and identical in every request of the group), then a unique segment (key ``-1``). The
prefix is *prepended*: such a request's prompt is ``prefix_tokens`` plus its sampled length.
Group keys are ``0 .. groups - 1``; other key users (sessions) start after them.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from sim.registry import Registry
from sim.spec import StrictModel
from sim.workload.lengths import MAX_TOKENS

prefixes: Registry[type[SharedPrefix]] = Registry("prefixes")


def concat_ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Return the concatenation of ``arange(s, s + c)`` for each pair, vectorised.

    >>> concat_ranges(np.array([5, 0]), np.array([2, 3])).tolist()
    [5, 6, 0, 1, 2]
    """
    counts = np.asarray(counts, dtype=np.int64)
    ends = np.cumsum(counts)
    shift = np.repeat(np.asarray(starts, dtype=np.int64) - (ends - counts), counts)
    return np.arange(int(ends[-1]) if ends.shape[0] else 0, dtype=np.int64) + shift


def take_requests(seg_ptr: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder a segment CSR by request: return ``(new_seg_ptr, segment_index)``.

    Request ``order[j]`` becomes request ``j``; ``seg_key[segment_index]`` (and likewise
    ``seg_len``) are the reordered segment columns.
    """
    counts = np.diff(seg_ptr)[order]
    new_ptr = np.zeros(order.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=new_ptr[1:])
    return new_ptr, concat_ranges(seg_ptr[:-1][order], counts)


def prefix_segments(group: np.ndarray, own_tokens: np.ndarray,
                    prefix_tokens: int | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lay out single-turn prompts: ``[group prefix (key g)] + own content (key -1)``.

    Args:
        group: int64 group of each request, ``-1`` for none; group ``g`` uses key ``g``.
        own_tokens: int64 sampled length of each request's own content, >= 1.
        prefix_tokens: length of every group prefix (one number, or one per request with a
            group).

    Returns:
        ``(seg_ptr, seg_key, seg_len)`` as described in ``sim.workload.base``.
    """
    n = group.shape[0]
    has = group >= 0
    counts = 1 + has.astype(np.int64)
    seg_ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=seg_ptr[1:])
    seg_key = np.full(int(seg_ptr[-1]), -1, dtype=np.int64)
    seg_len = np.empty(int(seg_ptr[-1]), dtype=np.int64)
    seg_key[seg_ptr[:-1][has]] = group[has]
    seg_len[seg_ptr[:-1][has]] = prefix_tokens
    seg_len[seg_ptr[1:] - 1] = own_tokens
    return seg_ptr, seg_key, seg_len


@prefixes.register("shared_prefix")
class SharedPrefix:
    """Each request carries, with probability ``fraction``, the prefix of one of ``groups`` groups.

    Group ``g`` (``0 .. groups - 1``) is chosen with Zipf probability proportional to
    ``(g + 1)**-zipf_s`` (``zipf_s = 0``: uniform). Expected extra prompt tokens per request:
    ``fraction * prefix_tokens``.
    """

    class Params(StrictModel):
        """Parameters of ``shared_prefix``."""

        groups: int = Field(ge=1, le=1 << 24, description="number of distinct prefixes")
        zipf_s: float = Field(default=0.0, ge=0, le=20, description="Zipf exponent of popularity")
        prefix_tokens: int = Field(ge=1, le=MAX_TOKENS, description="length of each prefix")
        fraction: float = Field(default=1.0, ge=0, le=1,
                                description="probability that a request carries a prefix")

    def __init__(self, params: Params) -> None:
        self.params = params
        weights = np.arange(1, params.groups + 1, dtype=np.float64) ** -params.zipf_s
        self._probs = weights / weights.sum()
        self._cdf = np.cumsum(self._probs)
        self._cdf[-1] = np.inf  # rounding in the sum can never run past the last group

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Return the int64 group of each of ``n`` requests, ``-1`` for no prefix.

        Always draws ``2 n`` uniforms (carry or not, then the group), so the stream does not
        depend on the outcomes.
        """
        carries = rng.random(n) < self.params.fraction
        group = np.searchsorted(self._cdf, rng.random(n), side="right").astype(np.int64)
        return np.where(carries, group, -1)

    def group_probabilities(self) -> np.ndarray:
        """``P(group = g | carries a prefix)`` for ``g = 0 .. groups - 1``."""
        return self._probs.copy()

    def mean_extra_tokens(self) -> float:
        """``fraction * prefix_tokens``: mean prompt tokens the prefix adds to a request."""
        return self.params.fraction * self.params.prefix_tokens

    @property
    def key_count(self) -> int:
        """Number of segment keys the groups use (keys ``0 .. groups - 1``)."""
        return self.params.groups
