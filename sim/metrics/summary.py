"""From the records of one run to the numbers users compare. Pure functions over numpy columns.

Definitions (``a``, ``b``: the measurement window ``[warmup_s, duration_s)``; *measured*
requests are those arriving in it; latencies are over measured requests that completed):

* TTFT = first_token_s - arrival_s; E2E = finish_s - arrival_s; queueing = first_scheduled_s -
  arrival_s (time until the first iteration that works on the request).
* TPOT = (finish_s - first_token_s) / (output_tokens - 1), for requests with >= 2 output tokens.
* ITL: the time between consecutive tokens of a request, one sample per decode token generated
  in the window (the duration of the iteration that produced it, plus the gap a preemption
  caused); from a log histogram, so quantiles are within 0.5 %.
* Throughput: requests completing in the window per second; output tokens generated in the
  window per second. Goodput: measured requests (warm-up arrivals excluded) completing in the
  window that met every SLO, per second; never above throughput.
  SLO attainment: the fraction of measured completed requests meeting each SLO.
* Cache hit rate: prompt tokens served from the prefix cache at first admission over all prompt
  tokens of measured admitted requests.
* Utilisation of node ``i`` in the window, in five senses: ``busy`` (fraction of time running
  iterations; near 1 for any loaded continuous-batching node), ``token_share`` (its share of all
  tokens processed), ``kv_occupancy`` (time-weighted KV blocks in use / capacity),
  ``batch_occupancy`` (time-weighted running requests / max_num_seqs) and ``mfu`` (model FLOPs /
  peak FLOPs). For each: CV = std/mean over nodes (population std) and imbalance ratio =
  (max - min) / max. The grade uses the CV of the sense named in ``grade.sense``: Excellent
  < 0.1, Good < 0.2, Fair < 0.3, else Poor; ``n/a`` when no measured request completed (an
  idle cluster has CV 0 but served nothing).
* Little's law check: L = time-average number of requests in the system (all nodes, waiting +
  running) over the window; lambda = arrivals in the window that were not rejected, per second;
  W = mean E2E of the measured completed requests. L / (lambda W) is 1 for a stationary run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sim.metrics.fold import FoldedRunLog
    from sim.metrics.streaming import RequestStats
from sim.metrics.disagg import disagg_summary
from sim.metrics.herding import fold_grade, herding
from sim.metrics.recorder import LogHistogram
from sim.outcome import COMPLETED, FAILED, REJECTED, UNFINISHED

QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99, "p99.9": 0.999}
GRADES = ((0.1, "Excellent"), (0.2, "Good"), (0.3, "Fair"))
#: the grade of a run in which no measured request completed
NOT_GRADED = "n/a"


@dataclass(frozen=True)
class RunData:
    """Everything one run recorded, as numpy columns."""

    requests: dict[str, np.ndarray]
    states: dict[str, np.ndarray]
    runs: dict[str, np.ndarray]
    itl: LogHistogram
    max_num_seqs: np.ndarray
    kv_total_blocks: np.ndarray
    peak_flops: np.ndarray
    window_s: tuple[float, float]
    end_s: float
    slo: dict[str, float | None]
    grade_on: str
    extrapolated_steps: int
    kv_evictions: int
    router_stats: dict[str, int] = dataclasses.field(default_factory=dict)
    strategy_stats: dict[str, float] = dataclasses.field(default_factory=dict)
    monitor_interval_s: float = 10.0
    #: the run log and state series folded as the run went (``sim.metrics.fold``): the
    #: figures come from its sums, ``runs`` and ``states`` are then empty
    folded: FoldedRunLog | None = None
    _split: list = dataclasses.field(default_factory=list, repr=False)

    def by_node(self) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
        """The run log and the state series split per node (computed once, then reused)."""
        if not self._split:
            n = self.max_num_seqs.size
            self._split.extend((split_by_node(self.runs, n), split_by_node(self.states, n)))
        return self._split[0], self._split[1]


def distribution(x: np.ndarray) -> dict[str, float | None]:
    """Mean, max and the standard percentiles of ``x`` (None when empty)."""
    if x.size == 0:
        return dict.fromkeys(("mean", "max", *QUANTILES))
    qs = np.percentile(x, [100 * q for q in QUANTILES.values()])
    out: dict[str, float | None] = {k: float(v) for k, v in zip(QUANTILES, qs, strict=True)}
    out["mean"] = float(x.mean())
    out["max"] = float(x.max())
    return out


def balance(values: np.ndarray) -> dict[str, object]:
    """Per-node values with their CV and imbalance ratio."""
    mean = float(values.mean()) if values.size else math.nan
    cv = float(values.std() / mean) if mean > 0 else 0.0
    top = float(values.max()) if values.size else 0.0
    imbalance = float((top - values.min()) / top) if top > 0 else 0.0
    return {"per_node": [float(v) for v in values], "mean": mean, "cv": cv,
            "imbalance": imbalance}


def grade(cv: float) -> str:
    """The balance grade of a coefficient of variation."""
    for limit, name in GRADES:
        if cv < limit:
            return name
    return "Poor"


def spread(starts: np.ndarray, ends: np.ndarray, amounts: np.ndarray,
           edges: np.ndarray) -> np.ndarray:
    """Sum ``amounts`` spread uniformly over ``[start, end)`` into the bins between ``edges``.

    Zero-length intervals put their whole amount at ``start``. Exact, O((n + bins) log n).
    """
    if starts.size == 0:
        return np.zeros(edges.size - 1)
    dur = ends - starts
    point = dur <= 0
    rate = np.where(point, 0.0, amounts / np.where(point, 1.0, dur))
    # cumulative amount A(x) = sum rate * (clip(x, s, e) - s) + point masses at or before x
    times = np.concatenate([starts[~point], ends[~point]])
    slopes = np.concatenate([rate[~point], -rate[~point]])
    order = np.argsort(times, kind="stable")
    times, slopes = times[order], slopes[order]
    slope_cum = np.cumsum(slopes)
    area = np.concatenate([[0.0], np.cumsum(slope_cum[:-1] * np.diff(times))]) if times.size \
        else np.zeros(0)
    k = np.searchsorted(times, edges, side="right") - 1
    valid = k >= 0
    cum = np.zeros(edges.size)
    cum[valid] = area[k[valid]] + slope_cum[k[valid]] * (edges[valid] - times[k[valid]])
    if point.any():
        pts = np.sort(starts[point])
        cum_pts = np.concatenate([[0.0], np.cumsum(amounts[point][np.argsort(starts[point],
                                                                             kind="stable")])])
        cum += cum_pts[np.searchsorted(pts, edges, side="left")]
    return np.diff(cum)


def step_integral(t: np.ndarray, v: np.ndarray, end_s: float, edges: np.ndarray) -> np.ndarray:
    """Integrals of a right-continuous step function between ``edges``.

    The function is 0 before ``t[0]``, ``v[k]`` on ``[t[k], t[k+1])`` and ``v[-1]`` until
    ``end_s``.
    """
    if t.size == 0:
        return np.zeros(edges.size - 1)
    return spread(t, np.append(t[1:], end_s), v * (np.append(t[1:], end_s) - t), edges)


def _latencies(req: dict[str, np.ndarray], measured: np.ndarray) -> dict[str, np.ndarray]:
    done = measured & (req["status"] == COMPLETED)
    arrival = req["arrival_s"][done]
    out = req["output_tokens"][done]
    first = req["first_token_s"][done]
    finish = req["finish_s"][done]
    multi = out > 1
    return {
        "ttft": first - arrival,
        "e2e": finish - arrival,
        "queueing": req["first_scheduled_s"][done] - arrival,
        "tpot": (finish[multi] - first[multi]) / (out[multi] - 1),
    }


def _slo_mask(lat: dict[str, np.ndarray], req: dict[str, np.ndarray], done: np.ndarray,
              slo: dict[str, float | None]) -> tuple[np.ndarray, dict[str, float | None]]:
    """Per measured completed request: did it meet every SLO; and attainment per SLO."""
    n = int(done.sum())
    ok = np.ones(n, dtype=bool)
    attainment: dict[str, float | None] = {}
    out = req["output_tokens"][done]
    tpot_full = np.zeros(n)
    multi = out > 1
    tpot_full[multi] = lat["tpot"]
    for key, values in (("ttft_s", lat["ttft"]), ("tpot_s", tpot_full), ("e2e_s", lat["e2e"])):
        limit = slo.get(key)
        if limit is None:
            continue
        met = values <= limit
        ok &= met
        attainment[key] = float(met.mean()) if n else None
    attainment["all"] = float(ok.mean()) if n else None
    return ok, attainment


def _counts(status: np.ndarray) -> dict[str, int]:
    return {"arrived": int(status.size), "completed": int((status == COMPLETED).sum()),
            "rejected": int((status == REJECTED).sum()), "failed": int((status == FAILED).sum()),
            "unfinished": int((status == UNFINISHED).sum())}


def split_by_node(frame: dict[str, np.ndarray], n_nodes: int) -> list[dict[str, np.ndarray]]:
    """One frame per node (rows keep their time order), from one stable sort."""
    order = np.argsort(frame["node"], kind="stable")
    bounds = np.searchsorted(frame["node"][order], np.arange(n_nodes + 1))
    sorted_cols = {k: np.take(v, order) for k, v in frame.items()}
    return [{k: v[bounds[i]:bounds[i + 1]] for k, v in sorted_cols.items()}
            for i in range(n_nodes)]


def _node_utilisation(data: RunData) -> dict[str, np.ndarray]:
    a, b = data.window_s
    edges = np.array([a, b])
    length = b - a
    n = data.max_num_seqs.size
    out = {k: np.zeros(n) for k in ("busy", "tokens", "flops", "kv", "running", "waiting")}
    runs_by_node, states_by_node = data.by_node()
    for node in range(n):
        r, m = runs_by_node[node], states_by_node[node]
        s, e = r["start_s"], r["end_s"]
        out["busy"][node] = spread(s, e, e - s, edges)[0] / length
        tokens = (r["decode_tokens"] + r["prefill_tokens"]).astype(float)
        out["tokens"][node] = spread(s, e, tokens, edges)[0]
        out["flops"][node] = spread(s, e, r["flops"], edges)[0]
        for key, col in (("kv", "kv_used_blocks"), ("running", "running"),
                         ("waiting", "waiting")):
            out[key][node] = step_integral(m["t_s"], m[col].astype(float), data.end_s,
                                           edges)[0] / length
    return out


def _utilisation(data: RunData, util: dict[str, np.ndarray]) -> dict[str, object]:
    length = data.window_s[1] - data.window_s[0]
    total_tokens = util["tokens"].sum()
    senses = {
        "busy": util["busy"],
        "token_share": util["tokens"] / total_tokens if total_tokens > 0 else util["tokens"],
        "kv_occupancy": util["kv"] / data.kv_total_blocks,
        "batch_occupancy": util["running"] / data.max_num_seqs,
        "mfu": util["flops"] / (data.peak_flops * length),
    }
    out: dict[str, object] = {k: balance(v) for k, v in senses.items()}
    cv = out[data.grade_on]["cv"]  # type: ignore[index]
    out["grade"] = {"sense": data.grade_on, "cv": cv,
                    "imbalance": out[data.grade_on]["imbalance"],  # type: ignore[index]
                    "grade": grade(cv)}
    return out


def summarize(data: RunData) -> dict[str, object]:
    """The summary of one run (deterministic: same records, same dict)."""
    req = data.requests
    a, b = data.window_s
    length = b - a
    arrival = req["arrival_s"]
    measured = (arrival >= a) & (arrival < b)
    done = measured & (req["status"] == COMPLETED)
    lat = _latencies(req, measured)
    meets, attainment = _slo_mask(lat, req, done, data.slo)
    finish = req["finish_s"]
    completes_in_window = (req["status"] == COMPLETED) & (finish >= a) & (finish < b)
    # goodput: measured requests (arrived in the window; warm-up arrivals never count, their
    # SLOs are not checked) completing in the window and meeting every SLO
    good_in_window = np.zeros_like(completes_in_window)
    good_in_window[np.flatnonzero(done)[meets]] = True
    good_in_window &= completes_in_window
    first_in_window = np.isfinite(req["first_token_s"]) & (req["first_token_s"] >= a) & (
        req["first_token_s"] < b)
    runs = data.runs
    win = np.array([a, b])
    folded = data.folded
    if folded is not None:
        decode_in_window, prefill_in_window = folded.decode_in_window, folded.prefill_in_window
        util = folded.util
    else:
        decode_in_window = spread(runs["start_s"], runs["end_s"],
                                  runs["decode_tokens"].astype(float), win)[0]
        prefill_in_window = spread(runs["start_s"], runs["end_s"],
                                   runs["prefill_tokens"].astype(float), win)[0]
        util = _node_utilisation(data)
    admitted = measured & np.isfinite(req["first_scheduled_s"])
    prompt_admitted = int(req["prompt_tokens"][admitted].sum())
    cached = int(req["cached_tokens"][admitted].sum())
    offered = float(measured.sum()) / length
    lam = float((measured & (req["status"] != REJECTED)).sum()) / length  # entered the system
    w = float(lat["e2e"].mean()) if lat["e2e"].size else math.nan
    herd = herding(arrival[measured], req["node"][measured], data.max_num_seqs.size)
    return {
        "requests": {**_counts(req["status"]), "measured": _counts(req["status"][measured])},
        "latency_s": {k: distribution(v) for k, v in lat.items()}
        | {"itl": _itl(data.itl)},
        "throughput": {
            "offered_rps": offered,
            "completed_rps": float(completes_in_window.sum()) / length,
            "goodput_rps": float(good_in_window.sum()) / length,
            "output_tokens_per_s": (decode_in_window + float(first_in_window.sum())) / length,
            "prefill_tokens_per_s": prefill_in_window / length,
        },
        "slo": {"targets": {k: v for k, v in data.slo.items() if v is not None},
                "attainment": attainment},
        "cache": {"hit_rate": cached / prompt_admitted if prompt_admitted else 0.0,
                  "cached_prompt_tokens": cached, "prompt_tokens": prompt_admitted,
                  "evicted_blocks": data.kv_evictions},
        "preemptions": {"total": int(req["preemptions"].sum()),
                        "requests_preempted": int((req["preemptions"] > 0).sum()),
                        "recomputed_tokens": int(req["recomputed_tokens"].sum())},
        **_run_blocks(data, util, herd, int(done.sum()), lam, w),
    } | ({"disaggregation": disagg_summary(req, measured, length)} if "transfer_s" in req
         else {})


def _run_blocks(data: RunData, util: dict[str, np.ndarray], herd: dict[str, object],
                done: int, lam: float, w: float) -> dict[str, object]:
    """The summary's blocks after ``preemptions``: balance, herding, Little's law, the model,
    router and strategy counters and balance over time."""
    a, b = data.window_s
    in_system = float(util["running"].sum() + util["waiting"].sum())
    return {
        "utilization": _ungraded_if_idle(fold_grade(_utilisation(data, util), herd), done),
        "herding": herd,
        "littles_law": {"L": in_system, "lambda_rps": lam, "W_s": w,
                        "ratio": in_system / (lam * w) if lam > 0 and w > 0 else None},
        "model": {"window_s": [a, b], "end_s": data.end_s,
                  "extrapolated_steps": data.extrapolated_steps},
        "router": _router_section(data),
        "strategy": dict(data.strategy_stats),
        "balance_over_time": balance_over_time(data),
    }


def summarize_streamed(data: RunData, stats: RequestStats,
                       herd: dict[str, object]) -> dict[str, object]:
    """The summary of a run whose requests were released page by page (``sim.runner_stream``):
    ``summarize``'s keys and definitions, the request figures from the streaming accumulators
    ``stats`` (counts and means exact, percentiles within ``stats.alpha``; the ``sketch``
    block says so), ``herd`` from ``HerdingStream``, the rest from the folded run log."""
    folded = data.folded
    if folded is None:
        raise ValueError("a streamed run's summary needs its run log folded")
    part: dict[str, Any] = stats.summary()
    a, b = data.window_s
    length = b - a
    rates = part["throughput"]
    little = part["littles_law"]
    return {
        "requests": part["requests"],
        "latency_s": part["latency_s"] | {"itl": _itl(data.itl)},
        "throughput": {
            "offered_rps": rates["offered_rps"],
            "completed_rps": rates["completed_rps"],
            "goodput_rps": rates["goodput_rps"],
            "output_tokens_per_s": (folded.decode_in_window
                                    + stats.first_tokens_in_window) / length,
            "prefill_tokens_per_s": folded.prefill_in_window / length,
        },
        "slo": part["slo"],
        "cache": {**part["cache"], "evicted_blocks": data.kv_evictions},
        "preemptions": part["preemptions"],
        **_run_blocks(data, folded.util, herd, stats.done, little["lambda_rps"],
                      little["W_s"]),
        "sketch": {"latency_relative_error": stats.alpha,
                   "note": "latency percentiles from mergeable sketches (sim.metrics.sketch): "
                           "within this relative error of the exact value of the same rank"},
    }


def _ungraded_if_idle(utilization: dict[str, object], completed: int) -> dict[str, object]:
    """Grade ``n/a`` when no measured request completed: an idle cluster is perfectly
    balanced (CV 0) but has served nothing, so no grade applies."""
    if completed:
        return utilization
    block = dict(utilization["grade"])  # type: ignore[call-overload]
    block["grade"] = NOT_GRADED
    block["note"] = "no measured request completed; nothing to grade"
    return {**utilization, "grade": block}


def _router_section(data: RunData) -> dict[str, float]:
    """What the router's mechanisms did; wasted work as a share of all tokens computed."""
    runs = data.runs
    computed = data.folded.computed_tokens if data.folded else float(
        runs["decode_tokens"].sum() + runs["prefill_tokens"].sum())
    out: dict[str, float] = dict(data.router_stats)
    wasted = out.get("wasted_tokens", 0)
    out["wasted_token_share"] = wasted / computed if computed else 0.0
    return out


