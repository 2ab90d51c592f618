"""The per-request part of a run's summary, accumulated chunk by chunk (issue 18).

``RequestStats`` takes the per-request columns (those of ``requests.parquet``, the status as
its integer code) in chunks of any size and in any order, and keeps only accumulators: exact
counts and sums (request counts, SLO attainment, throughput and goodput counts, cached and
prompt tokens, preemptions, latency means and maxima) and one ``QuantileSketch`` per latency
(TTFT, E2E, queueing, TPOT) for the percentiles. Memory is constant in the number of requests,
and two ``RequestStats`` of disjoint chunks merge exactly (``merge``), so shards of a fleet run
summarise separately.

``summary()`` returns the blocks of ``sim.metrics.summary.summarize`` that come from the
request columns, with the same keys and definitions: ``requests``, ``latency_s`` (without
``itl``, which comes from the run log), ``slo``, ``cache`` (without ``evicted_blocks``),
``preemptions``, the request-based ``throughput`` rates and Little's ``W_s``. Counts and means
are exact (means up to float summation order); percentiles are within the sketch's relative
error ``alpha`` (0.5 % by default) of the exact value of the same rank, where ``summarize``
interpolates between the two values around that rank (``numpy.percentile``).
"""

from __future__ import annotations

import math

import numpy as np

from sim.metrics.sketch import QuantileSketch
from sim.outcome import COMPLETED, FAILED, REJECTED, UNFINISHED

#: the percentiles of ``sim.metrics.summary.QUANTILES`` (kept equal by a test)
QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99, "p99.9": 0.999}
LATENCIES = ("ttft", "e2e", "queueing", "tpot")
_SLO_KEYS = (("ttft_s", "ttft"), ("tpot_s", "tpot"), ("e2e_s", "e2e"))
_COUNTS = ("arrived", "completed", "rejected", "failed", "unfinished")


