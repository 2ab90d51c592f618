"""Run a resolved scenario: one simulation per strategy and replication.

Replication ``k`` uses seed ``scenario.seed + k`` for the workload and for every component, so
all strategies of one replication see exactly the same requests (common random numbers, which
makes paired comparisons between strategies much tighter).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy

from sim.build import ResolvedScenario, StrategyChoice
from sim.metrics.disagg import transfer_columns
from sim.metrics.fold import RunLogFolder
from sim.metrics.recorder import RUN_COLUMNS, LogHistogram, Recorder
from sim.metrics.summary import RunData, summarize, timeline
from sim.model.cluster import Cluster
from sim.model.elasticity import build_elasticity
from sim.model.kv_events import KvEventMirror
from sim.model.requests import RequestTable
from sim.model.router import Router
from sim.model.transfer import Disaggregation
from sim.rng import stream
from sim.workload.base import Workload
from sim.workload.replay import node_limits
from sim.workload.spec import build_workload

#: progress callback: (simulated seconds, horizon seconds, requests dispatched)
Progress = Callable[[float, float, int], None]


@dataclass
class RunResult:
    """Everything one simulation produced."""

    label: str
    strategy: str
    replication: int
    seed: int
    summary: dict[str, object]
    requests: dict[str, np.ndarray]
    node_states: dict[str, np.ndarray]
    timeline: dict[str, np.ndarray]
    wall_s: float
    events: int
    #: process CPU seconds of the simulation loop (``wall_s`` counts other processes' time too)
    cpu_s: float = math.nan


def workload_for(resolved: ResolvedScenario, replication: int) -> Workload:
    """The request stream of a replication (identical for every strategy)."""
    sc = resolved.scenario
    workload = build_workload(sc.workload, sc.duration_s, sc.seed + replication,
                              base_dir=resolved.base_dir,
                              limits=node_limits(resolved.node_specs))
    models = workload.extra.get("model")
    if models is not None:
        field = "workload.trace" if sc.workload.trace is not None else "workload.models"
        resolved.check_models({str(m) for m in np.unique(models)}, field)
    return workload


def simulate(resolved: ResolvedScenario, choice: StrategyChoice, replication: int,
             workload: Workload, progress: Progress | None = None,
             fold_rows: int | None = None) -> RunResult:
    """Simulate one strategy on one replication's workload and summarise it.

    With ``fold_rows``, the run log and node state series are folded into fixed-size sums
    (``sim.metrics.fold``) whenever ``fold_rows`` rows have accumulated (checked every
    ``FOLD_CHECK_S`` simulated seconds), instead of kept whole: memory no longer grows with
    them, the summary and timeline equal the whole-run ones up to float summation order, and
    ``node_states`` (``nodes.parquet``) is empty. Per-request results are unchanged.
    """
    sc = resolved.scenario
    table = RequestTable(workload)
    run = _build(resolved, choice, replication, table)
    env, recorder, cluster, router, disagg, elastic = (
        run.env, run.recorder, run.cluster, run.router, run.disagg, run.elastic)
    folder = None if fold_rows is None else _folder(resolved)
    horizon = sc.duration_s + sc.drain_timeout_s
    if progress is not None:
        env.process(_ticker(env, router, horizon, progress))
    if folder is not None and fold_rows is not None:
        env.process(_fold_every(env, recorder, folder, fold_rows))
    wall, cpu = _run_to_end(run, table, horizon, progress)
    data = _run_data(resolved, cluster, request_columns(table, resolved.node_specs), recorder,
                     env.now, router, folder)
    if disagg is not None:
        data.requests.update(transfer_columns(disagg.columns()))
    summary = {**summarize(data), "input": workload.accounting}
    if elastic is not None:
        summary["elasticity"] = elastic.summary(sc, data.requests, env.now)
    return RunResult(label=choice.label, strategy=choice.spec.name, replication=replication,
                     seed=run.seed, summary=summary,
                     requests=data.requests,
                     node_states=data.states, timeline=timeline(data, sc.metrics.bucket_s),
                     wall_s=wall,
                     events=_events_scheduled(env), cpu_s=cpu)


@dataclass
class _Run:
    """The simulated system of one run, ready to start."""

    seed: int
    env: simpy.Environment
    recorder: Recorder
    cluster: Cluster
    router: Router
    disagg: Disaggregation | None
    elastic: Any


def _build(resolved: ResolvedScenario, choice: StrategyChoice, replication: int,
           table: RequestTable) -> _Run:
    """Nodes, router, hand-offs and elasticity over ``table``; the arrivals started."""
    sc = resolved.scenario
    seed = sc.seed + replication
    env = simpy.Environment()
    recorder = Recorder(len(resolved.node_specs), (sc.warmup_s, sc.duration_s))
    cluster = Cluster(env, resolved.node_specs, table, recorder, sc.cluster.fast_forward,
                      resolved.slowdowns)
    router = _router(resolved, choice, env, cluster, table, seed)
    disagg = (None if resolved.disagg is None
              else Disaggregation(env, cluster, table, resolved.disagg, router))
    elastic = build_elasticity(sc, env, cluster, router, seed)
    router.start()
    return _Run(seed, env, recorder, cluster, router, disagg, elastic)


def _run_to_end(run: _Run, table: RequestTable, horizon: float,
                progress: Progress | None) -> tuple[float, float]:
    """Run until every request has left or ``horizon``; book what is still in flight (hung
    engines, nodes, KV transfers) as unfinished. Returns the loop's wall and CPU seconds."""
    env = run.env
    started, cpu_started = time.perf_counter(), time.process_time()
    env.run(until=env.any_of([run.router.drained, env.timeout(horizon)]))
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    if progress is not None:
        progress(env.now, horizon, run.router.dispatched)
    if run.elastic is not None:
        run.elastic.finish(env.now)
    _book_unfinished(run.cluster, table, env.now)
    if run.disagg is not None:
        for outcome in run.disagg.book_in_transfer(env.now):
            table.record(outcome)
    return wall, cpu


