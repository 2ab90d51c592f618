"""The library behind ``simlb run`` and ``simlb validate``: load, resolve, run, write."""

from __future__ import annotations

import contextlib
import dataclasses
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import simpy

import sim
import sim.limits
from sim.build import ResolvedScenario, StrategyChoice, resolve
from sim.errors import ScenarioError
from sim.results import check_writable, run_dir, write_run
from sim.runner import Progress, RunResult, simulate, workload_for
from sim.scenario import apply_override, parse_scenario, read_raw
from sim.workload.base import Workload

#: (label, replication) -> progress callback, or None
ProgressFactory = Callable[[str, int], Progress | None]


def load(path: Path, overrides: Sequence[str] = (), *, seed: int | None = None,
         replications: int | None = None, strategies: Sequence[str] = (),
         limits: bool = True, stream: bool = False) -> ResolvedScenario:
    """Read, override, validate and resolve a scenario file; with ``limits``, refuse a run
    whose estimated size exceeds the scenario's ``limits`` (``sim.limits``). With ``stream``,
    the runs stream their requests (``sim.runner_stream``): the scenario must allow it, and
    the number of requests is not limited.

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
        sim.limits.check(scenario, path, skip=("requests",) if stream else ())
    resolved = resolve(scenario, str(path), path.resolve().parent, tuple(strategies))
    if stream:
        check_stream(resolved)
    return dataclasses.replace(resolved, enforce_limits=limits, stream=stream)


def check_stream(resolved: ResolvedScenario) -> None:
    """Raise ``ScenarioError`` naming the key that keeps the scenario from a streamed run."""
    from sim.runner_stream import StreamingError, check_streamable_run
    from sim.workload.stream import check_streamable

    sc = resolved.scenario
    try:
        check_streamable(sc.workload)
    except ValueError as exc:
        w = sc.workload
        field = ("workload.trace" if w.trace is not None
                 else "workload.sessions" if w.sessions is not None else "workload.arrivals")
        raise ScenarioError(f"--stream: {exc}", source=resolved.source, field=field) from None
    try:
        check_streamable_run(resolved)
    except StreamingError as exc:
        raise ScenarioError(f"--stream: {exc}", source=resolved.source,
                            field="cluster.node_groups") from None


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
        workload = None if resolved.stream else replication_workload(resolved, k)
        for choice in resolved.strategies:
            cb = progress(choice.label, k) if progress else None
            result = _run_and_write(resolved, choice, k, workload, out, force,
                                    arrivals_progress(cb, sc.duration_s))
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
    workload = None if resolved.stream else replication_workload(resolved, replication)
    result = _run_and_write(resolved, resolved.strategies[choice_index], replication, workload,
                            out, force, progress)
    return result if keep_records else summary_only(result)


#: the window of one chunk of a streamed run's requests, simulated seconds
STREAM_CHUNK_S = 60.0


def _run_and_write(resolved: ResolvedScenario, choice: StrategyChoice, replication: int,
                   workload: Workload | None, out: Path, force: bool,
                   progress: Progress | None) -> RunResult:
    """Simulate one strategy on one replication and write its result directory; without a
    ``workload``, stream the requests (drawn ``STREAM_CHUNK_S`` at a time: every strategy of
    a replication sees the same requests) and write ``requests.parquet`` as the run goes."""
    if workload is not None:
        result = simulate(resolved, choice, replication, workload, progress)
        _write(resolved, result, out, force)
        return result
    import os

    from sim.runner_stream import simulate_streamed
    from sim.workload.replay import node_limits
    from sim.workload.stream import ChunkSource, iter_chunks

    sc = resolved.scenario
    target = run_dir(out, sc.name, choice.label, sc.seed + replication)
    # the records are written beside the result directory (one rename moves them in); the
    # folders made for them go again if the run fails
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    records = target.parent / f".{target.name}.requests-{os.getpid()}.parquet"
    chunks = iter_chunks(sc.workload, sc.duration_s, sc.seed + replication,
                         chunk_s=STREAM_CHUNK_S, limits=node_limits(resolved.node_specs))
    try:
        result = simulate_streamed(resolved, choice, replication, ChunkSource(chunks),
                                   requests_path=records, progress=progress)
        _write(resolved, result, out, force, records)
    except BaseException:
        records.unlink(missing_ok=True)
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    records.unlink(missing_ok=True)
    return result


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


def _write(resolved: ResolvedScenario, result: RunResult, out: Path, force: bool,
           records: Path | None = None) -> None:
    """Write ``result``'s directory; ``records``: its ``requests.parquet``, already written
    (a streamed run), moved in instead of written from ``result.requests``."""
    sc = resolved.scenario
    scenario = sc.model_dump(mode="json")
    scenario["run"] = {"strategy": result.label, "replication": result.replication,
                       "seed": result.seed, "source": resolved.source,
                       **({"streamed": True, "chunk_s": STREAM_CHUNK_S} if records else {})}
    n = (len(result.requests["arrival_s"]) if records is None
         else int(result.summary["requests"]["arrived"]))  # type: ignore[index]
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
              summary=result.summary,
              requests=result.requests if records is None else records,
              nodes=result.node_states,
              timeline=result.timeline, meta=meta, force=force)
