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


def _share(met: np.ndarray, rows: np.ndarray) -> float | None:
    return float(met[rows].mean()) if rows.any() else None


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


def slo_shares(req: dict[str, np.ndarray], slo: dict[str, float | None],
               window_s: tuple[float, float], windows: list[tuple[float, float]]
               ) -> dict[str, float | None]:
    """``slo_met_share`` split by arrival time (see the module docstring)."""
    met = slo_met(req, slo)
    return {key: _share(met, rows) for key, rows in split_masks(req, window_s, windows).items()}


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


def cache_hit_split(req: dict[str, np.ndarray], masks: dict[str, np.ndarray]
                    ) -> dict[str, float | None]:
    """Prefix-cache hit rate (cached / prompt tokens of the requests that were scheduled)
    in each split of ``split_masks``."""
    scheduled = np.isfinite(req["first_scheduled_s"])
    out: dict[str, float | None] = {}
    for key, rows in masks.items():
        rows = rows & scheduled
        prompt = int(req["prompt_tokens"][rows].sum())
        out[key] = int(req["cached_tokens"][rows].sum()) / prompt if prompt else None
    return out


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


def slo_series(req: dict[str, np.ndarray], slo: dict[str, float | None], interval_s: float,
               end_s: float) -> dict[str, object]:
    """Per ``interval_s`` of arrival time: requests arrived (rejected excluded), completed
    within every SLO, and failed (the recovery curve after a failure)."""
    arrival = req["arrival_s"]
    counted = req["status"] != REJECTED
    edges = np.arange(0.0, max(end_s, interval_s) + interval_s, interval_s)
    met = slo_met(req, slo)

    def count(rows: np.ndarray) -> list[int]:
        return np.histogram(arrival[rows], edges)[0].astype(int).tolist()

    return {"interval_s": interval_s, "t_s": edges[:-1].tolist(), "arrived": count(counted),
            "met": count(counted & met), "failed": count(req["status"] == FAILED)}


def elasticity_summary(req: dict[str, np.ndarray], slo: dict[str, float | None],
                       window_s: tuple[float, float], end_s: float, records: list[dict],
                       stats: dict[str, int], hours: tuple[float, float],
                       node_count: dict[str, list], interval_s: float) -> dict[str, object]:
    """The ``elasticity`` block of ``summary.json``."""
    a, b = window_s
    arrival, status = req["arrival_s"], req["status"]
    measured = (arrival >= a) & (arrival < b)
    done = int((measured & (status == COMPLETED)).sum())
    failed = int((measured & (status == FAILED)).sum())
    outages = outage_windows(records, end_s)
    for r in records:
        r["detect_delay_s"] = r["detected_s"] - r["start_s"]
    delays = np.array([r["detect_delay_s"] for r in records if math.isfinite(r["detected_s"])])
    return {
        "availability": done / (done + failed) if done + failed else None,
        "requests": {"failed": failed, "failed_total": int((status == FAILED).sum()),
                     **{k: int(v) for k, v in stats.items()}},
        "slo_met_share": slo_shares(req, slo, window_s, outages),
        "cache_hit_rate": cache_hit_split(req, split_masks(req, window_s, outages)),
        "detection": {"failures": len(records),
                      "detected": int(delays.size),
                      "mean_s": float(delays.mean()) if delays.size else None,
                      "max_s": float(delays.max()) if delays.size else None},
        "events": [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                    for k, v in r.items()} for r in records],
        "node_hours": hours[0],
        "gpu_hours": hours[1],
        "node_count": node_count,
        "slo_series": slo_series(req, slo, interval_s, end_s),
    }
