"""Tasks (one point x strategy x replication), their cache keys, and the worker function.

A task carries its point's resolved scenario pickled once per point (cost models included, so a
worker reads no profile file; a trace is read where the task runs), the strategy's index and
the replication. ``run_task`` is what every executor runs: it simulates and returns a small,
JSON-safe record (the run's summary and its stability verdict), never the per-request arrays.

The cache key is the SHA-256 of the resolved scenario as run (``model_dump``, without the
replication count, name and description, and with only this task's strategy), the replication, its seed and the simlb
version: two sweeps that run the same simulation share it, whatever their grids. It does not
hash the content of profile or trace files (a profile edited in place keeps its key: clear the
cache folder, or use ``--no-cache``).
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

import sim
from sim.build import ResolvedScenario
from sim.outcome import UNFINISHED
from sim.results import dumps_json

#: per worker process: payload digest -> unpickled scenario (a few points at a time)
_RESOLVED: dict[str, ResolvedScenario] = {}
_KEEP = 8


@dataclass(frozen=True)
class Task:
    """One simulation to run: ``payload`` is the point's pickled ``ResolvedScenario``."""

    key: str
    point: int
    choice: int
    replication: int
    label: str
    payload: bytes


def task_key(resolved: ResolvedScenario, choice: int, replication: int) -> str:
    """The cache key of one task (see the module docstring)."""
    sc = resolved.scenario
    tree = sc.model_dump(mode="json")
    for key in ("replications", "name", "description"):  # they change no result
        tree.pop(key, None)
    tree["router"].pop("strategies", None)
    spec = resolved.strategies[choice].spec.model_dump(mode="json")
    text = dumps_json({"scenario": tree, "strategy": spec, "replication": replication,
                       "seed": sc.seed + replication, "simlb": sim.__version__})
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def point_tasks(index: int, resolved: ResolvedScenario) -> list[Task]:
    """Every (replication, strategy) task of one point, replication-major."""
    payload = pickle.dumps(resolved)
    return [Task(task_key(resolved, i, k), index, i, k, c.label, payload)
            for k in range(resolved.scenario.replications)
            for i, c in enumerate(resolved.strategies)]


def _scenario(payload: bytes) -> ResolvedScenario:
    digest = hashlib.sha1(payload).hexdigest()
    found = _RESOLVED.get(digest)
    if found is None:
        if len(_RESOLVED) >= _KEEP:
            _RESOLVED.pop(next(iter(_RESOLVED)))
        found = _RESOLVED[digest] = pickle.loads(payload)
    return found


def run_task(payload: bytes, choice: int, replication: int) -> dict[str, Any]:
    """Simulate one task and return its record: ``summary`` (JSON-safe), ``stability``
    (``stability``), and ``wall_s`` and ``cpu_s`` (of this worker; not in the table). Runs
    in any process that can import simlb."""
    from sim.app import replication_workload
    from sim.runner import simulate

    started, cpu = time.perf_counter(), time.process_time()
    resolved = _scenario(payload)
    workload = replication_workload(resolved, replication)
    result = simulate(resolved, resolved.strategies[choice], replication, workload)
    record = {"summary": result.summary,
              "stability": stability(resolved, result.requests),
              "wall_s": time.perf_counter() - started,
              "cpu_s": time.process_time() - cpu}
    return json.loads(dumps_json(record))  # the bytes a cached record reads back as


def stability(resolved: ResolvedScenario, requests: dict[str, np.ndarray]) -> dict[str, Any]:
    """Whether the run reached steady state: the queue does not grow through the
    measurement window (``sim.fidelity.score.overload_verdict`` on the measured requests'
    arrival and end-to-end times) and every measured request finished before the drain
    timeout. ``stable`` is False when either fails."""
    from sim.fidelity.score import overload_verdict

    sc = resolved.scenario
    arrival = requests["arrival_s"]
    measured = (arrival >= sc.warmup_s) & (arrival < sc.duration_s)
    e2e = requests["finish_s"][measured] - arrival[measured]
    unfinished = int(np.count_nonzero(requests["status"][measured] == UNFINISHED))
    seqs = sum(int(s.batcher.max_num_seqs) for s in resolved.node_specs)
    verdict = overload_verdict(arrival[measured], e2e, seqs)
    growth = verdict.growth_s / verdict.base_s if verdict.base_s > 0 else math.nan
    return {"stable": not verdict.growing and unfinished == 0,
            "growing": bool(verdict.growing), "saturated": bool(verdict.saturated),
            "unfinished": unfinished, "growth_ratio": growth}
