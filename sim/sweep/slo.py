"""SLOs of a capacity search (``--slo ttft_p99_s=1``) and whether a run meets them.

A latency SLO is ``<metric>_<statistic>_s=LIMIT`` with metric ``ttft``, ``tpot``, ``e2e``,
``itl`` or ``queueing`` and statistic ``p50``, ``p90``, ``p95``, ``p99``, ``p999`` (p99.9),
``mean`` or ``max``, read from the run's summary (``latency_s.<metric>.<statistic>``) and met
when at most LIMIT seconds. ``attainment=FRACTION`` asks that at least that fraction of
measured requests meet the scenario's own per-request ``slo`` block. A run meets the SLOs only
if it is also stable (``sim.sweep.tasks.stability``): a queue growing through the run, or
measured requests unfinished at the drain timeout, fail it whatever its percentiles say.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sim.sweep import SweepError

METRICS = ("ttft", "tpot", "e2e", "itl", "queueing")
STATISTICS = {"p50": "p50", "p90": "p90", "p95": "p95", "p99": "p99", "p999": "p99.9",
              "mean": "mean", "max": "max"}


@dataclass(frozen=True)
class Slo:
    """One objective: a summary figure and its bound."""

    name: str
    path: tuple[str, ...]
    limit: float
    at_most: bool = True

    def value(self, summary: dict[str, Any]) -> float:
        """The run's figure (NaN when absent)."""
        node: Any = summary
        for key in self.path:
            if not isinstance(node, dict) or key not in node:
                return math.nan
            node = node[key]
        return float(node) if isinstance(node, int | float) else math.nan

    def ratio(self, summary: dict[str, Any]) -> float:
        """Figure over limit, oriented so that at most 1 meets the SLO (NaN: failed)."""
        v = self.value(summary)
        if not math.isfinite(v):
            return math.nan
        if self.at_most:
            return v / self.limit
        return self.limit / v if v > 0 else math.inf


def _valid() -> str:
    return (f"<{'|'.join(METRICS)}>_<{'|'.join(STATISTICS)}>_s=SECONDS or "
            f"attainment=FRACTION")


def parse_slo(spec: str) -> Slo:
    """One ``--slo NAME=VALUE``.

    Raises:
        SweepError: an unknown metric or statistic, or a value that is not a positive number.
    """
    name, eq, text = spec.partition("=")
    name = name.strip()
    try:
        limit = float(text)
    except ValueError:
        limit = math.nan
    if not eq or not math.isfinite(limit) or limit <= 0:
        raise SweepError(f"expected NAME=VALUE with a positive number, got {spec!r} "
                         f"({_valid()})", field="--slo")
    if name == "attainment":
        if limit > 1:
            raise SweepError(f"expected a fraction in (0, 1], got {limit:g}",
                             field="--slo attainment")
        return Slo(name, ("slo", "attainment", "all"), limit, at_most=False)
    parts = name.split("_")
    if len(parts) != 3 or parts[0] not in METRICS or parts[1] not in STATISTICS \
            or parts[2] != "s":
        raise SweepError(f"unknown SLO metric {name!r}; expected {_valid()}", field="--slo")
    return Slo(name, ("latency_s", parts[0], STATISTICS[parts[1]]), limit)


def parse_slos(specs: Sequence[str]) -> list[Slo]:
    """Every ``--slo``; at least one, each name once."""
    if not specs:
        raise SweepError(f"expected at least one --slo ({_valid()})", field="--slo")
    slos = [parse_slo(s) for s in specs]
    names = [s.name for s in slos]
    for name in names:
        if names.count(name) > 1:
            raise SweepError(f"{name} given twice; expected each SLO once", field="--slo")
    return slos


def verdict(slos: Sequence[Slo], record: dict[str, Any]) -> tuple[bool, float]:
    """(meets every SLO and is stable, worst ratio of figure to limit)."""
    ratios = [s.ratio(record["summary"]) for s in slos]
    worst = max((r if math.isfinite(r) else math.inf for r in ratios), default=math.inf)
    stable = bool((record.get("stability") or {}).get("stable", False))
    return stable and worst <= 1.0, worst
