"""Availability, failover and cost figures of a run with faults or autoscaling (pure functions).

Definitions (``summary.json`` -> ``elasticity``; *measured*: arriving in the measurement window
``[warmup_s, duration_s)``):

* ``availability``: completed / (completed + failed) over measured requests (rejections are
  the admission policy's or the request's doing, unfinished ones have no verdict yet).
* ``slo_met_share``: the share of measured arrivals (rejected excluded) that completed *and*
  met every SLO; failed and unfinished requests count as misses. Split by arrival time:
  ``during`` an outage (the request was in the system at some time between a failure and the
  node serving again: it arrived before the outage ended and left after it began; the
  requests a crash loses count here), ``before`` (the others that arrived before the first
  failure), ``after`` (arriving in the ``AFTER_S`` seconds after an outage, outside any) and
  ``all``. None when no request falls in the split.
* ``cache_hit_rate``: prefix-cache hit rate (cached / prompt tokens of scheduled requests) in
  the same splits: what a restart that empties a node's cache costs.
* ``detection``: per failure, ``detect_delay_s`` = when the router first took the node out of
  routing (an active check, passive ejection, or the control plane for a drain) minus the
  failure time; NaN when it never noticed (the node came back first).
* ``slo_series``: per ``metrics.monitor_interval_s`` of arrival time, requests arrived, met
  every SLO, and failed: how fast each strategy recovers after a failure.
* ``gpu_hours``: GPU time provisioned in ``[0, duration_s)`` (nodes x the profile's tensor
  parallel degree; a node is provisioned from its scale-up decision until it is drained and
  off, failed nodes included); ``node_count``: change points of provisioned and routable nodes.
"""

from __future__ import annotations

import math

import numpy as np

from sim.outcome import COMPLETED, FAILED, REJECTED

#: seconds after an outage counted as "after" it
AFTER_S = 60.0


def slo_met(req: dict[str, np.ndarray], slo: dict[str, float | None]) -> np.ndarray:
    """Per request: completed and within every SLO (client-side times)."""
    ok = req["status"] == COMPLETED
    arrival, first, finish = req["arrival_s"], req["first_token_s"], req["finish_s"]
    with np.errstate(invalid="ignore", divide="ignore"):
        if slo.get("ttft_s") is not None:
            ok &= first - arrival <= slo["ttft_s"]
        if slo.get("e2e_s") is not None:
            ok &= finish - arrival <= slo["e2e_s"]
        if slo.get("tpot_s") is not None:
            out = req["output_tokens"]
            tpot = np.where(out > 1, (finish - first) / np.maximum(out - 1, 1), 0.0)
            ok &= tpot <= slo["tpot_s"]
    return ok


