"""Herding: balance over short windows and bursts, from the request records after a run.

Utilisation balance is an average over the run: a router that sends every burst of
simultaneous arrivals to one node, a different node each time, looks perfectly balanced
although each burst queues on one node. Herding measures the spread of *dispatches* over
short spans. Definitions (over the dispatched requests that arrived in the measurement window;
``N`` nodes):

* groups: aligned windows ``[k w, (k + 1) w)`` of ``window_s`` (1 s), and bursts: maximal runs
  of arrivals whose consecutive gaps are at most ``burst_gap_s`` (5 ms; simultaneous and
  near-simultaneous arrivals). Only groups of at least 2 dispatches count.
* per group of ``k`` dispatches: the largest share one node receives, ``m / k``; the best
  possible share ``c / k`` with ``c = ceil(k / N)``; the CV of the dispatch counts over the
  ``N`` nodes (population std over mean, nodes that received none included) and the best
  possible CV (counts differing by at most one);
* herding index of a group: ``(m - c) / (k - c)`` (0 when ``k <= N`` spread one per node, or
  in general as even as possible; 1 when all ``k`` go to one node; 0 when ``k == c``);
* the figures per kind (``window_*``, ``burst_*``): means over groups weighted by ``k`` (the
  share of dispatches), so they read "a typical dispatch is in a group where ...";
* ``index``: the larger of the window and burst indices; ``grade``: Excellent below 0.2,
  Good below 0.35, Fair below 0.5, else Poor. ``fold_grade`` makes the balance grade the worse
  of the utilisation-CV grade and this one.

Round robin scores 0; uniform random routing 0.1 to 0.25 over 8 nodes (Poisson arrivals at
40 req/s: 0.15; bursts of 8 simultaneous arrivals: 0.23); a router sending whole bursts to one
node scores 1. The measure
assumes nodes of equal capacity serving every request: on heterogeneous or multi-model
clusters an uneven spread may be right.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Window width and burst gap, seconds.
WINDOW_S = 1.0
BURST_GAP_S = 0.005
#: Herding-index limits of the grades (below the limit: that grade).
HERDING_GRADES = ((0.2, "Excellent"), (0.35, "Good"), (0.5, "Fair"))
GRADE_ORDER = ("Excellent", "Good", "Fair", "Poor")


def herding(arrival_s: np.ndarray, node: np.ndarray, n_nodes: int, *,
            window_s: float = WINDOW_S, burst_gap_s: float = BURST_GAP_S) -> dict[str, Any]:
    """Herding figures of dispatches (module docstring); ``node < 0`` (not dispatched) is
    left out. ``arrival_s`` must be sorted. Figures are ``None`` without a group."""
    keep = node >= 0
    t, v = np.asarray(arrival_s, dtype=np.float64)[keep], np.asarray(node, np.int64)[keep]
    out: dict[str, Any] = {"window_s": window_s, "burst_gap_s": burst_gap_s, "nodes": n_nodes}
    windows = np.floor(t / window_s).astype(np.int64)
    out.update(_figures("window", windows, v, n_nodes))
    out.update(_figures("burst", _burst_ids(t, burst_gap_s), v, n_nodes))
    return _with_index(out)


def herding_grade(index: float | None) -> str | None:
    """The grade of a herding index (``None`` without one)."""
    if index is None:
        return None
    for limit, name in HERDING_GRADES:
        if index < limit:
            return name
    return "Poor"


def fold_grade(utilization: dict[str, Any], herd: dict[str, Any]) -> dict[str, Any]:
    """Return ``utilization`` with its ``grade`` block folded: ``cv_grade`` keeps the grade of
    the utilisation CV, ``herding_index`` and ``herding_grade`` are added, and ``grade``
    becomes the worse of the two (the CV grade alone when there is no herding figure)."""
    block = dict(utilization["grade"])
    block["cv_grade"] = block["grade"]
    block["herding_index"] = herd["index"]
    block["herding_grade"] = herd["grade"]
    if herd["grade"] is not None:
        block["grade"] = max(block["grade"], herd["grade"], key=GRADE_ORDER.index)
    return {**utilization, "grade": block}


#: the k-weighted sums behind each kind's figures (``_group_sums``)
_SUMS = ("groups", "requests", "top", "best", "cv", "cv_best", "index")


def _figures(kind: str, group: np.ndarray, node: np.ndarray, n: int) -> dict[str, Any]:
    """Weighted figures of the groups (``group`` non-decreasing) with >= 2 dispatches."""
    return _figures_of(kind, _group_sums(group, node, n))


def _group_sums(group: np.ndarray, node: np.ndarray, n: int) -> np.ndarray:
    """Over the groups with >= 2 dispatches: their number, their dispatches ``k``, and the
    sums of ``k`` times each figure (largest share, best share, CV, best CV, index); figures
    are these sums over ``k``'s sum, so sums of disjoint groups add up."""
    k, top, sumsq = _group_counts(group, node)
    many = k >= 2
    k, top, sumsq = k[many], top[many], sumsq[many]
    if k.shape[0] == 0 or n < 1:
        return np.zeros(len(_SUMS))
    best = -(-k // n)  # ceil(k / n)
    mean = k / n
    cv = np.sqrt(np.maximum(sumsq / n - mean**2, 0.0)) / mean
    q, r = k // n, k % n
    cv_best = np.sqrt(np.maximum(((n - r) * q**2 + r * (q + 1) ** 2) / n - mean**2, 0.0)) / mean
    spare = k - best
    index = np.where(spare > 0, (top - best) / np.where(spare > 0, spare, 1), 0.0)
    return np.array([k.shape[0], k.sum(), top.sum(), best.sum(), k @ cv, k @ cv_best,
                     k @ index], dtype=np.float64)


def _figures_of(kind: str, sums: np.ndarray) -> dict[str, Any]:
    groups, total = int(sums[0]), sums[1]
    if groups == 0:
        names = ("max_share", "max_share_ideal", "cv", "cv_ideal", "index")
        return {f"{kind}s": 0, f"{kind}_requests": 0} | {f"{kind}_{x}": None for x in names}
    return {f"{kind}s": groups, f"{kind}_requests": int(total),
            f"{kind}_max_share": float(sums[2] / total),
            f"{kind}_max_share_ideal": float(sums[3] / total),
            f"{kind}_cv": float(sums[4] / total), f"{kind}_cv_ideal": float(sums[5] / total),
            f"{kind}_index": _clean(float(sums[6] / total))}


def _with_index(out: dict[str, Any]) -> dict[str, Any]:
    indices = [x for x in (out["window_index"], out["burst_index"]) if x is not None]
    out["index"] = max(indices) if indices else None
    out["grade"] = herding_grade(out["index"])
    return out


class HerdingStream:
    """``herding`` over dispatches given in arrival-ordered chunks (a streamed run's pages).

    Complete windows and bursts are reduced to their sums (``_group_sums``) as chunks come;
    the rows of the last, possibly open, window and burst are carried to the next chunk, so
    the figures equal ``herding`` over the concatenated chunks (up to float summation order).
    """

    def __init__(self, n_nodes: int, *, window_s: float = WINDOW_S,
                 burst_gap_s: float = BURST_GAP_S):
        self.n_nodes = n_nodes
        self.window_s = window_s
        self.burst_gap_s = burst_gap_s
        empty = (np.zeros(0), np.zeros(0, dtype=np.int64))
        self._open = {"window": empty, "burst": empty}
        self._sums = {"window": np.zeros(len(_SUMS)), "burst": np.zeros(len(_SUMS))}

    def add(self, arrival_s: np.ndarray, node: np.ndarray) -> None:
        """Fold the next chunk (arrivals sorted, after every earlier chunk's)."""
        keep = np.asarray(node) >= 0
        t = np.asarray(arrival_s, dtype=np.float64)[keep]
        v = np.asarray(node, dtype=np.int64)[keep]
        for kind in ("window", "burst"):
            ot, ov = self._open[kind]
            tt, vv = np.concatenate([ot, t]), np.concatenate([ov, v])
            group = self._groups(kind, tt)
            if group.shape[0] == 0:
                continue
            cut = int(np.searchsorted(group, group[-1], side="left"))
            self._sums[kind] += _group_sums(group[:cut], vv[:cut], self.n_nodes)
            self._open[kind] = (tt[cut:], vv[cut:])

    def figures(self) -> dict[str, Any]:
        """The figures of ``herding`` over every chunk added (the open groups closed)."""
        out: dict[str, Any] = {"window_s": self.window_s, "burst_gap_s": self.burst_gap_s,
                               "nodes": self.n_nodes}
        for kind in ("window", "burst"):
            t, v = self._open[kind]
            sums = self._sums[kind] + _group_sums(self._groups(kind, t), v, self.n_nodes)
            out.update(_figures_of(kind, sums))
        return _with_index(out)

    def _groups(self, kind: str, t: np.ndarray) -> np.ndarray:
        if kind == "window":
            return np.floor(t / self.window_s).astype(np.int64)
        return _burst_ids(t, self.burst_gap_s)


def _burst_ids(t: np.ndarray, gap_s: float) -> np.ndarray:
    """Burst number of each sorted arrival: a new burst after a gap above ``gap_s``."""
    bursts = np.zeros(t.shape[0], dtype=np.int64)
    if t.shape[0] > 1:
        np.cumsum(np.diff(t) > gap_s, out=bursts[1:])
    return bursts


def _group_counts(group: np.ndarray, node: np.ndarray,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group: dispatches, the largest count on one node, the sum of squared counts."""
    if group.shape[0] == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    order = np.lexsort((node, group))
    g, v = group[order], node[order]
    first = np.ones(g.shape[0], dtype=bool)
    first[1:] = (np.diff(g) != 0) | (np.diff(v) != 0)
    starts = np.flatnonzero(first)
    count = np.diff(np.append(starts, g.shape[0]))
    pair_group = g[starts]
    new_group = np.ones(starts.shape[0], dtype=bool)
    new_group[1:] = np.diff(pair_group) != 0
    bounds = np.flatnonzero(new_group)
    return (np.add.reduceat(count, bounds), np.maximum.reduceat(count, bounds),
            np.add.reduceat(count * count, bounds))


def _clean(x: float) -> float:
    """Round away float noise below 1e-12 (a perfect spread reads 0, not 1e-17)."""
    return 0.0 if abs(x) < 1e-12 or not math.isfinite(x) else x
