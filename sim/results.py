"""Result directories: ``<out>/<scenario>/<strategy>/seed-<k>/``, written atomically.

Each directory holds ``scenario.resolved.yaml`` (the scenario as run, defaults filled in),
``summary.json`` (sorted keys, no timestamps: the same seed gives the same bytes),
``requests.parquet`` (one row per request), ``nodes.parquet`` (each node's change-point series:
waiting, running, KV blocks in use), ``timeline.parquet`` (per node and time bucket) and
``meta.json`` (versions and wall-clock figures: the only file that differs between reruns).
Everything is written into a hidden temporary folder beside the target and renamed into place,
so an interrupted run never leaves a half-written directory; an existing directory is replaced
only with ``force``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from sim.errors import InputError
from sim.model.requests import STATUS_NAMES


def run_dir(out: Path, scenario: str, label: str, seed: int) -> Path:
    """The directory of one run."""
    return out / scenario / label / f"seed-{seed}"


def check_writable(paths: list[Path], force: bool) -> None:
    """Refuse to overwrite existing result directories unless ``force``."""
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise InputError(f"result directory exists: {existing[0]}{more} (use --force to replace)")


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become null, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps_json(obj: Any) -> str:
    """Deterministic JSON text: sorted keys, two-space indent, trailing newline."""
    return json.dumps(_clean(obj), sort_keys=True, indent=2, allow_nan=False) + "\n"


def write_run(path: Path, *, scenario: dict[str, Any], summary: dict[str, Any],
              requests: dict[str, np.ndarray], nodes: dict[str, np.ndarray],
              timeline: dict[str, np.ndarray], meta: dict[str, Any], force: bool) -> None:
    """Write one run directory atomically."""
    check_writable([path], force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        (tmp / "scenario.resolved.yaml").write_text(
            yaml.safe_dump(scenario, sort_keys=False), encoding="utf-8")
        (tmp / "summary.json").write_text(dumps_json(summary), encoding="utf-8")
        (tmp / "meta.json").write_text(dumps_json(meta), encoding="utf-8")
        req = dict(requests)
        req["status"] = np.array([STATUS_NAMES[int(s)] for s in req["status"]])
        pq.write_table(pa.table(req), tmp / "requests.parquet")
        pq.write_table(pa.table(nodes), tmp / "nodes.parquet")
        pq.write_table(pa.table(timeline), tmp / "timeline.parquet")
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(tmp: Path, path: Path) -> None:
    if path.exists():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def read_summary(path: Path) -> dict[str, Any]:
    """Load a run directory's ``summary.json``."""
    return json.loads((path / "summary.json").read_text(encoding="utf-8"))
