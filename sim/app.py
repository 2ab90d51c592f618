"""The library behind ``simlb run`` and ``simlb validate``: load, resolve, run, write."""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import simpy

import sim
import sim.limits
from sim.build import ResolvedScenario, resolve
from sim.errors import ScenarioError
from sim.results import check_writable, run_dir, write_run
from sim.runner import Progress, RunResult, simulate, workload_for
from sim.scenario import apply_override, parse_scenario, read_raw
from sim.workload.base import Workload

#: (label, replication) -> progress callback, or None
ProgressFactory = Callable[[str, int], Progress | None]


def load(path: Path, overrides: Sequence[str] = (), *, seed: int | None = None,
         replications: int | None = None, strategies: Sequence[str] = (),
         limits: bool = True) -> ResolvedScenario:
    """Read, override, validate and resolve a scenario file; with ``limits``, refuse a run
    whose estimated size exceeds the scenario's ``limits`` (``sim.limits``).

    Raises:
        ScenarioError: any problem with the file, an override or a ``--strategy`` name, or a
            run beyond a size limit; the message names ``path``, the field and what was
            expected.
    """
    raw = read_raw(path)
    for assignment in overrides:
        try:
            apply_override(raw, assignment)
        except ScenarioError as exc:
            raise ScenarioError(exc.detail, source=str(path), field=exc.field) from None
    if seed is not None:
        raw["seed"] = seed
    if replications is not None:
        raw["replications"] = replications
    scenario = parse_scenario(raw, str(path))
    if limits:
        sim.limits.check(scenario, path)
    resolved = resolve(scenario, str(path), path.resolve().parent, tuple(strategies))
    return resolved if limits else dataclasses.replace(resolved, enforce_limits=False)


def run_all(resolved: ResolvedScenario, out: Path, *, force: bool = False,
            progress: ProgressFactory | None = None, jobs: int = 1,
            keep_records: bool = True) -> list[RunResult]:
    """Run every chosen strategy on every replication and write the result directories.

    Existing directories are refused before anything runs unless ``force``; each directory
    appears atomically when its run has finished. ``jobs`` > 1 runs that many simulations at
    once in worker processes (``sim.pool``); the results are the same, in the same order.
    Without ``keep_records`` the results hold only their summaries (the per-request, node and
    timeline columns are in the result directories), so memory does not grow with the
    number of runs.
    """
    sc = resolved.scenario
    reps = range(sc.replications)
    targets = [run_dir(out, sc.name, c.label, sc.seed + k)
               for k in reps for c in resolved.strategies]
    check_writable(targets, force)
    if jobs > 1 and len(targets) > 1:
        from sim.pool import run_in_pool

        tasks = [(k, i) for k in reps for i in range(len(resolved.strategies))]
        return run_in_pool(resolved, tasks, out, force, progress, jobs, keep_records)
    results = []
    for k in reps:
        workload = replication_workload(resolved, k)
        for choice in resolved.strategies:
            cb = progress(choice.label, k) if progress else None
            result = simulate(resolved, choice, k, workload,
                              arrivals_progress(cb, sc.duration_s))
            _write(resolved, result, out, force)
            finish_progress(cb)
            results.append(result if keep_records else summary_only(result))
    return results


def summary_only(result: RunResult) -> RunResult:
    """``result`` without its per-request, node and timeline columns."""
    return dataclasses.replace(result, requests={}, node_states={}, timeline={})


def arrivals_progress(progress: Progress | None, duration_s: float) -> Progress | None:
    """``progress`` measured against the arrivals' ``duration_s`` instead of the horizon
    (which adds the drain timeout, mostly unused): the bar moves with the arrivals and waits
    just below 100 % while the last requests drain."""
    if progress is None:
        return None

    def update(sim_s: float, horizon_s: float, dispatched: int) -> None:
        progress(sim_s, duration_s, dispatched)
    return update


def finish_progress(progress: Progress | None) -> None:
    """Tell a progress callback that its run has finished (its ``finish``, if it has one)."""
    finish = getattr(progress, "finish", None)
    if finish is not None:
        finish()


