"""Fold the run log and the node change-point series into fixed-size sums as a run goes
(issue 18: fleet-scale runs in bounded memory).

A whole run keeps every row of ``Recorder.runs`` (about 2.9 rows of 11 float64 columns per
request) and ``Recorder.states`` (about 3.9 rows of 5 columns), some 400 bytes per request,
and ``sim.metrics.summary`` reads them after the run. Every figure it takes from them is a sum
over rows of amounts spread over time bins (``spread``, ``step_integral``), so it can be
accumulated chunk by chunk instead: ``RunLogFolder.fold`` takes the rows recorded so far (the
caller then drops them), adds their contributions to

* per node, over the measurement window: busy time, tokens, FLOPs, and the time integrals of
  KV blocks in use, running and waiting requests (``summary._node_utilisation``);
* over the window: decode and prefill tokens (the throughput block) and, over the whole run,
  the tokens computed (the router block's wasted share);
* per node and ``bucket_s`` bucket: the timeline's columns (``summary.timeline``);
* per node and monitor interval: the graded load sense (``summary.balance_over_time``);
* the inter-token-latency histogram (``LogHistogram.add_runs``, decode runs starting in the
  window) and the extrapolated steps,

and keeps of the state series only each node's last point (its value holds until the node's
next point, or the run's end). Memory is ``nodes x (buckets + intervals)`` numbers, whatever
the run's length. The bins run to ``horizon_s`` (the run cannot end later) and are cut at the
run's end by ``finish``.

The sums equal the whole-run figures up to floating-point summation order (relative
differences of order 1e-12; integer counts exactly), tested in ``tests/test_streaming_fold.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sim.metrics.recorder import LogHistogram
from sim.metrics.summary import split_by_node, spread

#: ``derive(runs) -> extrapolated steps``: adds the ``decode_tokens`` and ``flops`` columns
#: to a chunk of the run log (``sim.runner._derive_run_columns``)
Derive = Callable[[dict[str, np.ndarray]], int]

TIMELINE_SUMS = ("busy", "prefill_tokens", "decode_tokens", "running", "waiting", "kv")


@dataclass
class FoldedRunLog:
    """What ``RunLogFolder.finish`` returns: the sums, cut at the run's end."""

    util: dict[str, np.ndarray]  # per node, over the window (as summary._node_utilisation)
    decode_in_window: float
    prefill_in_window: float
    computed_tokens: float
    itl: LogHistogram
    extrapolated_steps: int
    timeline_edges: np.ndarray
    timeline: dict[str, np.ndarray]  # (nodes, buckets) sums; divide by the bucket width
    monitor_edges: np.ndarray
    sense: np.ndarray  # (nodes, intervals), the graded sense as balance_over_time has it


