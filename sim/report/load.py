"""Read result directories into pandas: the only place in ``sim.report`` that parses them.

A *run* is one ``<scenario>/<strategy>/seed-<k>/`` directory (see ``sim.results``). A *result
set* is every run of one scenario as resolved (whatever the seed and strategy): the same
scenario name run with different parameters, such as several offered loads, gives several result
sets, which make a load sweep.

>>> runs = load_runs(["results/smoke"])            # doctest: +SKIP
>>> runs.summaries[["strategy", "seed", "latency_s.ttft.p99"]]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from sim.errors import InputError

#: a run directory is recognised by this file
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "scenario.resolved.yaml"
#: how deep below a given path run directories are looked for (scenario/strategy/seed)
MAX_DEPTH = 3


@dataclass(frozen=True)
class Run:
    """One run directory: where it is, what it ran, and its summary.

    Attributes:
        path: the run directory.
        scenario: the scenario name.
        strategy: the strategy label (as in tables and result paths).
        replication: the replication index (0-based).
        seed: the replication's seed (``scenario.seed + replication``).
        result_set: the label of the result set the run belongs to.
        summary: ``summary.json`` as loaded.
        config: ``scenario.resolved.yaml`` as loaded (the scenario as run).
    """

    path: Path
    scenario: str
    strategy: str
    replication: int
    seed: int
    result_set: str
    summary: dict[str, Any]
    config: dict[str, Any]

    @property
    def window_s(self) -> tuple[float, float]:
        """The measurement window ``[warmup_s, duration_s)``."""
        return float(self.config.get("warmup_s", 0.0)), float(self.config["duration_s"])


def find_run_dirs(path: Path) -> list[Path]:
    """Run directories at or below ``path`` (a run, strategy, scenario or output folder).

    Raises:
        InputError: ``path`` does not exist or holds no run directory.
    """
    if not path.exists():
        raise InputError("no such file or directory", source=str(path))
    if (path / SUMMARY_FILE).is_file():
        return [path]
    found: list[Path] = []
    pattern = ""
    for _ in range(MAX_DEPTH):
        pattern += "*/"
        found += [p.parent for p in path.glob(pattern + SUMMARY_FILE)
                  if not any(part.startswith(".") for part in p.relative_to(path).parts)]
    if not found:
        raise InputError("no result directories found (expected <scenario>/<strategy>/"
                         f"seed-<k>/{SUMMARY_FILE})", source=str(path))
    return sorted(set(found))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"corrupt or unreadable summary ({exc})", source=str(path)) from None
    if not isinstance(data, dict) or "latency_s" not in data or "throughput" not in data:
        raise InputError("corrupt summary (not a simlb summary.json)", source=str(path))
    return data


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"unreadable resolved scenario ({exc})", source=str(path)) from None
    if not isinstance(data, dict) or "name" not in data or "duration_s" not in data:
        raise InputError("corrupt resolved scenario", source=str(path))
    return data


def read_run(path: Path, result_set: str = "") -> Run:
    """Load one run directory's summary and resolved scenario.

    Raises:
        InputError: a file is missing or corrupt (the message names it).
    """
    summary = _read_json(path / SUMMARY_FILE)
    config = _read_config(path / CONFIG_FILE)
    meta = config.get("run") or {}
    seed = meta.get("seed")
    if seed is None:  # older directories: fall back on the folder name seed-<k>
        try:
            seed = int(path.name.removeprefix("seed-"))
        except ValueError:
            raise InputError("cannot tell the seed of this run", source=str(path)) from None
    return Run(path=path, scenario=str(config["name"]),
               strategy=str(meta.get("strategy") or path.parent.name),
               replication=int(meta.get("replication", int(seed) - int(config.get("seed", 0)))),
               seed=int(seed), result_set=result_set or str(config["name"]),
               summary=summary, config=config)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to dotted keys; lists (per-node values) are left out."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flatten(value, name + ".")
        elif not isinstance(value, list):
            out[name] = math.nan if value is None else value
    return out


def _strategy_order(runs: Sequence[Run]) -> list[str]:
    """Strategy labels in the scenarios' order, then any others alphabetically."""
    order: list[str] = []
    for run in runs:
        for spec in (run.config.get("router") or {}).get("strategies") or []:
            label = spec.get("label") or spec.get("name")
            if label and label not in order:
                order.append(str(label))
    present = {r.strategy for r in runs}
    return [s for s in order if s in present] + sorted(present - set(order))


