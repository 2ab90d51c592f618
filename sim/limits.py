"""Size limits: estimate how large a run will be when its scenario loads, and refuse a run
beyond the limits before anything is allocated.

A scenario with finite but huge values (a billion requests per second, a bucket of a
nanosecond, MMPP sojourns of a picosecond, 10^30 nodes) would otherwise crash deep inside numpy
or SimPy, or eat all memory. ``estimate`` computes, per replication, from the analytic rates of
the workload (nothing is drawn):

* ``requests``: expected requests, ``E[N(0, duration_s)]`` of the arrival process (times the
  mean turns per session with sessions; a replayed trace with ``target_rate_rps`` and ``loop``:
  rate x duration; other traces are bounded by their file and checked once read);
* ``arrival_draws``: random draws of the arrival process beyond one per request (MMPP sojourns,
  periodic pieces);
* ``nodes``: nodes of the cluster;
* ``runs``: simulations, replications x strategies (not per replication);
* ``timeline_rows``: nodes x ``metrics.bucket_s`` buckets over ``duration_s + drain_timeout_s``;
* ``monitor_samples``: nodes x ``metrics.monitor_interval_s`` intervals over the same horizon.

``check`` compares them with the scenario's ``limits`` block (``LimitsSpec``; its defaults
keep a run within a few GB of memory) and raises a one-line ``ScenarioError`` naming the limit
to raise. ``simlb run --no-limits`` and ``simlb validate --no-limits`` skip the check.
"""

from __future__ import annotations

import math
from pathlib import Path

from sim.errors import ScenarioError
from sim.scenario import LimitsSpec, Scenario
from sim.spec import build_params
from sim.workload.arrivals import arrivals

#: the limit each estimate is checked against, with what to change to get under it
_WHAT = {
    "requests": ("max_requests", "expected requests per replication",
                 "lower the arrival rate or duration_s"),
    "arrival_draws": ("max_arrival_draws", "arrival-process draws (sojourns, pieces)",
                      "lengthen the sojourns or pieces"),
    "nodes": ("max_nodes", "nodes", "lower cluster.node_groups.*.count"),
    "timeline_rows": ("max_timeline_rows", "timeline rows (nodes x metrics.bucket_s buckets "
                      "over duration_s + drain_timeout_s)", "raise metrics.bucket_s"),
    "runs": ("max_runs", "simulations (replications x strategies)",
             "lower replications or the strategies"),
    "monitor_samples": ("max_monitor_samples", "balance samples (nodes x "
                        "metrics.monitor_interval_s intervals over duration_s + "
                        "drain_timeout_s)", "raise metrics.monitor_interval_s"),
}


def estimate(scenario: Scenario) -> dict[str, float]:
    """The expected size of one replication of ``scenario`` (see the module docstring).

    The scenario must have passed schema validation; component parameters that do not
    validate are left to ``sim.build`` to report (their estimate is 0).
    """
    sc = scenario
    nodes = float(sum(g.count for g in sc.cluster.node_groups))
    horizon = sc.duration_s + sc.drain_timeout_s
    requests, draws = _workload_size(sc)
    return {
        "requests": requests,
        "arrival_draws": draws,
        "nodes": nodes,
        "runs": float(sc.replications * len(sc.router.strategies)),
        "timeline_rows": nodes * (horizon / sc.metrics.bucket_s + 1),
        "monitor_samples": nodes * (horizon / sc.metrics.monitor_interval_s + 1),
    }


def _workload_size(sc: Scenario) -> tuple[float, float]:
    """Expected requests and extra arrival draws of one replication."""
    w = sc.workload
    if w.trace is not None:
        t = w.trace
        if t.loop and t.target_rate_rps is not None:
            return t.target_rate_rps * sc.duration_s, 0.0
        if t.max_requests is not None and not t.loop:
            return float(t.max_requests), 0.0
        return 0.0, 0.0  # bounded by the file; checked once read (``check_requests``)
    if w.arrivals is None:
        return 0.0, 0.0
    try:
        cls, params = build_params(arrivals, w.arrivals, "workload.arrivals")
        process = cls(params)
    except (ScenarioError, ArithmeticError, ValueError):
        return 0.0, 0.0  # sim.build reports bad parameters with their path
    try:
        starts = float(process.expected_count(sc.duration_s))
        draws = float(process.expected_draws(sc.duration_s))
    except ArithmeticError:  # a count beyond floating point
        return math.inf, math.inf
    if w.sessions is not None:
        turns = w.sessions.params.get("turns") if isinstance(w.sessions.params, dict) else None
        mean_turns = _mean_turns(turns)
        starts *= mean_turns
    return starts, draws


def _mean_turns(turns: object) -> float:
    """Mean turns per session of a ``sessions.params.turns`` block (1 when unknown)."""
    from sim.spec import ComponentSpec
    from sim.workload.lengths import lengths

    try:
        spec = ComponentSpec.model_validate(turns)
        cls, params = build_params(lengths, spec, "workload.sessions.params.turns")
        return max(1.0, float(cls(params).mean()))
    except (ScenarioError, ValueError, TypeError, ArithmeticError):  # sim.build reports it
        return 1.0


def check(scenario: Scenario, source: str | Path,
          skip: tuple[str, ...] = ()) -> dict[str, float]:
    """Refuse a scenario whose estimated size exceeds its ``limits``; return the estimate.
    ``skip``: estimates not to check (``requests`` for a streamed run, whose memory does not
    grow with them).

    Raises:
        ScenarioError: naming ``source``, the limit (``limits.<key>``), the estimate and what
            to change.
    """
    sizes = estimate(scenario)
    limits: LimitsSpec = scenario.limits
    for key, value in sizes.items():
        if key in skip:
            continue
        name, what, fix = _WHAT[key]
        limit = getattr(limits, name)
        if not math.isfinite(value) or value > limit:
            shown = "more than 1e308" if not math.isfinite(value) else f"{value:.3g}"
            raise ScenarioError(
                f"the run would need {shown} {what}, above the limit {limit:,}; {fix}, or "
                f"raise limits.{name} (or run with --no-limits)", source=str(source),
                field=f"limits.{name}")
    return sizes


def check_requests(scenario: Scenario, n: int, source: str | Path) -> None:
    """Refuse a generated (or replayed) workload of ``n`` requests beyond
    ``limits.max_requests`` (for traces, whose size is known only once read)."""
    limit = scenario.limits.max_requests
    if n > limit:
        raise ScenarioError(f"the workload has {n:,} requests per replication, above the "
                            f"limit {limit:,}; shorten duration_s or the trace window, or "
                            f"raise limits.max_requests (or run with --no-limits)",
                            source=str(source), field="limits.max_requests")