class RequestStats:
    """Exact streaming accumulators and latency sketches over per-request columns.

    Args:
        window_s: the measurement window ``[warmup_s, duration_s)``.
        slo: the SLO targets (``ttft_s``, ``tpot_s``, ``e2e_s``; None: no target).
        alpha: the relative error of the latency percentiles.
    """

    def __init__(self, window_s: tuple[float, float], slo: dict[str, float | None],
                 alpha: float = 0.005):
        self.window_s = window_s
        self.slo = dict(slo)
        self.alpha = alpha
        self.sketches = {k: QuantileSketch(alpha) for k in LATENCIES}
        self.counts = dict.fromkeys(_COUNTS, 0)
        self.measured = dict.fromkeys(_COUNTS, 0)
        self.met = {key: 0 for key, _ in _SLO_KEYS if self.slo.get(key) is not None}
        self.met_all = 0
        self.done = 0  # measured and completed
        self.completes_in_window = 0
        self.good_in_window = 0
        self.first_tokens_in_window = 0
        self.entered = 0  # measured, not rejected
        self.prompt_admitted = 0
        self.cached = 0
        self.preemptions = 0
        self.preempted_requests = 0
        self.recomputed = 0

    def add(self, req: dict[str, np.ndarray]) -> None:
        """Fold one chunk of per-request columns into the accumulators."""
        a, b = self.window_s
        status = np.asarray(req["status"])
        arrival = req["arrival_s"]
        measured = (arrival >= a) & (arrival < b)
        for name, counts in ((None, self.counts), ("measured", self.measured)):
            s = status if name is None else status[measured]
            for key, code in (("completed", COMPLETED), ("rejected", REJECTED),
                              ("failed", FAILED), ("unfinished", UNFINISHED)):
                counts[key] += int(np.count_nonzero(s == code))
            counts["arrived"] += int(s.size)
        completed = status == COMPLETED
        done = measured & completed
        out = req["output_tokens"][done]
        first = req["first_token_s"][done]
        finish = req["finish_s"][done]
        arr = arrival[done]
        multi = out > 1
        lat = {"ttft": first - arr, "e2e": finish - arr,
               "queueing": req["first_scheduled_s"][done] - arr,
               "tpot": (finish[multi] - first[multi]) / (out[multi] - 1)}
        for key, values in lat.items():
            self.sketches[key].add_many(values)
        n_done = int(done.sum())
        self.done += n_done
        ok = np.ones(n_done, dtype=bool)
        tpot_full = np.zeros(n_done)
        tpot_full[multi] = lat["tpot"]
        for key, name in _SLO_KEYS:
            limit = self.slo.get(key)
            if limit is None:
                continue
            met = (tpot_full if name == "tpot" else lat[name]) <= limit
            ok &= met
            self.met[key] += int(met.sum())
        self.met_all += int(ok.sum())
        finish_all = req["finish_s"]
        in_window = completed & (finish_all >= a) & (finish_all < b)
        self.completes_in_window += int(in_window.sum())
        self.good_in_window += int(ok[in_window[done]].sum())
        ft = req["first_token_s"]
        self.first_tokens_in_window += int((np.isfinite(ft) & (ft >= a) & (ft < b)).sum())
        self.entered += int((measured & (status != REJECTED)).sum())
        admitted = measured & np.isfinite(req["first_scheduled_s"])
        self.prompt_admitted += int(req["prompt_tokens"][admitted].sum())
        self.cached += int(req["cached_tokens"][admitted].sum())
        self.preemptions += int(req["preemptions"].sum())
        self.preempted_requests += int((req["preemptions"] > 0).sum())
        self.recomputed += int(req["recomputed_tokens"].sum())

    def merge(self, other: RequestStats) -> None:
        """Add the accumulators of ``other`` (disjoint requests, same window, SLOs, alpha)."""
        if (other.window_s, other.slo, other.alpha) != (self.window_s, self.slo, self.alpha):
            raise ValueError("only RequestStats of the same window, SLOs and alpha merge")
        for key, sketch in self.sketches.items():
            sketch.merge(other.sketches[key])
        for mine, theirs in ((self.counts, other.counts), (self.measured, other.measured),
                             (self.met, other.met)):
            for key in mine:
                mine[key] += theirs[key]
        for name in ("met_all", "done", "completes_in_window", "good_in_window",
                     "first_tokens_in_window", "entered", "prompt_admitted", "cached",
                     "preemptions", "preempted_requests", "recomputed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def distribution(self, key: str) -> dict[str, float | None]:
        """Mean and max (exact) and the percentiles (from the sketch) of one latency."""
        sketch = self.sketches[key]
        if sketch.count == 0:
            return dict.fromkeys(("mean", "max", *QUANTILES))
        out: dict[str, float | None] = dict(zip(
            QUANTILES, sketch.quantiles(list(QUANTILES.values())), strict=True))
        out["mean"] = sketch.mean()
        out["max"] = sketch.max
        return out

    def summary(self) -> dict[str, object]:
        """The request-based blocks of the run summary (see the module docstring)."""
        a, b = self.window_s
        length = b - a
        n = self.done
        attainment: dict[str, float | None] = {
            key: (met / n if n else None) for key, met in self.met.items()}
        attainment["all"] = self.met_all / n if n else None
        w = self.sketches["e2e"].mean()
        return {
            "requests": {**self.counts, "measured": dict(self.measured)},
            "latency_s": {k: self.distribution(k) for k in LATENCIES},
            "throughput": {
                "offered_rps": self.measured["arrived"] / length,
                "completed_rps": self.completes_in_window / length,
                "goodput_rps": self.good_in_window / length,
                "first_tokens_per_s": self.first_tokens_in_window / length,
            },
            "slo": {"targets": {k: v for k, v in self.slo.items() if v is not None},
                    "attainment": attainment},
            "cache": {"hit_rate": (self.cached / self.prompt_admitted
                                   if self.prompt_admitted else 0.0),
                      "cached_prompt_tokens": self.cached,
                      "prompt_tokens": self.prompt_admitted},
            "preemptions": {"total": self.preemptions,
                            "requests_preempted": self.preempted_requests,
                            "recomputed_tokens": self.recomputed},
            "littles_law": {"lambda_rps": self.entered / length,
                            "W_s": w if not math.isnan(w) else math.nan},
        }