def _router(resolved: ResolvedScenario, choice: StrategyChoice, env: simpy.Environment,
            cluster: Cluster, table: RequestTable, seed: int) -> Router:
    """The router with one strategy instance per replica and the scenario's mechanisms."""
    rsc = resolved.scenario.router
    key = choice.label  # labelled variants of one strategy get streams of their own
    strategies = [choice.cls(choice.params, stream(seed, "router", key, *(() if i == 0 else (i,))))
                  for i in range(rsc.replicas)]
    admission = None
    if resolved.admission is not None:
        cls, params = resolved.admission
        admission = cls(params, stream(seed, "admission"))
    mirror = None
    if rsc.kv_events_delay_s is not None:
        mirror = KvEventMirror(cluster.nodes, table, rsc.kv_events_delay_s, lambda: env.now)
    return Router(env, cluster, table, strategies, rsc.telemetry_interval_s, admission,
                  None if mirror is None else mirror.cached_prefix_blocks, rsc.max_in_flight)


def _ticker(env: simpy.Environment, router: Router, horizon: float,
            progress: Progress) -> Generator[simpy.Event, None, None]:
    step = horizon / 200
    while True:
        yield env.timeout(step)
        progress(env.now, horizon, router.dispatched)


def _book_unfinished(cluster: Cluster, table: RequestTable, now: float) -> None:
    for node in cluster.nodes:
        for outcome in node.batcher.in_flight(now):
            table.record(outcome)


