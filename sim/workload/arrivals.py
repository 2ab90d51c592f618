"""Arrival processes: when requests (or sessions) arrive, as sorted numpy arrays.

Every process is registered by name in ``arrivals``, validates its parameters with a nested
pydantic ``Params`` model, draws only from the injected ``np.random.Generator``, and states its
analytic moments:

* ``mean_rate_rps``: the long-run arrival rate. Every stationary process here starts in its
  stationary regime, so ``E[N(0, T)] = mean_rate_rps * T`` holds exactly from ``t = 0``
  (``expected_count`` gives ``E[N(0, T)]`` for every process, the periodic one included).
* ``interarrival_cv``: the coefficient of variation of the stationary inter-arrival time (the
  gap between consecutive arrivals seen from an arrival), ``None`` where no closed form is used.
* ``index_of_dispersion``: the asymptotic index of dispersion of counts,
  ``lim Var N(0, t) / E N(0, t)`` for ``t -> inf``.

Nothing is truncated or clipped: gaps are never capped (Vidur's "Poisson" generator capped them
at 3x the mean and so was not Poisson). The only bound applied is the observation window
``[0, duration_s)``.
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from sim.registry import Registry
from sim.spec import StrictModel

arrivals: Registry[type[ArrivalProcess]] = Registry("arrivals")


#: Largest block of gaps or sojourns drawn at once (bounds memory; the draws continue in blocks).
_MAX_CHUNK = 1 << 22


def _check_duration(duration_s: float) -> None:
    if not (math.isfinite(duration_s) and duration_s >= 0):
        raise ValueError(f"duration_s must be finite and >= 0, got {duration_s}")


def _uniform_in(rng: np.random.Generator, start_s: np.ndarray, length_s: np.ndarray,
                end_s: float) -> np.ndarray:
    """Draw one uniform point in each ``[start, start + length)``, sorted, all below ``end_s``.

    ``start + u * length`` can round up to the interval's end in floating point; such a point is
    moved to the largest float below ``end_s`` (a rounding fix, not a statistical clip).
    """
    times = start_s + rng.random(start_s.shape[0]) * length_s
    times.sort()
    return np.minimum(times, np.nextafter(end_s, -np.inf))


class ArrivalProcess(abc.ABC):
    """A point process on ``[0, duration_s)``; subclasses define ``Params`` and the moments."""

    Params: ClassVar[type[StrictModel]]

    @abc.abstractmethod
    def sample(self, rng: np.random.Generator, duration_s: float) -> np.ndarray:
        """Return sorted float64 arrival times in seconds, all in ``[0, duration_s)``."""

    @property
    @abc.abstractmethod
    def mean_rate_rps(self) -> float:
        """The analytic long-run arrival rate in requests per second."""

    @property
    def interarrival_cv(self) -> float | None:
        """CV of the stationary inter-arrival time, or ``None`` without a closed form."""
        return None

    @property
    def index_of_dispersion(self) -> float | None:
        """Asymptotic index of dispersion of counts, or ``None`` without a closed form."""
        return None

    def expected_count(self, duration_s: float) -> float:
        """Return ``E[N(0, duration_s)]``; exact for the stationary processes here."""
        return self.mean_rate_rps * duration_s

    def expected_draws(self, duration_s: float) -> float:
        """Random draws beyond one per arrival that sampling ``[0, duration_s)`` makes (MMPP
        sojourns, periodic pieces): what bounds the cost of a sparse but finely modulated
        process (``sim.limits``)."""
        return 0.0


@arrivals.register("poisson")
class PoissonArrivals(ArrivalProcess):
    """Homogeneous Poisson process: exponential gaps, CV 1, index of dispersion 1.

    Sampled exactly by conditional uniformity: ``N ~ Poisson(rate * T)``, then ``N`` sorted
    uniform times on ``[0, T)``.
    """

    class Params(StrictModel):
        """Parameters of ``poisson``."""

        rate_rps: float = Field(gt=0, description="arrival rate, requests per second")

    def __init__(self, params: Params) -> None:
        self.params = params

    def sample(self, rng: np.random.Generator, duration_s: float) -> np.ndarray:
        """Return sorted Poisson arrival times in ``[0, duration_s)``."""
        _check_duration(duration_s)
        n = int(rng.poisson(self.params.rate_rps * duration_s))
        return _uniform_in(rng, np.zeros(n), np.full(n, float(duration_s)), duration_s)

    @property
    def mean_rate_rps(self) -> float:
        """``rate_rps``."""
        return self.params.rate_rps

    @property
    def interarrival_cv(self) -> float:
        """1: exponential gaps."""
        return 1.0

    @property
    def index_of_dispersion(self) -> float:
        """1: Poisson counts."""
        return 1.0


@arrivals.register("gamma")
class GammaArrivals(ArrivalProcess):
    """Stationary renewal process with gamma gaps: shape ``1/cv**2``, scale ``cv**2/rate``.

    ``cv < 1`` is smoother than Poisson, ``cv > 1`` burstier, ``cv = 1`` is Poisson. The first
    arrival is drawn from the stationary forward-recurrence distribution (density
    ``(1 - F(x)) * rate``), which for gamma gaps is ``U * L`` with ``U ~ U(0, 1)`` and ``L`` the
    length-biased gap ``Gamma(shape + 1, scale)``, so the process is stationary from ``t = 0``.
    Asymptotic index of dispersion of a renewal process: ``cv**2`` (Cox 1962, *Renewal Theory*,
    section 4.5).
    """

    class Params(StrictModel):
        """Parameters of ``gamma``."""

        rate_rps: float = Field(gt=0, description="arrival rate, requests per second")
        cv: float = Field(ge=1e-3, le=10, description="CV of the gaps; above 10 (shape < "
                          "0.01) numpy's gamma sampler underflows to zero too often; below "
                          "0.001 (shape > 1e6) the gaps are constant to 6 digits anyway")

    def __init__(self, params: Params) -> None:
        self.params = params
        self._shape = 1.0 / params.cv**2
        self._scale = params.cv**2 / params.rate_rps

    def sample(self, rng: np.random.Generator, duration_s: float) -> np.ndarray:
        """Return sorted arrival times in ``[0, duration_s)``, gaps drawn in chunks."""
        _check_duration(duration_s)
        expected = self.params.rate_rps * duration_s
        chunk = min(int(expected + 6.0 * math.sqrt(expected) * max(self.params.cv, 1.0)) + 16,
                    _MAX_CHUNK)
        t = float(rng.random() * rng.gamma(self._shape + 1.0, self._scale))
        pieces = []
        while t < duration_s:
            gaps = rng.gamma(self._shape, self._scale, size=chunk)
            block = t + np.concatenate(([0.0], np.cumsum(gaps)))
            pieces.append(block[:-1])
            t = float(block[-1])
        times = np.concatenate(pieces) if pieces else np.zeros(0)
        return times[times < duration_s]

    @property
    def mean_rate_rps(self) -> float:
        """``rate_rps``."""
        return self.params.rate_rps

    @property
    def interarrival_cv(self) -> float:
        """``cv``."""
        return self.params.cv

    @property
    def index_of_dispersion(self) -> float:
        """``cv**2`` (renewal process, Cox 1962)."""
        return self.params.cv**2


@arrivals.register("mmpp2")
class Mmpp2Arrivals(ArrivalProcess):
    """Two-state Markov-modulated Poisson process: bursts of ``high_rps`` amid ``low_rps``.

    The modulating chain stays an exponential time with mean ``mean_low_s`` in the low state and
    ``mean_high_s`` in the high state. It starts in its stationary distribution (low with
    probability ``mean_low_s / (mean_low_s + mean_high_s)``) so the process is stationary from
    ``t = 0``. Sampled exactly: switch times first, then Poisson points within each sojourn.

    With ``l1, l2`` the low and high rates and ``r1 = 1/mean_low_s``, ``r2 = 1/mean_high_s``
    the rates of leaving each state (Fischer & Meier-Hellstern 1993, "The MMPP cookbook";
    Heffes & Lucantoni 1986):

    * mean rate ``(l1 * r2 + l2 * r1) / (r1 + r2)``;
    * asymptotic index of dispersion
      ``1 + 2 * (l1 - l2)**2 * r1 * r2 / ((r1 + r2)**2 * (l1 * r2 + l2 * r1))``;
    * stationary inter-arrival time: phase-type with ``D0 = Q - diag(l)``, initial vector
      ``pi_a = pi * diag(l) / mean rate``; ``E[X**k] = k! * pi_a * (-D0)**-k * 1``.
    """

    class Params(StrictModel):
        """Parameters of ``mmpp2``."""

        low_rps: float = Field(ge=0, description="rate in the low state, requests per second")
        high_rps: float = Field(gt=0, description="rate in the high state, requests per second")
        mean_low_s: float = Field(gt=0, description="mean sojourn in the low state, seconds")
        mean_high_s: float = Field(gt=0, description="mean sojourn in the high state, seconds")

        @field_validator("high_rps")
        @classmethod
        def _high_above_low(cls, value: float, info: ValidationInfo) -> float:
            low = info.data.get("low_rps")
            if low is not None and value < low:
                raise ValueError(f"high_rps must be >= low_rps ({low})")
            return value

    def __init__(self, params: Params) -> None:
        self.params = params
        p = params
        self._rates = np.array([p.low_rps, p.high_rps])
        self._means_s = np.array([p.mean_low_s, p.mean_high_s])

    def sample(self, rng: np.random.Generator, duration_s: float) -> np.ndarray:
        """Return sorted arrival times in ``[0, duration_s)``."""
        _check_duration(duration_s)
        start_s, length_s, state = self._sojourns(rng, duration_s)
        counts = rng.poisson(self._rates[state] * length_s)
        return _uniform_in(rng, np.repeat(start_s, counts), np.repeat(length_s, counts),
                           duration_s)

    def _sojourns(self, rng: np.random.Generator,
                  duration_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return start, length (cut at ``duration_s``) and state of each sojourn."""
        p_low = self.params.mean_low_s / self._means_s.sum()
        first = 0 if rng.random() < p_low else 1
        chunk = 2 * min(int(duration_s / self._means_s.sum() + 8), _MAX_CHUNK // 2)
        states = (first + np.arange(chunk)) % 2
        lengths: list[np.ndarray] = []
        total = 0.0
        while total < duration_s:
            block = rng.exponential(1.0, size=chunk) * self._means_s[states]
            lengths.append(block)
            total += float(block.sum())
        length_s = np.concatenate(lengths) if lengths else np.zeros(0)
        end_s = np.cumsum(length_s)
        start_s = end_s - length_s
        keep = start_s < duration_s
        start_s, end_s = start_s[keep], np.minimum(end_s[keep], duration_s)
        state = (first + np.arange(start_s.shape[0])) % 2
        return start_s, end_s - start_s, state

    def expected_draws(self, duration_s: float) -> float:
        """Expected sojourns in ``[0, duration_s)`` (two per mean cycle), plus a block."""
        return 2.0 * duration_s / float(self._means_s.sum()) + 16.0

    @property
    def mean_rate_rps(self) -> float:
        """Time-average rate ``(low * mean_low + high * mean_high) / (mean_low + mean_high)``."""
        return float(self._rates @ self._means_s / self._means_s.sum())

    @property
    def index_of_dispersion(self) -> float:
        """Asymptotic IDC (Fischer & Meier-Hellstern 1993, eq. for the 2-state MMPP)."""
        l1, l2 = self._rates
        r1, r2 = 1.0 / self._means_s
        return float(1.0 + 2.0 * (l1 - l2) ** 2 * r1 * r2 / ((r1 + r2) ** 2 * (l1 * r2 + l2 * r1)))

    @property
    def interarrival_cv(self) -> float:
        """CV of the stationary gap, from its phase-type moments (see the class docstring)."""
        r1, r2 = 1.0 / self._means_s
        d0 = np.array([[-r1, r1], [r2, -r2]]) - np.diag(self._rates)
        pi = np.array([r2, r1]) / (r1 + r2)
        pi_a = pi * self._rates / float(pi @ self._rates)
        m = np.linalg.inv(-d0)
        first = float(pi_a @ m @ np.ones(2))
        second = 2.0 * float(pi_a @ m @ m @ np.ones(2))
        return math.sqrt(max(second / first**2 - 1.0, 0.0))


@arrivals.register("piecewise")
class PiecewiseArrivals(ArrivalProcess):
    """Periodic non-homogeneous Poisson process with a piecewise-constant rate (e.g. diurnal).

    Piece ``i`` has rate ``rates_rps[i]`` for ``durations_s[i]`` seconds (or ``period_s /
    len(rates_rps)`` each when ``period_s`` is given); the pattern repeats from ``t = 0``.
    Sampled exactly: the count of each piece over all whole periods is Poisson, each point picks
    its period uniformly and its time uniformly within the piece (superposition); the last
    partial period is sampled piece by piece. Mean rate: the time average over one period. The
    count in any fixed window is Poisson, so the index of dispersion is 1.
    """

    class Params(StrictModel):
        """Parameters of ``piecewise``: ``rates_rps`` and exactly one of the two durations."""

        rates_rps: list[float] = Field(min_length=1, description="rate of each piece, rps")
        period_s: float | None = Field(default=None, gt=0, description="period, equal pieces")
        durations_s: list[float] | None = Field(default=None, description="length of each piece")

        @field_validator("rates_rps")
        @classmethod
        def _rates_valid(cls, value: list[float]) -> list[float]:
            if any(not math.isfinite(r) or r < 0 for r in value) or max(value) <= 0:
                raise ValueError("rates must be finite and >= 0, at least one > 0")
            return value

        @field_validator("durations_s")
        @classmethod
        def _durations_positive(cls, value: list[float] | None) -> list[float] | None:
            if value is not None and any(not math.isfinite(d) or d <= 0 for d in value):
                raise ValueError("every duration must be finite and > 0")
            return value

        @model_validator(mode="after")
        def _one_duration(self) -> PiecewiseArrivals.Params:
            if (self.period_s is None) == (self.durations_s is None):
                raise ValueError("give exactly one of period_s and durations_s")
            if self.durations_s is not None and len(self.durations_s) != len(self.rates_rps):
                raise ValueError("durations_s and rates_rps must have the same length")
            return self

    def __init__(self, params: Params) -> None:
        self.params = params
        self._rates = np.asarray(params.rates_rps, dtype=np.float64)
        k = self._rates.shape[0]
        if params.durations_s is not None:
            self._durations_s = np.asarray(params.durations_s, dtype=np.float64)
        else:
            self._durations_s = np.full(k, float(params.period_s or 0.0) / k)
        self._period_s = float(self._durations_s.sum())
        self._offsets_s = np.cumsum(self._durations_s) - self._durations_s

    def sample(self, rng: np.random.Generator, duration_s: float) -> np.ndarray:
        """Return sorted arrival times in ``[0, duration_s)``."""
        _check_duration(duration_s)
        periods, piece_start, piece_len = self._window(duration_s)
        counts = rng.poisson(self._rates * self._durations_s * periods)
        start_s = np.repeat(self._offsets_s, counts)
        start_s += rng.integers(0, max(periods, 1), size=start_s.shape[0]) * self._period_s
        tail_counts = rng.poisson(self._rates * piece_len)
        start_s = np.concatenate((start_s, np.repeat(piece_start, tail_counts)))
        lengths = np.concatenate((np.repeat(self._durations_s, counts),
                                  np.repeat(piece_len, tail_counts)))
        return _uniform_in(rng, start_s, lengths, duration_s)

    def _window(self, duration_s: float) -> tuple[int, np.ndarray, np.ndarray]:
        """Return the whole periods in ``[0, duration_s)`` and the pieces of the partial one.

        The partial period's pieces are given as start times and lengths (0 for the pieces
        that lie wholly at or after ``duration_s``).
        """
        periods = math.floor(duration_s / self._period_s)
        piece_start = periods * self._period_s + self._offsets_s
        return periods, piece_start, np.clip(duration_s - piece_start, 0.0, self._durations_s)

    @property
    def mean_rate_rps(self) -> float:
        """``sum(rate_i * duration_i) / period``."""
        return float(self._rates @ self._durations_s / self._period_s)

    @property
    def index_of_dispersion(self) -> float:
        """1: the count in any fixed window is Poisson."""
        return 1.0

    def expected_draws(self, duration_s: float) -> float:
        """Two per piece: whole periods are drawn per piece, the partial one piece by piece;
        infinite when the number of periods does not fit the int64 period index."""
        if duration_s / self._period_s >= 2.0**62:
            return math.inf
        return 2.0 * float(self._rates.shape[0])

    def expected_count(self, duration_s: float) -> float:
        """Return ``E[N(0, duration_s)]``, the integral of the rate, partial period included."""
        periods, _, piece_len = self._window(duration_s)
        return float(periods * self._rates @ self._durations_s + self._rates @ piece_len)
