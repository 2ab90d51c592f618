"""Synthetic request streams as numpy columns, and the registries of their components.

Importing this package registers the built-in arrival processes, length distributions, prefix
models and session models.
"""

from __future__ import annotations

from sim.workload import arrivals, lengths, prefixes, sessions
from sim.workload.base import Workload
from sim.workload.spec import WorkloadSpec, build_workload, check_workload_spec

__all__ = [
    "Workload",
    "WorkloadSpec",
    "arrivals",
    "build_workload",
    "check_workload_spec",
    "lengths",
    "prefixes",
    "sessions",
]