class Runs:
    """A collection of runs, with their summaries as a table and lazy access to their records.

    Attributes:
        runs: the runs, ordered by result set, strategy (scenario order) and seed.
        strategies: strategy labels in scenario order.
        result_sets: result-set labels in the order their paths were given.
    """

    def __init__(self, runs: Iterable[Run]):
        runs = list(runs)
        self.strategies = _strategy_order(runs)
        self.result_sets = list(dict.fromkeys(r.result_set for r in runs))
        rank = {s: i for i, s in enumerate(self.strategies)}
        sets = {s: i for i, s in enumerate(self.result_sets)}
        self.runs = tuple(sorted(runs, key=lambda r: (sets[r.result_set], rank[r.strategy],
                                                      r.seed)))

    def __len__(self) -> int:
        return len(self.runs)

    @cached_property
    def summaries(self) -> pd.DataFrame:
        """One row per run: identifying columns then every summary figure (dotted keys)."""
        rows = [{"result_set": r.result_set, "scenario": r.scenario, "strategy": r.strategy,
                 "replication": r.replication, "seed": r.seed, "path": str(r.path)}
                | flatten(r.summary) for r in self.runs]
        return pd.DataFrame(rows)

    def select(self, *, result_set: str | None = None,
               strategy: str | Sequence[str] | None = None,
               seed: int | None = None) -> Runs:
        """The runs matching every given filter."""
        wanted = {strategy} if isinstance(strategy, str) else set(strategy or ())
        return Runs(r for r in self.runs
                    if (result_set is None or r.result_set == result_set)
                    and (not wanted or r.strategy in wanted)
                    and (seed is None or r.seed == seed))

    def config(self, result_set: str | None = None) -> dict[str, Any]:
        """The resolved scenario of the first run (of ``result_set`` if given)."""
        runs = self.select(result_set=result_set).runs if result_set else self.runs
        if not runs:
            raise InputError(f"no runs in result set {result_set!r}")
        return runs[0].config

    def requests(self, *, measured_only: bool = True, **filters: Any) -> pd.DataFrame:
        """Per-request records (``requests.parquet``) with latency columns added.

        Adds ``ttft_s``, ``e2e_s``, ``tpot_s`` (NaN where undefined) and the identifying
        columns ``result_set``, ``strategy``, ``seed``. With ``measured_only`` (default) only
        requests arriving in the measurement window ``[warmup_s, duration_s)`` are kept.
        ``filters`` are those of ``select``.
        """
        frames = []
        for run in self.select(**filters).runs:
            df = _read_parquet(run, "requests.parquet")
            if measured_only:
                a, b = run.window_s
                df = df[(df["arrival_s"] >= a) & (df["arrival_s"] < b)]
            df = df.assign(ttft_s=df["first_token_s"] - df["arrival_s"],
                           e2e_s=df["finish_s"] - df["arrival_s"],
                           tpot_s=(df["finish_s"] - df["first_token_s"])
                           / (df["output_tokens"] - 1).where(df["output_tokens"] > 1))
            frames.append(_tag(df, run))
        return _concat(frames)

    def timeline(self, **filters: Any) -> pd.DataFrame:
        """Per node and time bucket (``timeline.parquet``) with identifying columns."""
        return _concat([_tag(_read_parquet(r, "timeline.parquet"), r)
                        for r in self.select(**filters).runs])

    def nodes(self, **filters: Any) -> pd.DataFrame:
        """Each node's change-point series (``nodes.parquet``) with identifying columns."""
        return _concat([_tag(_read_parquet(r, "nodes.parquet"), r)
                        for r in self.select(**filters).runs])


def _read_parquet(run: Run, name: str) -> pd.DataFrame:
    path = run.path / name
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"unreadable result file ({exc})", source=str(path)) from None


def _tag(df: pd.DataFrame, run: Run) -> pd.DataFrame:
    df = df.copy()
    df.insert(0, "seed", run.seed)
    df.insert(0, "strategy", run.strategy)
    df.insert(0, "result_set", run.result_set)
    return df


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _fingerprint(config: dict[str, Any]) -> str:
    """What makes runs comparable: the resolved scenario less the run, seed and strategies."""
    rest = {k: v for k, v in config.items() if k not in ("run", "seed", "replications")}
    rest["router"] = {k: v for k, v in (config.get("router") or {}).items()
                      if k != "strategies"}
    return json.dumps(rest, sort_keys=True, default=str)


def _set_labels(groups: dict[str, list[Run]]) -> dict[str, str]:
    """Name result sets: the scenario name, plus the offered load if the name is ambiguous."""
    names = {key: runs[0].scenario for key, runs in groups.items()}
    labels: dict[str, str] = {}
    for key, runs in groups.items():
        if list(names.values()).count(names[key]) == 1:
            labels[key] = names[key]
            continue
        offered = [r.summary["throughput"].get("offered_rps") for r in runs]
        values = [float(x) for x in offered if isinstance(x, int | float)]
        mean = sum(values) / len(values) if values else math.nan
        labels[key] = f"{names[key]} @ {mean:.3g} req/s"
    taken = list(labels.values())
    return {k: v if taken.count(v) == 1 else f"{v} #{i + 1}"
            for i, (k, v) in enumerate(labels.items())}


def load_runs(paths: Sequence[str | Path]) -> Runs:
    """Load every run directory at or below ``paths``.

    Each path may be an output folder, a scenario folder, a strategy folder or a run folder.
    Runs of the same scenario (same resolved file apart from seeds and the strategy list) form
    one result set, whichever paths they were reached through; one scenario run with different
    parameters (say, offered loads) gives several result sets. A run reached twice is loaded
    once.

    Raises:
        InputError: no paths, a path without run directories, or a corrupt file.
    """
    if not paths:
        raise InputError("no result directories given")
    groups: dict[str, list[Run]] = {}
    seen: set[Path] = set()
    for raw in paths:
        for run_path in find_run_dirs(Path(raw)):
            if run_path.resolve() in seen:
                continue
            seen.add(run_path.resolve())
            run = read_run(run_path)
            groups.setdefault(_fingerprint(run.config), []).append(run)
    labels = _set_labels(groups)
    return Runs(replace(run, result_set=labels[key])
                for key, runs in groups.items() for run in runs)
