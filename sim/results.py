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
    """Refuse to overwrite existing result directories unless ``force``, and refuse targets
    that cannot be created (a file in the way, a read-only folder). Changes nothing on disk.

    Raises:
        InputError: naming the first offending directory and what was expected.
    """
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise InputError(f"result directory exists{more}; expected a new directory "
                         f"(use --force to replace)", source=str(existing[0]))
    for path in paths:
        folder = path.parent
        while not folder.exists():  # the nearest folder that exists (the root always does)
            folder = folder.parent
        if not folder.is_dir():
            raise InputError(f"{folder} is a file; expected a folder for the results",
                             source=str(path))
        if not os.access(folder, os.W_OK | os.X_OK):
            raise InputError(f"cannot write into {folder}; expected a writable folder",
                             source=str(path))


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
    """Write one run directory atomically: into a hidden folder beside it, then renamed.

    Raises:
        InputError: the directory exists and not ``force``, or it cannot be written (the
            message names it); nothing is left behind either way.
    """
    check_writable([path], force)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        _write_files(tmp, scenario=scenario, summary=summary, requests=requests, nodes=nodes,
                     timeline=timeline, meta=meta)
        _replace_dir(tmp, path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InputError(f"cannot write the result directory ({exc.strerror or exc})",
                         source=str(path)) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_files(folder: Path, *, scenario: dict[str, Any], summary: dict[str, Any],
                 requests: dict[str, np.ndarray], nodes: dict[str, np.ndarray],
                 timeline: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write the six files of a run into ``folder``."""
    (folder / "scenario.resolved.yaml").write_text(
        yaml.safe_dump(scenario, sort_keys=False), encoding="utf-8")
    (folder / "summary.json").write_text(dumps_json(summary), encoding="utf-8")
    (folder / "meta.json").write_text(dumps_json(meta), encoding="utf-8")
    req = dict(requests)
    req["status"] = np.array([STATUS_NAMES[int(s)] for s in req["status"]])
    pq.write_table(pa.table(req), folder / "requests.parquet")
    pq.write_table(pa.table(nodes), folder / "nodes.parquet")
    pq.write_table(pa.table(timeline), folder / "timeline.parquet")


def _replace_dir(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path``; an existing ``path`` is swapped out, and restored on failure."""
    if not path.exists():
        os.replace(tmp, path)
        return
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_summary(path: Path) -> dict[str, Any]:
    """Load a run directory's ``summary.json``."""
    return json.loads((path / "summary.json").read_text(encoding="utf-8"))