class RunLogFolder:
    """Accumulate the run log and state series chunk by chunk (see the module docstring).

    Args:
        n_nodes: nodes of the cluster.
        window_s: the measurement window ``[warmup_s, duration_s)``.
        horizon_s: the latest time the run can end (``duration_s + drain_timeout_s``).
        bucket_s: the timeline's bucket width (``metrics.bucket_s``).
        monitor_interval_s: the balance-over-time interval (``metrics.monitor_interval_s``).
        grade_on: the graded load sense (``metrics.grade_on``).
        kv_total_blocks, max_num_seqs, peak_flops: per node, as ``RunData`` has them.
        derive: adds the derived columns to a chunk of runs, returns its extrapolated steps.
    """

    def __init__(self, n_nodes: int, window_s: tuple[float, float], horizon_s: float,
                 bucket_s: float, monitor_interval_s: float, grade_on: str,
                 kv_total_blocks: np.ndarray, max_num_seqs: np.ndarray,
                 peak_flops: np.ndarray, derive: Derive):
        self.n = n_nodes
        self.window_s = window_s
        self.grade_on = grade_on
        self.kv_total_blocks = kv_total_blocks
        self.max_num_seqs = max_num_seqs
        self.peak_flops = peak_flops
        self.derive = derive
        self.horizon_s = horizon_s
        self._win = np.array(window_s, dtype=float)
        self._t_edges = np.arange(0.0, max(horizon_s, bucket_s) + bucket_s, bucket_s)
        self._m_edges = np.arange(0.0, max(horizon_s, monitor_interval_s) + monitor_interval_s,
                                  monitor_interval_s)
        self.util = {k: np.zeros(n_nodes) for k in ("busy", "tokens", "flops", "kv", "running",
                                                    "waiting")}
        self.timeline = {k: np.zeros((n_nodes, self._t_edges.size - 1)) for k in TIMELINE_SUMS}
        self.sense = np.zeros((n_nodes, self._m_edges.size - 1))
        self.decode_in_window = 0.0
        self.prefill_in_window = 0.0
        self.computed_tokens = 0.0
        self.itl = LogHistogram()
        self.extrapolated_steps = 0
        #: each node's last change point (t, waiting, running, kv), not yet integrated
        self._last: list[tuple[float, float, float, float] | None] = [None] * n_nodes
        self.rows_folded = 0

    # -- folding ------------------------------------------------------------------------------

    def fold(self, runs: dict[str, np.ndarray], states: dict[str, np.ndarray]) -> None:
        """Add a chunk of run rows and state rows (each in time order per node; the state rows
        must follow every state row of earlier chunks)."""
        a, b = self.window_s
        if runs["start_s"].size:
            runs = dict(runs)
            self.extrapolated_steps += self.derive(runs)
            win = self._win
            self.decode_in_window += float(spread(runs["start_s"], runs["end_s"],
                                                  runs["decode_tokens"].astype(float), win)[0])
            self.prefill_in_window += float(spread(runs["start_s"], runs["end_s"],
                                                   runs["prefill_tokens"].astype(float), win)[0])
            self.computed_tokens += float(runs["decode_tokens"].sum()
                                          + runs["prefill_tokens"].sum())
            in_window = (runs["start_s"] >= a) & (runs["start_s"] < b)
            self.itl.add_runs(runs["first_s"][in_window], runs["step_s"][in_window],
                              runs["iterations"][in_window], runs["decode_batch"][in_window])
            for node, r in enumerate(split_by_node(runs, self.n)):
                if r["start_s"].size:
                    self._fold_runs(node, r)
            self.rows_folded += int(runs["start_s"].size)
        if states["t_s"].size:
            for node, m in enumerate(split_by_node(states, self.n)):
                if m["t_s"].size:
                    self._fold_states(node, m)
            self.rows_folded += int(states["t_s"].size)

    def _fold_runs(self, node: int, r: dict[str, np.ndarray]) -> None:
        s, e = r["start_s"], r["end_s"]
        busy = e - s
        tokens = (r["decode_tokens"] + r["prefill_tokens"]).astype(float)
        win = self._win
        self.util["busy"][node] += spread(s, e, busy, win)[0]
        self.util["tokens"][node] += spread(s, e, tokens, win)[0]
        self.util["flops"][node] += spread(s, e, r["flops"], win)[0]
        tl, edges = self.timeline, self._t_edges
        tl["busy"][node] += spread(s, e, busy, edges)
        tl["prefill_tokens"][node] += spread(s, e, r["prefill_tokens"].astype(float), edges)
        tl["decode_tokens"][node] += spread(s, e, r["decode_tokens"].astype(float), edges)
        sense = self.grade_on
        if sense == "busy":
            self.sense[node] += spread(s, e, busy, self._m_edges)
        elif sense == "token_share":
            self.sense[node] += spread(s, e, tokens, self._m_edges)
        elif sense == "mfu":
            self.sense[node] += spread(s, e, r["flops"], self._m_edges)

    def _fold_states(self, node: int, m: dict[str, np.ndarray]) -> None:
        """Integrate each change point up to the node's next one; keep the last pending."""
        t = m["t_s"]
        cols = [m[k].astype(float) for k in ("waiting", "running", "kv_used_blocks")]
        last = self._last[node]
        if last is not None:
            t = np.concatenate([[last[0]], t])
            cols = [np.concatenate([[last[i + 1]], c]) for i, c in enumerate(cols)]
        self._last[node] = (float(t[-1]), *(float(c[-1]) for c in cols))  # type: ignore[assignment]
        if t.size > 1:
            self._integrate(node, t[:-1], t[1:], cols[0][:-1], cols[1][:-1], cols[2][:-1])

    def _integrate(self, node: int, t0: np.ndarray, t1: np.ndarray, waiting: np.ndarray,
                   running: np.ndarray, kv: np.ndarray) -> None:
        dt = t1 - t0
        win, edges = self._win, self._t_edges
        for key, v in (("waiting", waiting), ("running", running), ("kv", kv)):
            self.util[key][node] += spread(t0, t1, v * dt, win)[0]
            self.timeline[key][node] += spread(t0, t1, v * dt, edges)
        if self.grade_on in ("kv_occupancy", "batch_occupancy"):
            v = kv if self.grade_on == "kv_occupancy" else running
            self.sense[node] += spread(t0, t1, v * dt, self._m_edges)

    # -- the end ------------------------------------------------------------------------------

    def finish(self, end_s: float) -> FoldedRunLog:
        """Integrate each node's last change point to ``end_s``; cut the bins at ``end_s``."""
        for node, last in enumerate(self._last):
            if last is not None:
                t, waiting, running, kv = last
                self._integrate(node, np.array([t]), np.array([end_s]), np.array([waiting]),
                                np.array([running]), np.array([kv]))
                self._last[node] = None
        length = self.window_s[1] - self.window_s[0]
        util = dict(self.util)
        util["busy"] = util["busy"] / length
        for key in ("kv", "running", "waiting"):
            util[key] = util[key] / length
        bucket = self._t_edges[1] - self._t_edges[0]
        n_t = np.arange(0.0, max(end_s, bucket) + bucket, bucket).size
        step = self._m_edges[1] - self._m_edges[0]
        n_m = np.arange(0.0, max(end_s, step) + step, step).size
        m_edges = self._m_edges[:n_m]
        sense = self.sense[:, :n_m - 1]
        if self.grade_on != "token_share":  # as balance_over_time: token counts stay counts
            sense = sense / np.diff(m_edges)
        if self.grade_on == "mfu":
            sense = sense / self.peak_flops[:, None]
        elif self.grade_on == "kv_occupancy":
            sense = sense / self.kv_total_blocks[:, None]
        elif self.grade_on == "batch_occupancy":
            sense = sense / self.max_num_seqs[:, None]
        return FoldedRunLog(
            util=util, decode_in_window=self.decode_in_window,
            prefill_in_window=self.prefill_in_window, computed_tokens=self.computed_tokens,
            itl=self.itl, extrapolated_steps=self.extrapolated_steps,
            timeline_edges=self._t_edges[:n_t],
            timeline={k: v[:, :n_t - 1] for k, v in self.timeline.items()},
            monitor_edges=m_edges, sense=sense)