def _run_data(resolved: ResolvedScenario, cluster: Cluster, requests: dict[str, np.ndarray],
              recorder: Recorder, end_s: float, router: Router,
              folder: RunLogFolder | None = None) -> RunData:
    sc = resolved.scenario
    a, b = sc.warmup_s, sc.duration_s
    specs = resolved.node_specs
    folded = None
    if folder is not None:
        folder.fold(*recorder.take())
        folded = folder.finish(end_s)
        itl, extrapolated = folded.itl, folded.extrapolated_steps
        runs = recorder.run_frame()
    else:
        runs = recorder.run_frame()
        extrapolated = _derive_run_columns(runs, specs)
        itl = LogHistogram()
        in_window = (runs["start_s"] >= a) & (runs["start_s"] < b)
        itl.add_runs(runs["first_s"][in_window], runs["step_s"][in_window],
                     runs["iterations"][in_window], runs["decode_batch"][in_window])
    for node in cluster.nodes:
        for t, gap in node.batcher.preemption_gaps:
            if a <= t < b:
                itl.add(gap)
    return RunData(
        requests=requests,
        states=recorder.state_frame(),
        runs=runs,
        itl=itl,
        max_num_seqs=np.array([s.batcher.max_num_seqs for s in specs], dtype=float),
        kv_total_blocks=np.array([s.kv_total_blocks for s in specs], dtype=float),
        peak_flops=np.array([s.cost.peak_flops for s in specs], dtype=float),
        window_s=(a, b),
        end_s=end_s,
        slo=sc.slo.model_dump(),
        grade_on=sc.metrics.grade_on,
        extrapolated_steps=extrapolated,
        router_stats=dataclasses.asdict(router.stats),
        strategy_stats=_strategy_stats(router),
        monitor_interval_s=sc.metrics.monitor_interval_s,
        kv_evictions=sum(n.batcher.kv.evictions for n in cluster.nodes),
        folded=folded,
    )


#: how often (simulated seconds) a folding run checks whether ``fold_rows`` rows have built up
FOLD_CHECK_S = 10.0


def _folder(resolved: ResolvedScenario) -> RunLogFolder:
    sc = resolved.scenario
    specs = resolved.node_specs
    return RunLogFolder(
        len(specs), (sc.warmup_s, sc.duration_s), sc.duration_s + sc.drain_timeout_s,
        sc.metrics.bucket_s, sc.metrics.monitor_interval_s, sc.metrics.grade_on,
        np.array([s.kv_total_blocks for s in specs], dtype=float),
        np.array([s.batcher.max_num_seqs for s in specs], dtype=float),
        np.array([s.cost.peak_flops for s in specs], dtype=float),
        lambda runs: _derive_run_columns(runs, specs))


def _fold_every(env: simpy.Environment, recorder: Recorder, folder: RunLogFolder,
                fold_rows: int) -> Generator[simpy.Event, None, None]:
    """Fold the recorded rows whenever ``fold_rows`` of them have built up (reads and empties
    the recorder only; the model's state and order of events are untouched)."""
    limit = fold_rows * len(RUN_COLUMNS)
    while True:
        yield env.timeout(FOLD_CHECK_S)
        if len(recorder.runs) >= limit or len(recorder.states) >= limit:
            folder.fold(*recorder.take())


def _derive_run_columns(runs: dict[str, np.ndarray], specs: list) -> int:
    """Add token and FLOP columns to the iteration log; return the extrapolated steps.

    Vectorised per cost model after the run, so the event loop only appends raw numbers.
    """
    k, b = runs["iterations"], runs["decode_batch"]
    runs["decode_tokens"] = k * b
    n_tokens = runs["prefill_tokens"] + runs["decode_tokens"]
    runs["flops"] = np.zeros(k.size)
    extrapolated = 0
    nodes = runs["node"]
    by_cost: dict[int, list[int]] = {}
    for node_id, spec in enumerate(specs):
        by_cost.setdefault(id(spec.cost), []).append(node_id)
    for node_ids in by_cost.values():
        cost = specs[node_ids[0]].cost
        rows = np.isin(nodes, node_ids)
        runs["flops"][rows] = cost.flops(n_tokens[rows], runs["prefill_pairs"][rows],
                                         runs["decode_ctx_tokens"][rows])
        beyond = cost.is_extrapolated(runs["prefill_tokens"][rows] + b[rows],
                                      runs["n_chunks"][rows] + b[rows])
        extrapolated += int(k[rows][np.asarray(beyond, dtype=bool)].sum())
    return extrapolated


def _strategy_stats(router: Router) -> dict[str, float]:
    """The strategies' own counters, summed over router replicas."""
    total: dict[str, float] = {}
    for replica in router.replicas:
        for key, value in replica.strategy.stats().items():
            total[key] = total.get(key, 0) + value
    return total