def outage_windows(records: list[dict], end_s: float) -> list[tuple[float, float]]:
    """Merged ``[failure, serving again)`` intervals (a node never back: to ``end_s``)."""
    spans = sorted((r["start_s"], r["ready_s"] if math.isfinite(r["ready_s"]) else end_s)
                   for r in records)
    merged: list[tuple[float, float]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def split_masks(req: dict[str, np.ndarray], window_s: tuple[float, float],
                windows: list[tuple[float, float]]) -> dict[str, np.ndarray]:
    """Measured, non-rejected arrivals split as in ``slo_met_share``."""
    arrival = req["arrival_s"]
    a, b = window_s
    counted = (arrival >= a) & (arrival < b) & (req["status"] != REJECTED)
    left = np.where(np.isnan(req["finish_s"]), math.inf, req["finish_s"])
    during = np.zeros(arrival.size, dtype=bool)
    after = np.zeros(arrival.size, dtype=bool)
    for start, end in windows:
        during |= (arrival < end) & (left >= start)
        after |= (arrival >= end) & (arrival < end + AFTER_S)
    after &= ~during
    first = windows[0][0] if windows else math.inf
    return {"all": counted, "before": counted & (arrival < first) & ~during,
            "during": counted & during, "after": counted & after}


def provisioned_hours(log: list[tuple[float, int, bool]], n_nodes: int, gpus: np.ndarray,
                      start_off: set[int], until_s: float) -> tuple[float, float]:
    """(node-hours, GPU-hours) provisioned in ``[0, until_s)`` from lifecycle change points."""
    since = {i: 0.0 for i in range(n_nodes) if i not in start_off}
    seconds = np.zeros(n_nodes)
    for t, node, on in sorted(log):
        t = min(t, until_s)
        if on:
            since.setdefault(node, t)
        elif node in since:
            seconds[node] += t - since.pop(node)
    for node, t in since.items():
        seconds[node] += max(0.0, until_s - t)
    return float(seconds.sum() / 3600), float((seconds * gpus).sum() / 3600)


def node_count_series(log: list[tuple[float, int, bool]], routable: list[tuple[float, int]],
                      n_initial: int) -> dict[str, list]:
    """Provisioned and routable node counts at the start (t = 0) and each change point."""
    changes: dict[float, list] = {0.0: [n_initial, n_initial]}
    provisioned = n_initial
    for t, _node, on in sorted(log):
        provisioned += 1 if on else -1
        changes.setdefault(t, [None, None])[0] = provisioned
    for t, count in routable:
        changes.setdefault(t, [None, None])[1] = count
    times = sorted(changes)
    prov, rout, last_p, last_r = [], [], n_initial, n_initial
    for t in times:
        p, r = changes[t]
        last_p = last_p if p is None else p
        last_r = last_r if r is None else r
        prov.append(last_p)
        rout.append(last_r)
    return {"t_s": times, "provisioned": prov, "routable": rout}


#: the request splits of ``slo_met_share`` and ``cache_hit_rate``
SPLITS = ("all", "before", "during", "after")


class AvailabilityStats:
    """The request-based figures of the ``elasticity`` block, as sums over chunks of requests.

    ``add`` takes per-request columns (client-side times) and the failure records known when
    the chunk is added: a chunk of requests that have all left by then is split exactly as the
    whole run splits it, since a failure that starts later cannot overlap them, an outage still
    open ends after all of their arrivals, and the first failure is either known or later than
    every arrival. A whole run adds its requests once, at its end.

    Args:
        slo, window_s: the run's SLO targets and measurement window.
        interval_s: the ``slo_series`` interval.
        horizon_s: the latest possible end of the run (``slo_series`` bins are kept up to it
            and cut at the run's end).
    """

    def __init__(self, slo: dict[str, float | None], window_s: tuple[float, float],
                 interval_s: float, horizon_s: float):
        self.slo = dict(slo)
        self.window_s = window_s
        self.interval_s = interval_s
        self.edges = np.arange(0.0, max(horizon_s, interval_s) + interval_s, interval_s)
        bins = self.edges.size - 1
        self.arrived, self.met, self.failed_series = (np.zeros(bins, dtype=np.int64)
                                                      for _ in range(3))
        self.split_met = dict.fromkeys(SPLITS, 0)
        self.split_count = dict.fromkeys(SPLITS, 0)
        self.split_prompt = dict.fromkeys(SPLITS, 0)
        self.split_cached = dict.fromkeys(SPLITS, 0)
        self.done = self.failed = self.failed_total = 0

    def add(self, req: dict[str, np.ndarray], records: list[dict],
            end_s: float = math.inf) -> None:
        """Fold a chunk of requests; ``records``: the failures known now (``end_s``: when
        the ones still open end, the run's end when it is over)."""
        a, b = self.window_s
        arrival, status = req["arrival_s"], req["status"]
        measured = (arrival >= a) & (arrival < b)
        self.done += int((measured & (status == COMPLETED)).sum())
        self.failed += int((measured & (status == FAILED)).sum())
        self.failed_total += int((status == FAILED).sum())
        met = slo_met(req, self.slo)
        masks = split_masks(req, self.window_s, outage_windows(records, end_s))
        scheduled = np.isfinite(req["first_scheduled_s"])
        for key, rows in masks.items():
            self.split_met[key] += int(met[rows].sum())
            self.split_count[key] += int(rows.sum())
            rows = rows & scheduled
            self.split_prompt[key] += int(req["prompt_tokens"][rows].sum())
            self.split_cached[key] += int(req["cached_tokens"][rows].sum())
        counted = status != REJECTED
        for total, rows in ((self.arrived, counted), (self.met, counted & met),
                            (self.failed_series, status == FAILED)):
            total += np.histogram(arrival[rows], self.edges)[0]

    def series(self, end_s: float) -> dict[str, object]:
        """``slo_series`` of the requests added, for a run that ended at ``end_s``."""
        step = self.interval_s
        bins = np.arange(0.0, max(end_s, step) + step, step).size - 1
        return {"interval_s": step, "t_s": self.edges[:bins].tolist(),
                "arrived": self.arrived[:bins].astype(int).tolist(),
                "met": self.met[:bins].astype(int).tolist(),
                "failed": self.failed_series[:bins].astype(int).tolist()}

    def blocks(self, end_s: float) -> dict[str, object]:
        """``availability``, the failed counts, ``slo_met_share``, ``cache_hit_rate`` and
        ``slo_series`` (see the module docstring)."""
        done, failed = self.done, self.failed
        return {
            "availability": done / (done + failed) if done + failed else None,
            "failed": failed, "failed_total": self.failed_total,
            "slo_met_share": {k: (self.split_met[k] / self.split_count[k]
                                  if self.split_count[k] else None) for k in SPLITS},
            "cache_hit_rate": {k: (self.split_cached[k] / self.split_prompt[k]
                                   if self.split_prompt[k] else None) for k in SPLITS},
            "slo_series": self.series(end_s),
        }


def elasticity_summary(req: dict[str, np.ndarray] | AvailabilityStats,
                       slo: dict[str, float | None], window_s: tuple[float, float],
                       end_s: float, records: list[dict], stats: dict[str, int],
                       hours: tuple[float, float], node_count: dict[str, list],
                       interval_s: float) -> dict[str, object]:
    """The ``elasticity`` block of ``summary.json``; ``req``: the run's per-request columns,
    or their ``AvailabilityStats`` (a streamed run's)."""
    if not isinstance(req, AvailabilityStats):
        acc = AvailabilityStats(slo, window_s, interval_s, end_s)
        acc.add(req, records, end_s)
        req = acc
    part = req.blocks(end_s)
    for r in records:
        r["detect_delay_s"] = r["detected_s"] - r["start_s"]
    delays = np.array([r["detect_delay_s"] for r in records if math.isfinite(r["detected_s"])])
    return {
        "availability": part["availability"],
        "requests": {"failed": part["failed"], "failed_total": part["failed_total"],
                     **{k: int(v) for k, v in stats.items()}},
        "slo_met_share": part["slo_met_share"],
        "cache_hit_rate": part["cache_hit_rate"],
        "detection": {"failures": len(records),
                      "detected": int(delays.size),
                      "mean_s": float(delays.mean()) if delays.size else None,
                      "max_s": float(delays.max()) if delays.size else None},
        "events": [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                    for k, v in r.items()} for r in records],
        "node_hours": hours[0],
        "gpu_hours": hours[1],
        "node_count": node_count,
        "slo_series": part["slo_series"],
    }
