"""Teacher-forced replay of a measured run on one simulated node.

The node gets the run's engine limits and its measured KV block count; the workload is the
run's completed requests with their exact send times, prompt lengths and output lengths
(``max_output_tokens = output_tokens``: every request generates exactly what it did). Prompts
share nothing (segment key -1): the measured runs use random words, so prefix caching only
ever finds the chat template, which is ignored. The scenario is built as a plain tree and goes
through the same validation and resolution as a scenario file, so ``--set`` overrides reach
any component parameter (cost model, batcher) generically.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sim.errors import ScenarioError
from sim.fidelity.run import MeasuredRun, in_system
from sim.outcome import COMPLETED, REJECTED, UNFINISHED

#: seconds past the last arrival a replay may run (at least), and as a multiple of the span
DRAIN_MIN_S, DRAIN_FACTOR = 3600.0, 4.0


@dataclass
class Prediction:
    """simlb's prediction for every row of a ``MeasuredRun`` (NaN where not predicted)."""

    ttft_s: np.ndarray
    e2e_s: np.ndarray
    itl_s: np.ndarray
    #: simlb status code per row (``sim.outcome``); -1 for rows not replayed
    status: np.ndarray
    wall_s: float
    events: int
    scenario: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def completed(self) -> np.ndarray:
        """Rows simlb completed."""
        return self.status == COMPLETED


def _node_keys() -> set[str]:
    from sim.scenario import NodeGroupSpec

    return set(NodeGroupSpec.model_fields)


def scenario_tree(run: MeasuredRun, profile: str) -> dict[str, Any]:
    """The one-node scenario tree for ``run`` (before overrides)."""
    eng = run.engine
    batcher: dict[str, Any] = {}
    for key in ("max_num_seqs", "max_num_batched_tokens"):
        if getattr(eng, key) is not None:
            batcher[key] = int(getattr(eng, key))
    if eng.chunked_prefill is not None:
        batcher["chunked_prefill"] = bool(eng.chunked_prefill)
    node: dict[str, Any] = {
        "name": "engine", "count": 1,
        "cost_model": {"name": "profile", "params": {"profile": profile}},
        "batcher": {"name": "continuous", "params": batcher},
    }
    if eng.block_size is not None:
        node["block_size_tokens"] = int(eng.block_size)
    if eng.kv_capacity_tokens is not None:
        node["kv_capacity_tokens"] = int(eng.kv_capacity_tokens)
    if eng.prefix_caching is not None:
        node["prefix_caching"] = bool(eng.prefix_caching)
    if eng.max_model_len is not None:
        node["max_model_len_tokens"] = int(eng.max_model_len)
    ok = run.arrival_s[run.ok]
    span = float(ok.max()) if ok.size else 0.0
    return {
        "schema_version": 1, "name": "fidelity", "seed": 0,
        "duration_s": span + 1e-6, "warmup_s": 0.0,
        "drain_timeout_s": max(DRAIN_MIN_S, DRAIN_FACTOR * span),
        "cluster": {"node_groups": [node]},
        "router": {"strategies": [{"name": "round_robin"}], "telemetry_interval_s": 0.0},
        # placeholder: the replay passes its own workload to ``simulate``
        "workload": {"arrivals": {"name": "poisson", "params": {"rate_rps": 1.0}},
                     "prompt_tokens": {"name": "fixed", "params": {"tokens": 1}},
                     "output_tokens": {"name": "fixed", "params": {"tokens": 1}}},
    }


