"""The tidy sweep table: one row per point x strategy x replication.

Columns: ``point`` (grid index), one column per swept key (named by the key; values that are
not scalars are written as YAML flow text), ``strategy``, ``replication``, ``seed``, the
stability verdict (``stable``, ``growing``, ``saturated``, ``unfinished_measured``,
``queue_growth``: ``sim.sweep.tasks.stability``) and every
figure of the run's summary flattened to dotted keys (``latency_s.ttft.p99``...), as
``sim.report.load`` flattens them. Rows are in task order (point, replication, strategy), so
the same sweep gives the same bytes whichever executor ran it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from sim.errors import InputError
from sim.report.load import flatten
from sim.sweep.tasks import Task

ID_COLUMNS = ("point", "strategy", "replication", "seed")
STABILITY_COLUMNS = ("stable", "growing", "saturated", "unfinished_measured", "queue_growth")


def _cell(value: Any) -> Any:
    if isinstance(value, dict | list | tuple):
        return yaml.safe_dump(value, default_flow_style=True, width=10**9).strip()
    return value


def row(task: Task, values: dict[str, Any], seed: int, record: dict[str, Any]) -> dict[str, Any]:
    """One table row for a task's record."""
    stab = record.get("stability") or {}
    out: dict[str, Any] = {"point": task.point}
    out |= {k: _cell(v) for k, v in values.items()}
    out |= {"strategy": task.label, "replication": task.replication, "seed": seed,
            "stable": bool(stab.get("stable", False)), "growing": bool(stab.get("growing")),
            "saturated": bool(stab.get("saturated")),
            "unfinished_measured": int(stab.get("unfinished", 0)),
            "queue_growth": float(stab.get("queue_growth", math.nan))}
    metrics = flatten(record["summary"])
    return out | {k: v for k, v in metrics.items() if k not in out}


def frame(rows: Sequence[dict[str, Any]], grid_keys: Sequence[str]) -> pd.DataFrame:
    """The rows as a DataFrame; a swept column mixing kinds of values becomes text."""
    df = pd.DataFrame(list(rows))
    for key in grid_keys:
        if key in df and len({type(v) for v in df[key]} - {int, float}) > 0 and \
                df[key].map(type).nunique() > 1:
            df[key] = df[key].map(str)
    return df


def write_table(df: pd.DataFrame, folder: Path, stem: str = "sweep") -> tuple[Path, Path]:
    """Write ``<stem>.parquet`` and ``<stem>.csv`` into ``folder``, each atomically.

    Raises:
        InputError: the folder cannot be written.
    """
    parquet, csv = folder / f"{stem}.parquet", folder / f"{stem}.csv"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _atomic(parquet, lambda p: pq.write_table(
            pa.Table.from_pandas(df, preserve_index=False), p))
        _atomic(csv, lambda p: df.to_csv(p, index=False, float_format=None,
                                         lineterminator="\n"))
    except OSError as exc:
        raise InputError(f"cannot write the table ({exc.strerror or exc})",
                         source=str(folder)) from None
    return parquet, csv


def write_text(path: Path, text: str | bytes) -> None:
    """Write one file atomically (a temporary file beside it, renamed into place)."""
    def put(p: Path) -> None:
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text, encoding="utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic(path, put)


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
