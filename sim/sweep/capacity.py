"""``simlb capacity``: the highest sustainable rate, or the fewest nodes, meeting SLOs.

Each strategy and replication is its own search *chain* (replication ``k`` has seed
``seed + k`` at every rate and node count, and the same for every strategy: common random
numbers). A chain evaluates one value per round; all chains of a round run at once on the
executor, and every run is cached like a sweep's, so an interrupted search resumes.

* ``rate``: bracket the knee by doubling or halving from the scenario's own rate (or start
  from ``--rate-range LO:HI``), then bisect until the last passing and first failing rate
  differ by at most ``tol``. A chain's capacity is its last passing rate; a strategy's is the
  mean over replications with its 95 % t interval (``sim.report.stats.mean_ci``), which
  covers both the replications' spread and (conservatively, one tolerance below the
  crossing) the bisection's resolution.
* ``nodes``: for each node group (each GPU type on offer) alone, the fewest nodes meeting the
  SLOs at the scenario's rate (or ``--rate``), by doubling then integer bisection (assumes
  more nodes never hurt). A strategy's answer is the largest over replications (every
  replication met the SLOs there), with the smallest beside it.

Assumes the SLO verdict is monotone in the searched value (more load, fewer nodes: worse);
noise near the knee is what the replications' interval shows.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sim.build import ResolvedScenario
from sim.errors import InputError
from sim.scenario import apply_override, read_raw
from sim.spec import build_params
from sim.sweep import SweepError
from sim.sweep.executors import Backend, Failure, run_tasks
from sim.sweep.grid import resolve_point
from sim.sweep.slo import Slo, verdict
from sim.sweep.tasks import Task, point_tasks
from sim.workload.arrivals import arrivals

Vary = Literal["rate", "nodes"]
#: doublings or halvings tried while bracketing before giving up
MAX_EXPAND = 12
#: evaluations per chain (a safety net; bisection needs far fewer)
MAX_STEPS = 60


@dataclass
class Chain:
    """One search: a strategy (and node group) on one replication."""

    strategy: str
    replication: int
    group: int | None
    x: float
    good: float | None = None
    bad: float | None = None
    expansions: int = 0
    steps: int = 0
    done: bool = False
    note: str = ""


@dataclass
class CapacitySpec:
    """What to search, and how finely."""

    scenario: Path
    slos: list[Slo]
    vary: Vary = "rate"
    overrides: tuple[str, ...] = ()
    strategies: tuple[str, ...] = ()
    replications: int | None = None
    seed: int | None = None
    limits: bool = True
    rate_key: str | None = None
    rate_range: tuple[float, float] | None = None
    tol: float | None = None
    rate: float | None = None
    groups: tuple[str, ...] = ()
    max_nodes: int = 1024


@dataclass
class Search:
    """The state of a search: its base tree, rate keys, evaluated points and chains."""

    spec: CapacitySpec
    base: dict[str, Any]
    base_resolved: ResolvedScenario
    rate_keys: list[tuple[str, float]]
    base_rate: float
    tol: float
    chains: list[Chain] = field(default_factory=list)
    points: dict[tuple[int | None, float], tuple[int, ResolvedScenario, list[Task]]] = \
        field(default_factory=dict)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


def _get(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


def find_rate_keys(resolved: ResolvedScenario, raw: dict[str, Any],
                   rate_key: str | None) -> tuple[list[tuple[str, float]], float]:
    """The keys scaled to set the offered rate, with their base values, and the base mean
    rate: ``rate_key`` if given, else every ``*_rps`` parameter of ``workload.arrivals``
    (scaled together, so the process keeps its shape), else a looped trace's
    ``target_rate_rps``.

    Raises:
        SweepError: no rate key can be found or ``rate_key`` is not a positive number.
    """
    if rate_key is not None:
        value = _get(raw, rate_key)
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise SweepError(f"expected a positive number at {rate_key} in the scenario, got "
                             f"{value!r}", field="--rate-key")
        return [(rate_key, float(value))], float(value)
    w = resolved.scenario.workload
    if w.arrivals is not None:
        keys = [(f"workload.arrivals.params.{k}", float(v)) for k, v in w.arrivals.params.items()
                if k.endswith("_rps") and isinstance(v, int | float) and not isinstance(v, bool)]
        if keys:
            cls, params = build_params(arrivals, w.arrivals, "workload.arrivals")
            return keys, float(cls(params).mean_rate_rps)
    if w.trace is not None and w.trace.target_rate_rps is not None:
        rate = float(w.trace.target_rate_rps)
        return [("workload.trace.target_rate_rps", rate)], rate
    raise SweepError("cannot tell which scenario key sets the arrival rate; expected "
                     "--rate-key KEY (e.g. workload.arrivals.params.rate_rps)",
                     field="--rate-key")


def rate_assignments(search: Search, rate: float) -> list[str]:
    """``--set`` assignments giving a mean offered rate of ``rate`` req/s (none when the
    scenario's rate is kept)."""
    if not search.rate_keys or rate == search.base_rate:
        return []
    factor = rate / search.base_rate
    return [f"{key}={_round(value * factor)!r}" for key, value in search.rate_keys]


def _round(x: float) -> float:
    return float(f"{x:.9g}")


def start(spec: CapacitySpec) -> Search:
    """Validate the scenario and options and set up the chains.

    Raises:
        InputError: a bad scenario, override, rate key, range, group or option.
    """
    base = read_raw(spec.scenario)
    if spec.replications is not None:
        base["replications"] = spec.replications
    if spec.seed is not None:
        base["seed"] = spec.seed
    resolved = resolve_point(spec.scenario, base, spec.overrides, {},
                             strategies=spec.strategies, limits=spec.limits)
    tree = copy.deepcopy(base)
    for assignment in spec.overrides:
        apply_override(tree, assignment)
    try:
        keys, base_rate = find_rate_keys(resolved, tree, spec.rate_key)
    except SweepError:
        if spec.vary == "rate" or spec.rate is not None:
            raise
        keys, base_rate = [], math.nan  # a node search at the scenario's own load
    if spec.vary == "rate":
        lo_hi = spec.rate_range
        x0 = base_rate if lo_hi is None else lo_hi[1]
        tol = spec.tol if spec.tol is not None else 0.02 * x0
        groups: list[int | None] = [None]
    else:
        tol = 0.5
        groups = _groups(resolved, spec.groups)
    search = Search(spec, base, resolved, keys, base_rate, tol)
    reps = resolved.scenario.replications
    for g in groups:
        for choice in resolved.strategies:
            for k in range(reps):
                search.chains.append(_new_chain(search, choice.label, k, g))
    return search


def _groups(resolved: ResolvedScenario, wanted: Sequence[str]) -> list[int | None]:
    names = [g.name for g in resolved.scenario.cluster.node_groups]
    if not wanted:
        return list(range(len(names)))
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise SweepError(f"no node group {unknown[0]!r}; expected one of {', '.join(names)}",
                         field="--group")
    return [names.index(w) for w in wanted]


def _new_chain(search: Search, label: str, k: int, group: int | None) -> Chain:
    spec = search.spec
    if group is None:
        if spec.rate_range is not None:  # the range's ends are taken as good and bad
            lo, hi = spec.rate_range
            return Chain(label, k, None, (lo + hi) / 2, good=lo, bad=hi)
        return Chain(label, k, None, search.base_rate)
    count = search.base_resolved.scenario.cluster.node_groups[group].count
    return Chain(label, k, group, float(min(count, spec.max_nodes)), bad=0.0)


def _point(search: Search, group: int | None, x: float) -> tuple[int, ResolvedScenario,
                                                                   list[Task]]:
    key = (group, x)
    found = search.points.get(key)
    if found is not None:
        return found
    spec = search.spec
    base = search.base
    rate = spec.rate if spec.vary == "nodes" and spec.rate else None
    sets = list(spec.overrides)
    if group is not None:
        base = copy.deepcopy(base)
        for assignment in spec.overrides:  # overrides may address the group by its index
            apply_override(base, assignment)
        groups = base["cluster"]["node_groups"]
        base["cluster"]["node_groups"] = [{**groups[group], "count": int(x)}]
        sets = []
    sets += rate_assignments(search, rate if rate is not None else (
        x if group is None else search.base_rate))
    try:
        resolved = resolve_point(spec.scenario, base, sets, {}, strategies=spec.strategies,
                                 limits=spec.limits)
    except InputError as exc:
        what = f"{int(x)} nodes" if group is not None else f"rate {x:g} req/s"
        raise SweepError(f"{exc} (at {what})") from None
    found = search.points[key] = (len(search.points), resolved,
                                  point_tasks(len(search.points), resolved))
    return found


def _task(search: Search, chain: Chain) -> Task:
    _, _, tasks = _point(search, chain.group, chain.x)
    return next(t for t in tasks if t.label == chain.strategy
                and t.replication == chain.replication)


def advance(search: Search, chain: Chain, passed: bool) -> None:
    """Record a chain's outcome at ``chain.x`` and choose its next value (or end it)."""
    chain.steps += 1
    if passed:
        chain.good = chain.x
    else:
        chain.bad = chain.x
    if chain.group is None:
        _next_rate(search, chain)
    else:
        _next_count(search, chain)
    if chain.steps >= MAX_STEPS and not chain.done:
        chain.done, chain.note = True, "step limit"


def _next_rate(search: Search, chain: Chain) -> None:
    good, bad = chain.good, chain.bad
    if bad is None or good is None:
        chain.expansions += 1
        if chain.expansions > MAX_EXPAND:
            chain.done = True
            chain.note = "above the largest rate tried" if bad is None else \
                "below the smallest rate tried"
            return
        chain.x = _round(chain.x * 2 if bad is None else chain.x / 2)
        return
    if bad - good <= search.tol:
        chain.done = True
        if search.spec.rate_range is not None and good <= search.spec.rate_range[0]:
            chain.note = "at or below the low end of --rate-range"
        return
    chain.x = _round((good + bad) / 2)


def _next_count(search: Search, chain: Chain) -> None:
    good, bad = chain.good, chain.bad or 0.0
    if good is None:
        if chain.x >= search.spec.max_nodes:
            chain.done, chain.note = True, f"more than --max-nodes {search.spec.max_nodes}"
            return
        chain.x = float(min(2 * chain.x, search.spec.max_nodes))
        return
    if good - bad <= 1:
        chain.done = True
        return
    chain.x = float(math.floor((good + bad) / 2))


def run_search(search: Search, backend: Backend, cache: Any, *, retries: int = 2,
               done: Callable[[Task, bool], None] | None = None,
               submitted: Callable[[int], None] | None = None) -> Search:
    """Run rounds until every chain has ended; failed runs end their chain (noted)."""
    while True:
        active = [c for c in search.chains if not c.done]
        if not active:
            return search
        tasks = [_task(search, c) for c in active]
        if submitted:
            submitted(len({t.key for t in tasks}))
        records, failures = run_tasks(backend, tasks, cache, retries=retries, done=done)
        search.failures += failures
        for chain, task in zip(active, tasks, strict=True):
            record = records.get(task.key)
            if record is None:
                chain.done, chain.note = True, "a run failed (see failures)"
                continue
            passed, worst = verdict(search.spec.slos, record)
            search.evaluations.append(_evaluation(search, chain, task, record, passed, worst))
            advance(search, chain, passed)


def _evaluation(search: Search, chain: Chain, task: Task, record: dict[str, Any],
                passed: bool, worst: float) -> dict[str, Any]:
    summary = record["summary"]
    group = None if chain.group is None else \
        search.base_resolved.scenario.cluster.node_groups[chain.group].name
    row: dict[str, Any] = {"group": group, "strategy": chain.strategy,
                           "replication": chain.replication, "x": chain.x,
                           "passed": passed, "worst_ratio": worst,
                           "stable": bool(record["stability"]["stable"]),
                           "growing": bool(record["stability"]["growing"]),
                           "unfinished_measured": int(record["stability"]["unfinished"])}
    for slo in search.spec.slos:
        row[slo.name] = slo.value(summary)
    thr = summary.get("throughput") or {}
    row["offered_rps"] = thr.get("offered_rps")
    row["goodput_rps"] = thr.get("goodput_rps")
    return row
