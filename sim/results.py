"""Result directories: ``<out>/<scenario>/<strategy>/seed-<k>/``, written atomically.

Each directory holds ``scenario.resolved.yaml`` (the scenario as run, defaults filled in),
``summary.json`` (sorted keys, no timestamps: the same seed gives the same bytes),
``requests.parquet`` (one row per request), ``nodes.parquet`` (each node's change-point series:
waiting, running, KV blocks in use), ``timeline.parquet`` (per node and time bucket) and
``meta.json`` (versions and wall-clock figures: the only file that differs between reruns).
Everything is written into a hidden temporary folder beside the target and renamed into place,
so an interrupted run never leaves a half-written directory; an existing directory is replaced
only with ``force``. Without ``force`` the final rename itself refuses a directory that appeared
meanwhile (another run writing to the same ``--out``), so two racing runs never replace each
other's results. Folders created for a directory that then fails to be written are removed
again, and temporary folders left by a killed process are cleaned up by the next write.
"""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import shutil
import sys
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
              requests: dict[str, np.ndarray] | Path, nodes: dict[str, np.ndarray],
              timeline: dict[str, np.ndarray], meta: dict[str, Any], force: bool) -> None:
    """Write one run directory atomically: into a hidden folder beside it, then renamed.
    ``requests``: the per-request columns, or a ``requests.parquet`` already written (a
    streamed run's), which is moved in.

    Raises:
        InputError: the directory exists and not ``force``, or it cannot be written (the
            message names it); nothing is left behind either way.
    """
    check_writable([path], force)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    created = _missing_folders(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _clean_stale(path)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        _write_files(tmp, scenario=scenario, summary=summary, requests=requests, nodes=nodes,
                     timeline=timeline, meta=meta)
        _replace_dir(tmp, path, force)
    except FileExistsError:
        _undo(tmp, created)
        raise InputError("result directory exists (another run wrote it meanwhile); expected "
                         "a new directory (use --force to replace)", source=str(path)) from None
    except OSError as exc:
        _undo(tmp, created)
        raise InputError(f"cannot write the result directory ({exc.strerror or exc})",
                         source=str(path)) from None
    except BaseException:
        _undo(tmp, created)
        raise


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _undo(tmp: Path, created: list[Path]) -> None:
    """Remove the temporary folder and the (still empty) folders this write created."""
    shutil.rmtree(tmp, ignore_errors=True)
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            break  # not empty (another run's results) or gone: keep the rest


def _clean_stale(path: Path) -> None:
    """Remove the temporary folders beside ``path`` left by processes that no longer exist
    (killed mid-write); a displaced old directory whose replacement never arrived is put
    back."""
    for stale in path.parent.glob(f".{path.name}.*-*"):
        kind, _, pid = stale.name.rpartition("-")
        if not pid.isdigit() or _alive(int(pid)):
            continue
        if kind.endswith(".old") and not path.exists():
            os.replace(stale, path)
        elif kind.endswith((".old", ".tmp")):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (ours counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _write_files(folder: Path, *, scenario: dict[str, Any], summary: dict[str, Any],
                 requests: dict[str, np.ndarray] | Path, nodes: dict[str, np.ndarray],
                 timeline: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write the six files of a run into ``folder``."""
    (folder / "scenario.resolved.yaml").write_text(
        yaml.safe_dump(scenario, sort_keys=False), encoding="utf-8")
    (folder / "summary.json").write_text(dumps_json(summary), encoding="utf-8")
    (folder / "meta.json").write_text(dumps_json(meta), encoding="utf-8")
    if isinstance(requests, Path):
        shutil.move(requests, folder / "requests.parquet")
    else:
        write_requests(folder / "requests.parquet", requests)
    pq.write_table(arrow_table(nodes), folder / "nodes.parquet")
    pq.write_table(arrow_table(timeline), folder / "timeline.parquet")


#: rows per row group of ``requests.parquet`` (written and converted one group at a time)
ROW_GROUP_ROWS = 1 << 20


def write_requests(path: Path, requests: dict[str, np.ndarray],
                   row_group_rows: int = ROW_GROUP_ROWS) -> None:
    """Write the per-request columns as Parquet, ``row_group_rows`` rows per row group.

    The status codes become their names (``STATUS_NAMES``) one row group at a time, so the
    text column never exists whole in memory; the values are those of a single
    ``pq.write_table`` (only the row-group layout differs for runs of more rows).
    """
    n = len(next(iter(requests.values()))) if requests else 0
    with RequestsWriter(path) as writer:
        for start in range(0, max(n, 1), row_group_rows):
            writer.write({k: v[start:start + row_group_rows] for k, v in requests.items()})


class RequestsWriter:
    """Append per-request rows to a Parquet file, one row group per ``write`` (a run that
    streams its records writes each finished chunk as it goes). Status codes are written as
    their names; the schema is fixed by the first chunk."""

    def __init__(self, path: Path):
        self.path = path
        self.rows = 0
        self._writer: Any = None

    def write(self, chunk: dict[str, np.ndarray]) -> None:
        """Append ``chunk`` (columns of equal length) as one row group."""
        columns = dict(chunk)
        if "status" in columns:
            columns["status"] = status_names(columns["status"])
        table = arrow_table(columns)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        """Finish the file (an empty one when nothing was written)."""
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, arrow_table({}).schema)
        self._writer.close()

    def __enter__(self) -> RequestsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def status_names(codes: np.ndarray) -> np.ndarray:
    """Status codes as their names (``STATUS_NAMES``), as a numpy text array."""
    names = np.array([STATUS_NAMES[k] for k in range(max(STATUS_NAMES) + 1)])
    return names[np.asarray(codes, dtype=np.int64)]


def arrow_table(columns: dict[str, np.ndarray]) -> pa.Table:
    """``pa.table(columns)`` without importing pandas: ``pa.table`` and ``pa.array`` on numpy
    input load pandas (0.35 s) to check for pandas objects. Fixed-width numbers are wrapped
    without a copy of their values; text is packed into an Arrow string array."""
    return pa.Table.from_arrays([arrow_array(np.asarray(v)) for v in columns.values()],
                                names=list(columns))


_ARROW_TYPES = {np.dtype(np.float64): pa.float64(), np.dtype(np.int64): pa.int64(),
                np.dtype(np.float32): pa.float32(), np.dtype(np.int32): pa.int32()}


def arrow_array(values: np.ndarray) -> pa.Array:
    """One numpy column as an Arrow array, as ``pa.array`` makes it (NaN stays a value)."""
    if values.ndim != 1:
        return pa.array(values)
    kind = _ARROW_TYPES.get(values.dtype) if values.dtype.isnative else None
    if kind is not None:
        data = np.ascontiguousarray(values)
        return pa.Array.from_buffers(kind, data.size, [None, pa.py_buffer(data)])
    if values.dtype.kind == "U":
        encoded = [s.encode("utf-8") for s in values.tolist()]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        return pa.Array.from_buffers(pa.string(), len(encoded),
                                     [None, pa.py_buffer(offsets),
                                      pa.py_buffer(b"".join(encoded))])
    return pa.array(values)


def _replace_dir(tmp: Path, path: Path, force: bool) -> None:
    """Move ``tmp`` to ``path``. Without ``force`` an existing ``path`` is refused by the
    rename itself (``FileExistsError``), so a directory another process renamed into place
    after our checks is never replaced; with ``force`` it is swapped out, and restored on
    failure."""
    if not force:
        _rename_no_replace(tmp, path)
        return
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


def _rename_no_replace(tmp: Path, path: Path) -> None:
    """Rename the folder ``tmp`` to ``path``; ``FileExistsError`` if ``path`` exists.

    Atomic on Linux (``renameat2`` with ``RENAME_NOREPLACE``); elsewhere a rename onto a
    non-empty directory fails by itself, and an empty one holds no results.
    """
    if _renameat2 is not None:
        if _renameat2(-100, os.fsencode(tmp), -100, os.fsencode(path), 1) == 0:  # AT_FDCWD
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), str(path))
        if err not in (errno.ENOSYS, errno.EINVAL):  # not supported here: fall through
            raise OSError(err, os.strerror(err), str(path))
    if path.exists():
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
    try:
        os.rename(tmp, path)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(exc.errno, exc.strerror, str(path)) from None
        raise


def _load_renameat2() -> Any:
    """libc's ``renameat2`` (Linux, glibc >= 2.28), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                     ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_renameat2 = _load_renameat2()


def read_summary(path: Path) -> dict[str, Any]:
    """Load a run directory's ``summary.json``."""
    return json.loads((path / "summary.json").read_text(encoding="utf-8"))
