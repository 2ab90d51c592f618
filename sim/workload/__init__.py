"""Request streams as numpy columns: synthetic generators, trace replay, statistics, twins.

Importing this package registers the built-in arrival processes, length distributions, prefix
models and session models. ``traces`` reads and replays published request traces,
``trace_stats`` describes any request stream and ``twin`` fits a synthetic workload to one.
"""

from __future__ import annotations

from sim.workload import arrivals, lengths, prefixes, sessions
from sim.workload.base import Workload
from sim.workload.spec import WorkloadSpec, build_workload, check_workload_spec
from sim.workload.trace_stats import TraceStats, prefix_reuse, trace_stats
from sim.workload.traces import TraceSpec, check_trace, read_trace, trace_workload
from sim.workload.twin import fit_twin

__all__ = [
    "TraceSpec",
    "TraceStats",
    "Workload",
    "WorkloadSpec",
    "arrivals",
    "build_workload",
    "check_trace",
    "check_workload_spec",
    "fit_twin",
    "lengths",
    "prefix_reuse",
    "prefixes",
    "read_trace",
    "sessions",
    "trace_stats",
    "trace_workload",
]