def apply_overrides(tree: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``tree`` with ``--set`` assignments applied; a path starting with a node-group field
    (``cost_model``, ``batcher``, ``kv_capacity_tokens``...) addresses the one node group."""
    from sim.scenario import apply_override

    out = copy.deepcopy(tree)
    keys = _node_keys()
    for assignment in overrides:
        head = assignment.split("=", 1)[0].strip().split(".", 1)[0]
        full = f"cluster.node_groups.0.{assignment.strip()}" if head in keys else assignment
        apply_override(out, full)
    return out


def resolve_tree(tree: dict[str, Any], source: str, base_dir: Path | None = None) -> Any:
    """Validate and resolve a scenario tree (``ScenarioError`` names ``source``)."""
    from sim.build import resolve
    from sim.scenario import parse_scenario

    scenario = parse_scenario(tree, source)
    return resolve(scenario, source, base_dir or Path.cwd())


def client_cap(run: MeasuredRun) -> int | None:
    """The concurrency cap of a closed-loop run's client, or None for an open-loop run.

    A run is replayed closed loop when its sends lag the intended schedule by more than
    ``CLOSED_LOOP_LAG_S`` (the client held requests back: the residency cells capped at 256
    in flight) and the schedule is known. The cap is the most requests the measured run had in
    flight (sent, not finished). Replaying such a run's send times open loop is ill-conditioned:
    they follow the real server's completions, so a simulated server a few % faster drains the
    backlog and one a few % slower lets it grow without bound; closed loop, the simulated
    server sets the pace of its own sends, as the real one did.
    """
    from sim.fidelity.readers import CLOSED_LOOP_LAG_S

    intended = run.extra.get("intended_arrival_s")
    if intended is None or run.extra.get("send_lag_max_s", 0.0) <= CLOSED_LOOP_LAG_S:
        return None
    ok = run.ok
    return int(in_system(run.arrival_s[ok], run.e2e_s[ok], run.arrival_s[ok]).max())


def _replay_order(run: MeasuredRun, cap: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, arrival_s)``: the replayed rows in workload order and their arrival times (the
    intended schedule when replayed closed loop, else the measured sends)."""
    rows = np.flatnonzero(run.ok)
    if cap is None:
        return rows, run.arrival_s[rows]
    intended = np.asarray(run.extra["intended_arrival_s"])[:len(run)][rows]
    order = np.argsort(intended, kind="stable")
    return rows[order], intended[order]


def workload_of(run: MeasuredRun, cap: int | None = None) -> Any:
    """The teacher-forced workload: the completed rows with their measured lengths, sent at
    the measured times (or, closed loop, arriving on the intended schedule)."""
    from sim.workload.base import unique_prompt_workload

    rows, arrival = _replay_order(run, cap)
    arrival = arrival - arrival[0]
    span = float(arrival[-1]) if arrival.size > 1 else 0.0
    rate = (arrival.size - 1) / span if span > 0 else math.nan
    workload = unique_prompt_workload(arrival, run.prompt_tokens[rows], run.output_tokens[rows],
                                      expected_rate_rps=rate, source=f"measured run {run.name}")
    workload.validate()
    return workload


def replay(run: MeasuredRun, profile: str, overrides: Sequence[str] = (),
           base_dir: Path | None = None) -> Prediction:
    """Replay ``run`` teacher-forced on one node with cost profile ``profile``.

    Raises:
        ScenarioError: a bad profile, override or engine setting (naming the run).
    """
    from sim.runner import simulate

    source = f"fidelity replay of {run.source}"
    tree = scenario_tree(run, profile)
    cap = client_cap(run)
    if cap is not None:
        tree["router"]["max_in_flight"] = cap
    try:
        tree = apply_overrides(tree, overrides)
    except ScenarioError as exc:
        raise ScenarioError(exc.detail, source=source, field=exc.field) from None
    resolved = resolve_tree(tree, source, base_dir)
    cap = tree["router"].get("max_in_flight")
    workload = workload_of(run, cap)
    result = simulate(resolved, resolved.strategies[0], 0, workload)
    req = result.requests
    rows, _ = _replay_order(run, cap)
    n = len(run)
    status = np.full(n, -1, dtype=np.int64)
    status[rows] = req["status"]
    done = req["status"] == COMPLETED
    ttft = np.where(done, req["first_token_s"] - req["arrival_s"], np.nan)
    e2e = np.where(done, req["finish_s"] - req["arrival_s"], np.nan)
    gen = req["output_tokens"]
    with np.errstate(divide="ignore", invalid="ignore"):
        itl = np.where(done & (gen > 1), (e2e - ttft) / (gen - 1), np.nan)
    out = {k: np.full(n, np.nan) for k in ("ttft", "e2e", "itl")}
    out["ttft"][rows], out["e2e"][rows], out["itl"][rows] = ttft, e2e, itl
    notes = [] if cap is None else [
        f"replayed closed loop: intended arrivals, at most {cap} requests in flight (the "
        f"measured client's cap); latencies count from the simulated send"]
    for code, what in ((UNFINISHED, "unfinished at the drain horizon"),
                       (REJECTED, "rejected (longer than max_model_len?)")):
        k = int((req["status"] == code).sum())
        if k:
            notes.append(f"simlb: {k} requests {what}; not scored")
    return Prediction(out["ttft"], out["e2e"], out["itl"], status, result.wall_s, result.events,
                      tree, notes)
