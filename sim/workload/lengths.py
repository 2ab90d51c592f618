"""Token-length distributions: integer samples >= 1 with analytic moments.

Each distribution is registered by name in ``lengths`` and states ``mean()`` and ``variance()``
of the distribution it actually samples (rounding and clipping included) and
``upper_bound()`` (``None`` when unbounded). The registry also serves plain counts, such as the
number of turns of a session (``sim.workload.sessions``): the ``_tokens`` suffix of the
parameters then reads as "items".

Token values are at most ``MAX_TOKENS`` so that one segment fits the ``OFFSET_BITS`` offset field
of a KV block id (``sim.workload.base``).
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from sim.registry import Registry
from sim.spec import StrictModel
from sim.workload.base import OFFSET_BITS

lengths: Registry[type[LengthDistribution]] = Registry("lengths")

#: Largest token count a distribution may produce (one segment's offset must fit OFFSET_BITS).
MAX_TOKENS = (1 << OFFSET_BITS) - 1


def _clamp_exp(log_x: float, low: int, high: int) -> int:
    """Return ``round(exp(log_x))`` clamped to ``[low, high]``, without overflowing."""
    if log_x <= math.log(low):
        return low
    if log_x >= math.log(high):
        return high
    return min(max(round(math.exp(log_x)), low), high)


class LengthDistribution(abc.ABC):
    """An integer distribution on ``1, 2, ...``; subclasses define ``Params`` and the moments."""

    Params: ClassVar[type[StrictModel]]

    @abc.abstractmethod
    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Return ``n`` int64 samples, each >= 1."""

    @abc.abstractmethod
    def mean(self) -> float:
        """The analytic mean of the sampled distribution."""

    @abc.abstractmethod
    def variance(self) -> float:
        """The analytic variance of the sampled distribution."""

    @abc.abstractmethod
    def upper_bound(self) -> int | None:
        """The largest value ``sample`` can return, or ``None`` when unbounded."""


@lengths.register("fixed")
class FixedLength(LengthDistribution):
    """Always ``tokens``."""

    class Params(StrictModel):
        """Parameters of ``fixed``."""

        tokens: int = Field(ge=1, le=MAX_TOKENS, description="the length, tokens")

    def __init__(self, params: Params) -> None:
        self.params = params

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Return ``n`` copies of ``tokens`` (draws nothing from ``rng``)."""
        return np.full(n, self.params.tokens, dtype=np.int64)

    def mean(self) -> float:
        """``tokens``."""
        return float(self.params.tokens)

    def variance(self) -> float:
        """0."""
        return 0.0

    def upper_bound(self) -> int:
        """``tokens``."""
        return self.params.tokens


@lengths.register("uniform")
class UniformLength(LengthDistribution):
    """Discrete uniform on ``low_tokens .. high_tokens``, both inclusive.

    Mean ``(low + high) / 2``, variance ``((high - low + 1)**2 - 1) / 12``.
    """

    class Params(StrictModel):
        """Parameters of ``uniform``."""

        low_tokens: int = Field(ge=1, le=MAX_TOKENS, description="smallest value, inclusive")
        high_tokens: int = Field(ge=1, le=MAX_TOKENS, description="largest value, inclusive")

        @field_validator("high_tokens")
        @classmethod
        def _high_not_below_low(cls, value: int, info: ValidationInfo) -> int:
            low = info.data.get("low_tokens")
            if low is not None and value < low:
                raise ValueError(f"high_tokens must be >= low_tokens ({low})")
            return value

    def __init__(self, params: Params) -> None:
        self.params = params

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Return ``n`` uniform integers in ``[low_tokens, high_tokens]``."""
        p = self.params
        return rng.integers(p.low_tokens, p.high_tokens, size=n, endpoint=True, dtype=np.int64)

    def mean(self) -> float:
        """``(low + high) / 2``."""
        return (self.params.low_tokens + self.params.high_tokens) / 2.0

    def variance(self) -> float:
        """``((high - low + 1)**2 - 1) / 12``."""
        width = self.params.high_tokens - self.params.low_tokens + 1
        return (width**2 - 1) / 12.0

    def upper_bound(self) -> int:
        """``high_tokens``."""
        return self.params.high_tokens


