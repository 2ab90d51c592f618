"""Tasks (one point x strategy x replication), their cache keys, and the worker function.

A task carries its point's resolved scenario pickled once per point (cost models included, so a
worker reads no profile file; a trace is read where the task runs), the strategy's index and
the replication. ``run_task`` is what every executor runs: it simulates and returns a small,
JSON-safe record (the run's summary and its stability verdict), never the per-request arrays.

The cache key is the SHA-256 of the resolved scenario as run (``model_dump``, without the
replication count, name and description, and with only this task's strategy), the
replication, its seed, the simlb version, ``RECORD_VERSION`` and the SHA-256 of every file the
run reads (profile JSON files and the trace, ``input_digests``): two sweeps that run the same
simulation share it, whatever their grids, and a profile or trace edited in place misses.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import sim
from sim.build import ResolvedScenario
from sim.outcome import UNFINISHED
from sim.results import dumps_json

#: bumped whenever what a record holds, or how it is computed, changes (old records then miss)
RECORD_VERSION = 2
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


def task_key(resolved: ResolvedScenario, choice: int, replication: int,
             inputs: list[str] | None = None) -> str:
    """The cache key of one task (see the module docstring); ``inputs``: the point's
    ``input_digests`` when already computed."""
    sc = resolved.scenario
    tree = sc.model_dump(mode="json")
    for key in ("replications", "name", "description"):  # they change no result
        tree.pop(key, None)
    tree["router"].pop("strategies", None)
    spec = resolved.strategies[choice].spec.model_dump(mode="json")
    text = dumps_json({"scenario": tree, "strategy": spec, "replication": replication,
                       "seed": sc.seed + replication, "simlb": sim.__version__,
                       "record": RECORD_VERSION,
                       "inputs": input_digests(resolved) if inputs is None else inputs})
    return hashlib.sha256(text.encode()).hexdigest()[:32]


#: (path, size, modification time) -> SHA-256 of the file, so each file is read once
_DIGESTS: dict[tuple[str, int, int], str] = {}


def input_digests(resolved: ResolvedScenario) -> list[str]:
    """SHA-256 of each file a run of ``resolved`` reads: the profile JSON of every node group
    with a profile cost model, and the trace (sorted; files that cannot be read are left to
    the run to report)."""
    paths: set[Path] = set()
    for spec in resolved.node_specs:
        profile = getattr(spec.cost, "profile", None)
        if getattr(profile, "path", None):
            paths.add(Path(profile.path))  # type: ignore[union-attr]
    trace = resolved.scenario.workload.trace
    if trace is not None:
        paths.add(trace.resolve_path(resolved.base_dir))
    return sorted(filter(None, (_digest(p) for p in paths)))


def _digest(path: Path) -> str | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    found = _DIGESTS.get(key)
    if found is None:
        sha = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                sha.update(block)
        found = _DIGESTS[key] = sha.hexdigest()
    return found


def point_tasks(index: int, resolved: ResolvedScenario) -> list[Task]:
    """Every (replication, strategy) task of one point, replication-major."""
    payload = pickle.dumps(resolved)
    inputs = input_digests(resolved)
    return [Task(task_key(resolved, i, k, inputs), index, i, k, c.label, payload)
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


#: the waiting queue grows when its mean over the last quarter of the measurement window
#: exceeds that over the first by this factor of the first's mean plus QUEUE_GROWTH_MIN
QUEUE_GROWTH_FACTOR = 2.0
QUEUE_GROWTH_MIN = 5.0


def stability(resolved: ResolvedScenario, requests: dict[str, np.ndarray]) -> dict[str, Any]:
    """Whether the run reached steady state; ``stable`` is False when any of these fail:

    * the waiting queue (requests arrived and not yet scheduled on a node, sampled at each
      arrival in the measurement window) does not grow: its mean over the window's last
      quarter exceeds that over its first quarter by at most ``QUEUE_GROWTH_FACTOR`` times
      the first's mean plus ``QUEUE_GROWTH_MIN`` requests;
    * end-to-end latency does not grow through the window
      (``sim.fidelity.score.overload_verdict``, the rule ``simlb fidelity`` uses);
    * every measured request finished before the drain timeout.
    """
    from sim.fidelity.score import overload_verdict

    sc = resolved.scenario
    arrival = requests["arrival_s"]
    measured = (arrival >= sc.warmup_s) & (arrival < sc.duration_s)
    e2e = requests["finish_s"][measured] - arrival[measured]
    unfinished = int(np.count_nonzero(requests["status"][measured] == UNFINISHED))
    seqs = sum(int(s.batcher.max_num_seqs) for s in resolved.node_specs)
    verdict = overload_verdict(arrival[measured], e2e, seqs)
    queue_growth = _queue_growth(requests, sc.warmup_s, sc.duration_s)
    queue_grows = queue_growth[0] > QUEUE_GROWTH_FACTOR * queue_growth[1] + QUEUE_GROWTH_MIN
    growing = bool(verdict.growing or queue_grows)
    return {"stable": not growing and unfinished == 0, "growing": growing,
            "saturated": bool(verdict.saturated), "unfinished": unfinished,
            "queue_growth": queue_growth[0]}


def _queue_growth(requests: dict[str, np.ndarray], a: float, b: float) -> tuple[float, float]:
    """(mean waiting requests over the last quarter of [a, b) minus over the first, the
    first quarter's mean), sampled at arrivals (Poisson arrivals see time averages).
    Requests that will never be scheduled (rejected, failed) are left out."""
    arrival, start = requests["arrival_s"], requests["first_scheduled_s"]
    keep = np.isfinite(start) | (requests["status"] == UNFINISHED)
    arrival = np.sort(arrival[keep])
    start = np.sort(np.where(np.isfinite(start[keep]), start[keep], np.inf))
    quarter = (b - a) / 4
    means = []
    for lo in (a, b - quarter):
        at = arrival[(arrival >= lo) & (arrival < lo + quarter)]
        if at.size == 0:
            return 0.0, 0.0
        waiting = np.searchsorted(arrival, at, "right") - np.searchsorted(start, at, "right")
        means.append(float(waiting.mean()))
    return means[1] - means[0], means[0]
