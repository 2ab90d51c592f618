"""Append-only records the model writes while it runs.

The model only appends numbers here; every statistic is computed afterwards by
``sim.metrics.summary``. Columns are ``array.array`` (8 bytes per value, cheap appends), so a
million-request run stays far below a gigabyte of records.

* ``states``: the change-point series of each node: at every node event the time, the
  number of waiting and running requests and the KV blocks in use. Values hold until the next
  point of the same node (KV growth inside a fast-forwarded decode run is booked when the run
  ends, so time-weighted KV occupancy is low by at most half of one run's growth).
* ``runs``: one row per iteration or fast-forwarded run (see ``RUN_COLUMNS``).

The inter-token latency histogram (``LogHistogram``, 0.5 % resolution) is built from the run
rows afterwards: each decode iteration yields one sample per decoding request, equal to the
iteration's duration; preemption gaps are added from the batchers.
"""

from __future__ import annotations

import math
from array import array

import numpy as np


class LogHistogram:
    """Counts on log-spaced bins, with weighted and arithmetic-sequence insertion."""

    def __init__(self, low: float = 1e-6, high: float = 1e4, ratio: float = 1.01):
        self.low = low
        self.ratio = ratio
        self._log_low = math.log(low)
        self._log_ratio = math.log(ratio)
        self.n_bins = math.ceil(math.log(high / low) / self._log_ratio) + 1
        self.counts = [0] * self.n_bins
        self.total = 0

    def _bin(self, x: float) -> int:
        if x <= self.low:
            return 0
        i = int((math.log(x) - self._log_low) / self._log_ratio)
        return i if i < self.n_bins else self.n_bins - 1

    def add(self, x: float, weight: int = 1) -> None:
        """Add ``weight`` samples of value ``x``."""
        self.counts[self._bin(x)] += weight
        self.total += weight

    def add_arithmetic(self, first: float, step: float, k: int, weight: int) -> None:
        """Add ``weight`` samples of each of ``first + step*j`` for ``j`` in ``0..k-1``."""
        if k <= 0 or weight <= 0:
            return
        b0 = self._bin(first)
        b1 = self._bin(first + step * (k - 1)) if step > 0 else b0
        counts = self.counts
        if b0 == b1:
            counts[b0] += weight * k
        else:
            done = 0
            for b in range(b0, b1):
                edge = math.exp(self._log_low + (b + 1) * self._log_ratio)
                upto = min(k, max(done, math.ceil((edge - first) / step)))
                counts[b] += weight * (upto - done)
                done = upto
            counts[b1] += weight * (k - done)
        self.total += weight * k

    def add_runs(self, first: np.ndarray, step: np.ndarray, k: np.ndarray,
                 weight: np.ndarray) -> None:
        """``add_arithmetic`` for many runs at once (vectorised where a run stays in one bin)."""
        keep = (k > 0) & (weight > 0)
        first, step, k, weight = first[keep], step[keep], k[keep], weight[keep]
        if first.size == 0:
            return
        b0 = self._bins(first)
        b1 = self._bins(first + step * (k - 1))
        same = b0 == b1
        np.add.at(counts := np.zeros(self.n_bins, dtype=np.int64), b0[same],
                  (weight * k)[same])
        self.counts = [int(c) + x for c, x in zip(counts, self.counts, strict=True)]
        self.total += int((weight * k)[same].sum())
        for i in np.flatnonzero(~same):
            self.add_arithmetic(float(first[i]), float(step[i]), int(k[i]), int(weight[i]))

    def _bins(self, x: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            idx = np.floor((np.log(np.maximum(x, self.low)) - self._log_low) / self._log_ratio)
        return np.clip(idx, 0, self.n_bins - 1).astype(np.int64)

    def quantiles(self, qs: list[float]) -> list[float]:
        """Approximate quantiles (bin geometric centres); NaN when empty."""
        if self.total == 0:
            return [math.nan] * len(qs)
        cum = np.cumsum(self.counts)
        centres = np.exp(self._log_low + (np.arange(self.n_bins) + 0.5) * self._log_ratio)
        idx = np.searchsorted(cum, [q * self.total for q in qs], side="left")
        return [float(centres[min(i, self.n_bins - 1)]) for i in idx]

    def mean(self) -> float:
        """Approximate mean from bin centres."""
        if self.total == 0:
            return math.nan
        centres = np.exp(self._log_low + (np.arange(self.n_bins) + 0.5) * self._log_ratio)
        return float(np.dot(self.counts, centres) / self.total)


#: columns of the iteration log, in the order ``Recorder.run`` appends them
RUN_COLUMNS = ("start_s", "end_s", "node", "iterations", "decode_batch", "n_chunks",
               "prefill_tokens", "prefill_pairs", "decode_ctx_tokens", "first_s", "step_s")
#: columns of the node change-point series
STATE_COLUMNS = ("t_s", "node", "waiting", "running", "kv_used_blocks")


class Recorder:
    """Rows appended by the nodes during one simulation, as flat float64 arrays.

    ``run`` rows: start and end time, node, iterations in the row, decode batch size, prefill
    chunks, prefill tokens and causal pairs, decode context tokens summed over the iterations,
    and the duration of the first iteration and its per-iteration increase (iteration ``j`` of
    a fast-forwarded decode run lasts ``first_s + step_s * j``).
    """

    def __init__(self, n_nodes: int, window_s: tuple[float, float]):
        self.n_nodes = n_nodes
        self.window_s = window_s
        self.states = array("d")
        self.runs = array("d")

    @staticmethod
    def _frame(values: array, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Columns as strided views of the recorded buffer (no copy of the float columns)."""
        table = np.frombuffer(values, dtype=np.float64).reshape(-1, len(columns))
        return {name: table[:, i] for i, name in enumerate(columns)}

    def state_frame(self) -> dict[str, np.ndarray]:
        """The change-point series as numpy columns (integers where they are counts)."""
        frame = self._frame(self.states, STATE_COLUMNS)
        for name in STATE_COLUMNS[1:]:
            frame[name] = frame[name].astype(np.int64)
        return frame

    def take(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The run rows and state rows recorded so far, as copied frames (``run_frame``,
        ``state_frame``), and empty the buffers in place (the nodes keep appending to the same
        arrays): what a run that folds its records as it goes takes each time."""
        runs, states = self._copy(self.runs, RUN_COLUMNS), self._copy(self.states, STATE_COLUMNS)
        del self.runs[:]
        del self.states[:]
        for name in ("node", "iterations", "decode_batch", "n_chunks", "prefill_tokens"):
            runs[name] = runs[name].astype(np.int64)
        for name in STATE_COLUMNS[1:]:
            states[name] = states[name].astype(np.int64)
        return runs, states

    @staticmethod
    def _copy(values: array, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
        table = np.array(values, dtype=np.float64).reshape(-1, len(columns))
        return {name: table[:, i] for i, name in enumerate(columns)}

    def run_frame(self) -> dict[str, np.ndarray]:
        """The iteration log as numpy columns."""
        frame = self._frame(self.runs, RUN_COLUMNS)
        for name in ("node", "iterations", "decode_batch", "n_chunks", "prefill_tokens"):
            frame[name] = frame[name].astype(np.int64)
        return frame