def served_nothing(results: Sequence[RunResult]) -> str | None:
    """Why runs in which no measured request completed are useless (the first such run's
    counts), or None when every run served requests."""
    idle = [r for r in results
            if r.summary["requests"]["measured"]["completed"] == 0]  # type: ignore[index]
    if not idle:
        return None
    run = idle[0]
    m = run.summary["requests"]["measured"]  # type: ignore[index]
    if m["arrived"] == 0:
        why = ("no request arrived in the measurement window [warmup_s, duration_s); raise "
               "the arrival rate or duration_s")
    elif m["rejected"] == m["arrived"]:
        why = (f"all {m['arrived']} measured requests were rejected: prompt + "
               f"max_output_tokens beyond what a node accepts (max_model_len_tokens, the "
               f"profile's context, the KV capacity)")
    else:
        why = (f"none of {m['arrived']} measured requests completed ({m['rejected']} "
               f"rejected, {m['unfinished']} unfinished, {m['failed']} failed)")
    return (f"the cluster served no request in {len(idle)} of {len(results)} runs "
            f"({run.label}/seed-{run.seed}: {why}); grade n/a, results written for "
            f"inspection")


def run_one(resolved: ResolvedScenario, choice_index: int, replication: int, out: Path,
            force: bool, progress: Progress | None = None,
            keep_records: bool = True) -> RunResult:
    """Generate one replication's workload, simulate one strategy on it and write the result
    directory (what a worker process of ``run_all`` does)."""
    workload = replication_workload(resolved, replication)
    choice = resolved.strategies[choice_index]
    result = simulate(resolved, choice, replication, workload, progress)
    _write(resolved, result, out, force)
    return result if keep_records else summary_only(result)


def check_workload(resolved: ResolvedScenario) -> dict[str, Any]:
    """Read and replay a scenario's trace whole, exactly as ``run`` does, so that ``validate``
    refuses what ``run`` would (a bad record anywhere, a model no node serves, a replay beyond
    the size limits); return the ``input`` block the first replication will write (rows,
    drops, caps, trims, requests beyond the context: ``sim.workload.spec.expected_losses``),
    which ``sim.workload.replay.loss_lines`` words as ``validate``'s warnings. Synthetic
    workloads are fully checked when the scenario loads; their block is computed the same way.

    Raises:
        InputError: as ``run`` would, naming the trace or scenario file.
    """
    if resolved.scenario.workload.trace is not None:
        return replication_workload(resolved, 0).accounting  # the trace is read once
    from sim.workload.spec import expected_losses

    return expected_losses(resolved)


def replication_workload(resolved: ResolvedScenario, replication: int) -> Workload:
    """``workload_for`` with errors found only now (a bad trace record deep in the file)
    naming the scenario when they do not name a file of their own."""
    try:
        workload = workload_for(resolved, replication)
    except ScenarioError as exc:
        if exc.source is not None:
            raise
        raise ScenarioError(exc.detail, source=resolved.source, field=exc.field) from None
    if resolved.enforce_limits:
        sim.limits.check_requests(resolved.scenario, len(workload), resolved.source)
    return workload


def _write(resolved: ResolvedScenario, result: RunResult, out: Path, force: bool) -> None:
    sc = resolved.scenario
    scenario = sc.model_dump(mode="json")
    scenario["run"] = {"strategy": result.label, "replication": result.replication,
                       "seed": result.seed, "source": resolved.source}
    n = len(result.requests["arrival_s"])
    meta = {
        "simlb_version": sim.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "simpy": simpy.__version__,
        "wall_s": result.wall_s,
        "events": result.events,
        "requests": n,
        "requests_per_wall_s": n / result.wall_s if result.wall_s > 0 else None,
        "events_per_wall_s": result.events / result.wall_s if result.wall_s > 0 else None,
    }
    write_run(run_dir(out, sc.name, result.label, result.seed), scenario=scenario,
              summary=result.summary, requests=result.requests, nodes=result.node_states,
              timeline=result.timeline, meta=meta, force=force)