@lengths.register("lognormal")
class LognormalLength(LengthDistribution):
    """``median * exp(sigma * Z)`` rounded to the nearest integer, then clipped to [min, max].

    The clip is explicit (``min_tokens``, ``max_tokens``) and part of the distribution: the mass
    below ``min + 1/2`` lands on ``min`` and the mass at or above ``max - 1/2`` on ``max``. The
    moments are exact sums over that discretised, clipped pmf,
    ``P(K = k) = Phi(z(k + 1/2)) - Phi(z(k - 1/2))`` with ``z(x) = (ln x - ln median) / sigma``,
    so ``mean()`` differs from the unclipped ``median * exp(sigma**2 / 2)`` whenever the clip
    bites.
    """

    class Params(StrictModel):
        """Parameters of ``lognormal``."""

        median_tokens: float = Field(gt=0, description="median before rounding, tokens")
        sigma: float = Field(gt=0, le=10, description="standard deviation of ln(length)")
        max_tokens: int = Field(ge=1, le=MAX_TOKENS, description="explicit upper clip, tokens")
        min_tokens: int = Field(default=1, ge=1, le=MAX_TOKENS, description="lower clip")

        @model_validator(mode="after")
        def _min_not_above_max(self) -> LognormalLength.Params:
            if self.min_tokens > self.max_tokens:
                raise ValueError(f"min_tokens ({self.min_tokens}) must be <= max_tokens "
                                 f"({self.max_tokens})")
            return self

    #: The pmf is summed within 12 standard deviations of the median: the normal tail beyond
    #: is below 2e-33, so even values up to MAX_TOKENS there move the mean by under 1e-25.
    _TAIL_Z = 12.0

    def __init__(self, params: Params) -> None:
        self.params = params
        self._support = np.arange(*self._support_range(), dtype=np.float64)
        self._pmf_cache: np.ndarray | None = None

    @property
    def _pmf(self) -> np.ndarray:
        """The clipped pmf, computed on first use (drawing samples needs none of it, so a run
        that never asks for a moment does not import scipy)."""
        if self._pmf_cache is None:
            self._pmf_cache = self._clipped_pmf()
        return self._pmf_cache

    def _support_range(self) -> tuple[int, int]:
        """Return ``[lo, hi + 1)``: the clip range, cut where the tails underflow to zero."""
        p = self.params
        reach = self._TAIL_Z * p.sigma
        lo = _clamp_exp(math.log(p.median_tokens) - reach, p.min_tokens, p.max_tokens)
        hi = _clamp_exp(math.log(p.median_tokens) + reach, lo, p.max_tokens)
        return lo, hi + 1

    def _clipped_pmf(self) -> np.ndarray:
        """Return ``P(K = k)`` for ``k`` in ``min..max``, from survival-function differences."""
        from scipy.special import ndtr  # 0.2 s of imports: only when a moment is asked for

        p = self.params
        edges = np.append(self._support - 0.5, self._support[-1] + 0.5)
        survival = ndtr(-(np.log(edges) - math.log(p.median_tokens)) / p.sigma)
        survival[0], survival[-1] = 1.0, 0.0
        return survival[:-1] - survival[1:]

    def pmf(self) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(values, probabilities)`` of the clipped pmf (tails beyond 12 sigma cut)."""
        return self._support.astype(np.int64), self._pmf.copy()

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Return ``n`` draws: lognormal, rounded half-to-even, clipped to [min, max]."""
        p = self.params
        raw = rng.lognormal(math.log(p.median_tokens), p.sigma, size=n)
        return np.clip(np.rint(raw), p.min_tokens, p.max_tokens).astype(np.int64)

    def mean(self) -> float:
        """``sum(k * P(K = k))`` over the clipped support."""
        return float(self._support @ self._pmf)

    def variance(self) -> float:
        """``sum((k - mean)**2 * P(K = k))`` over the clipped support."""
        return float(((self._support - self.mean()) ** 2) @ self._pmf)

    def upper_bound(self) -> int:
        """``max_tokens``."""
        return self.params.max_tokens


@lengths.register("empirical")
class EmpiricalLength(LengthDistribution):
    """Draw from ``values_tokens`` with probabilities proportional to ``weights`` (default equal).

    Mean ``sum(w_i * v_i) / sum(w_i)``.
    """

    class Params(StrictModel):
        """Parameters of ``empirical``."""

        values_tokens: list[int] = Field(min_length=1, description="possible values, tokens")
        weights: list[float] | None = Field(default=None, description="relative weights")

        @field_validator("values_tokens")
        @classmethod
        def _values_in_range(cls, value: list[int]) -> list[int]:
            if any(v < 1 or v > MAX_TOKENS for v in value):
                raise ValueError(f"every value must be in [1, {MAX_TOKENS}]")
            return value

        @model_validator(mode="after")
        def _weights_match(self) -> EmpiricalLength.Params:
            w = self.weights
            if w is None:
                return self
            if len(w) != len(self.values_tokens):
                raise ValueError("weights and values_tokens must have the same length")
            if any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
                raise ValueError("weights must be finite and >= 0 with a positive sum")
            return self

    def __init__(self, params: Params) -> None:
        self.params = params
        self._values = np.asarray(params.values_tokens, dtype=np.int64)
        w = np.ones(self._values.shape[0]) if params.weights is None else np.asarray(
            params.weights, dtype=np.float64)
        self._probs = w / w.sum()
        # Inverse-CDF table; infinite from the last positive weight on, so that rounding in the
        # cumulative sum can neither run past the end nor pick a zero-weight value.
        self._cdf = np.cumsum(self._probs)
        self._cdf[np.flatnonzero(self._probs)[-1]:] = np.inf

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Return ``n`` draws by inverting the cumulative weights."""
        return self._values[np.searchsorted(self._cdf, rng.random(n), side="right")]

    def mean(self) -> float:
        """The weighted mean of the values."""
        return float(self._probs @ self._values)

    def variance(self) -> float:
        """The weighted variance of the values."""
        return float(self._probs @ (self._values - self.mean()) ** 2)

    def upper_bound(self) -> int:
        """The largest value."""
        return int(self._values.max())


@lengths.register("geometric")
class GeometricLength(LengthDistribution):
    """Geometric on ``1, 2, ...`` with ``p = 1 / mean_tokens``: the discrete exponential.

    ``P(K = k) = (1 - p)**(k - 1) * p``; mean ``1 / p``, variance ``(1 - p) / p**2``. Unbounded,
    so a workload using it for outputs needs an explicit ``max_output_tokens``.
    """

    class Params(StrictModel):
        """Parameters of ``geometric``."""

        mean_tokens: float = Field(ge=1, le=MAX_TOKENS, description="mean length, tokens")

    def __init__(self, params: Params) -> None:
        self.params = params
        self._p = 1.0 / params.mean_tokens

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Return ``n`` geometric draws (number of trials up to the first success)."""
        return rng.geometric(self._p, size=n).astype(np.int64)

    def mean(self) -> float:
        """``mean_tokens``."""
        return float(self.params.mean_tokens)

    def variance(self) -> float:
        """``(1 - p) / p**2``."""
        return (1.0 - self._p) / self._p**2

    def upper_bound(self) -> None:
        """``None``: unbounded."""
        return None