def _sense_per_node(data: RunData, node: int, r: dict[str, np.ndarray],
                    m: dict[str, np.ndarray], edges: np.ndarray) -> np.ndarray:
    """The graded load sense of one node in each interval between ``edges``."""
    width = np.diff(edges)
    s, e = r["start_s"], r["end_s"]
    sense = data.grade_on
    if sense == "busy":
        return spread(s, e, e - s, edges) / width
    if sense == "token_share":
        return spread(s, e, (r["decode_tokens"] + r["prefill_tokens"]).astype(float), edges)
    if sense == "mfu":
        return spread(s, e, r["flops"], edges) / (data.peak_flops[node] * width)
    column, scale = (("kv_used_blocks", data.kv_total_blocks[node]) if sense == "kv_occupancy"
                     else ("running", data.max_num_seqs[node]))
    return step_integral(m["t_s"], m[column].astype(float), data.end_s, edges) / width / scale


def balance_over_time(data: RunData) -> dict[str, list]:
    """CV, imbalance and grade of the graded load sense across nodes, per monitor interval
    (the monitor of the seed document, computed from the records after the run)."""
    step = data.monitor_interval_s
    if data.folded is not None:
        edges, load = data.folded.monitor_edges, data.folded.sense
    else:
        edges = np.arange(0.0, max(data.end_s, step) + step, step)
        n = data.max_num_seqs.size
        runs_by_node, states_by_node = data.by_node()
        load = np.array([_sense_per_node(data, i, runs_by_node[i], states_by_node[i], edges)
                         for i in range(n)])
    mean = load.mean(axis=0)
    top = load.max(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cv = np.where(mean > 0, load.std(axis=0) / np.where(mean > 0, mean, 1), 0.0)
        imbalance = np.where(top > 0, (top - load.min(axis=0)) / np.where(top > 0, top, 1), 0.0)
    return {"sense": data.grade_on, "interval_s": step, "t_s": edges[:-1].tolist(),
            "cv": cv.tolist(), "imbalance": imbalance.tolist(),
            "grade": [grade(float(c)) for c in cv]}


def _itl(hist: LogHistogram) -> dict[str, float | None]:
    if hist.total == 0:
        return dict.fromkeys(("mean", *QUANTILES))
    values = hist.quantiles(list(QUANTILES.values()))
    out: dict[str, float | None] = dict(zip(QUANTILES, values, strict=True))
    out["mean"] = hist.mean()
    out["samples"] = float(hist.total)
    return out


def timeline(data: RunData, bucket_s: float) -> dict[str, np.ndarray]:
    """Per node and time bucket: busy fraction, tokens per second, KV and batch occupancy,
    mean running and waiting requests (the over-time series behind the report's figures).
    From a folded run log, the buckets are those the folder was given."""
    if data.folded is not None:
        return _folded_timeline(data.folded, data.kv_total_blocks, data.max_num_seqs)
    n = data.max_num_seqs.size
    end = max(data.end_s, bucket_s)
    edges = np.arange(0.0, end + bucket_s, bucket_s)
    width = np.diff(edges)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in (
        "node", "t_s", "busy", "prefill_tokens_per_s", "decode_tokens_per_s", "kv_occupancy",
        "batch_occupancy", "running", "waiting")}
    runs_by_node, states_by_node = data.by_node()
    for node in range(n):
        r, m = runs_by_node[node], states_by_node[node]
        s, e, t = r["start_s"], r["end_s"], m["t_s"]
        cols["node"].append(np.full(width.size, node, dtype=np.int64))
        cols["t_s"].append(edges[:-1])
        cols["busy"].append(spread(s, e, e - s, edges) / width)
        cols["prefill_tokens_per_s"].append(
            spread(s, e, r["prefill_tokens"].astype(float), edges) / width)
        cols["decode_tokens_per_s"].append(
            spread(s, e, r["decode_tokens"].astype(float), edges) / width)
        running = step_integral(t, m["running"].astype(float), data.end_s, edges) / width
        cols["running"].append(running)
        cols["batch_occupancy"].append(running / data.max_num_seqs[node])
        cols["waiting"].append(step_integral(t, m["waiting"].astype(float), data.end_s,
                                             edges) / width)
        cols["kv_occupancy"].append(
            step_integral(t, m["kv_used_blocks"].astype(float), data.end_s, edges)
            / width / data.kv_total_blocks[node])
    return {k: np.concatenate(v) for k, v in cols.items()}


def _folded_timeline(folded: FoldedRunLog, kv_total_blocks: np.ndarray,
                     max_num_seqs: np.ndarray) -> dict[str, np.ndarray]:
    """``timeline``'s columns from the per-node bucket sums of ``sim.metrics.fold``."""
    edges = folded.timeline_edges
    width = np.diff(edges)
    n = kv_total_blocks.size
    tl = folded.timeline
    running = tl["running"] / width
    return {
        "node": np.repeat(np.arange(n, dtype=np.int64), width.size),
        "t_s": np.tile(edges[:-1], n),
        "busy": (tl["busy"] / width).ravel(),
        "prefill_tokens_per_s": (tl["prefill_tokens"] / width).ravel(),
        "decode_tokens_per_s": (tl["decode_tokens"] / width).ravel(),
        "kv_occupancy": (tl["kv"] / width / kv_total_blocks[:, None]).ravel(),
        "batch_occupancy": (running / max_num_seqs[:, None]).ravel(),
        "running": running.ravel(),
        "waiting": (tl["waiting"] / width).ravel(),
    }
