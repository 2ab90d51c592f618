"""The completed-task cache: one JSON file per task in ``<out>/cache/``, named by its key.

A record is written atomically (a temporary file renamed into place) the moment its task's
result reaches the parent process, so a sweep killed at any point leaves only whole records,
and the next run of the same sweep (or any sweep or capacity search running the same
simulation) reads them instead of simulating again. Unreadable records (a disk filled
mid-write on a file system without atomic rename) are treated as missing and recomputed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sim.errors import InputError
from sim.results import dumps_json


class TaskCache:
    """Records of finished tasks under ``folder`` (created on first write).

    With ``enabled`` False nothing is read (every task runs again), but records are still
    written, so a later run can resume.
    """

    def __init__(self, folder: Path, enabled: bool = True):
        self.folder = folder
        self.enabled = enabled
        self.hits = 0

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The record of ``key``, or None when absent, unreadable or disabled."""
        if not self.enabled:
            return None
        try:
            record = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or "summary" not in record:
            return None
        self.hits += 1
        return record

    def put(self, key: str, record: dict[str, Any], about: dict[str, Any]) -> None:
        """Write ``record`` (plus ``about``: what ran, for people reading the folder).

        Raises:
            InputError: the folder cannot be written.
        """
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp.write_text(dumps_json({**record, "task": about}), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise InputError(f"cannot write the sweep cache ({exc.strerror or exc})",
                             source=str(path)) from None