def request_columns(table: RequestTable, specs: list | None = None) -> dict[str, np.ndarray]:
    """The per-request records as numpy columns (the content of ``requests.parquet``).

    With the node specs, each request's first-token and finish times are those the client
    sees: the engine's times plus its node's API latency (``CostModel.api_latency_s``).
    """
    records = {name: np.frombuffer(getattr(table, name),
                                   dtype=np.float64 if name.endswith("_s") else np.int64)
               for name in ("node", "status", "generated_tokens", "cached_tokens",
                            "recomputed_tokens", "preemptions", "first_scheduled_s",
                            "first_token_s", "finish_s", "client_wait_s")}
    if specs is not None:
        _add_api_latency(records, np.array(table.arrival_s, dtype=np.float64),
                         np.array(table.prompt_tokens, dtype=np.int64), specs)
    return {
        "request_id": np.arange(table.n, dtype=np.int64),
        "arrival_s": np.array(table.arrival_s, dtype=np.float64),
        "node": records["node"],
        "status": records["status"],
        "prompt_tokens": np.array(table.prompt_tokens, dtype=np.int64),
        "output_tokens": np.array(table.output_tokens, dtype=np.int64),
        "max_output_tokens": np.array(table.max_output_tokens, dtype=np.int64),
        **{k: records[k] for k in ("generated_tokens", "cached_tokens", "recomputed_tokens",
                                   "preemptions", "first_scheduled_s", "first_token_s",
                                   "finish_s", "client_wait_s")},
        "session_id": np.array(table.session_id, dtype=np.int64),
        "prefix_group": np.array(table.prefix_group, dtype=np.int64),
    }


def _add_api_latency(records: dict[str, np.ndarray], arrival_s: np.ndarray,
                     prompt_tokens: np.ndarray, specs: list) -> None:
    """Shift first-token and finish times by each node's API latency (vectorised, after the
    run: the engine's own timeline is unchanged; ``docs/model.md`` §4). The latency may
    grow with the requests the node held at the arrival (arrived there, not finished)."""
    node = records["node"]
    shift = api_shift(node, prompt_tokens,
                      active_per_node(node, arrival_s, records["finish_s"], len(specs)), specs)
    if shift.any():
        for key in ("first_token_s", "finish_s"):
            records[key] = records[key] + shift  # NaN (never reached) stays NaN


def api_shift(node: np.ndarray, prompt_tokens: np.ndarray, active: np.ndarray,
              specs: list) -> np.ndarray:
    """Each request's API latency on the node it ran on (0 where it ran on none), one
    vectorised call per cost model (nodes of a group share theirs)."""
    shift = np.zeros(node.size)
    by_cost: dict[int, list[int]] = {}
    for node_id, spec in enumerate(specs):
        by_cost.setdefault(id(spec.cost), []).append(node_id)
    for node_ids in by_cost.values():
        rows = np.flatnonzero(np.isin(node, node_ids))
        if rows.size:
            shift[rows] = specs[node_ids[0]].cost.api_latency_s(prompt_tokens[rows],
                                                                active[rows])
    return shift


def active_per_node(node: np.ndarray, arrival_s: np.ndarray, finish_s: np.ndarray,
                    n_nodes: int) -> np.ndarray:
    """``active_at_arrival`` among the requests of each node (0 for requests on none)."""
    active = np.zeros(node.size, dtype=np.int64)
    order = np.argsort(node, kind="stable")  # each node's requests stay in id order
    bounds = np.searchsorted(node[order], np.arange(n_nodes + 1))
    for i in range(n_nodes):
        rows = order[bounds[i]:bounds[i + 1]]
        if rows.size:
            active[rows] = active_at_arrival(arrival_s[rows], finish_s[rows])
    return active


def active_at_arrival(arrival_s: np.ndarray, finish_s: np.ndarray) -> np.ndarray:
    """For each request, how many of the others had arrived and not finished when it
    arrived (arrivals sorted; a request that never finished counts as still there)."""
    ends = np.sort(np.where(np.isnan(finish_s), np.inf, finish_s))
    arrived_before = np.searchsorted(arrival_s, arrival_s, side="left")
    finished_before = np.searchsorted(ends, arrival_s, side="right")
    return np.maximum(arrived_before - finished_before, 0)


def _events_scheduled(env: simpy.Environment) -> int:
    """Events SimPy scheduled in this run (from its event-id counter)."""
    counter = getattr(env, "_eid", None)
    return int(next(counter)) if counter is not None else -1
