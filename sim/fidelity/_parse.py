"""Small parsing helpers shared by the readers: one-line errors naming file, line, column."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sim.errors import TraceError

#: seconds per unit of a time column
UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def read_text(path: Path) -> str:
    """A file's text, or ``TraceError`` naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TraceError("file not found", source=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"cannot read the file ({exc})", source=str(path)) from None


def read_json(path: Path) -> Any:
    """A JSON file's value; a syntax error names its line and column."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise TraceError(f"invalid JSON at column {exc.colno}: {exc.msg}", source=str(path),
                         line=exc.lineno) from None


def csv_rows(path: Path, required: Sequence[str],
             optional: Sequence[str] = ()) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line, {column: text})`` for each non-blank data row of a CSV file (line 1-based).

    Raises:
        TraceError: the file is missing or empty, or the header lacks a required column.
    """
    text = read_text(path)
    reader = csv.reader(text.splitlines())
    header: list[str] | None = None
    for row in reader:
        if any(cell.strip() for cell in row):
            header = [h.strip() for h in row]
            break
    if header is None:
        raise TraceError("empty file; expected a header line and one row per request",
                         source=str(path), line=1)
    for name in required:
        if name not in header:
            raise TraceError(f"missing column; the header has {', '.join(header[:8])}"
                             f"{', ...' if len(header) > 8 else ''}", source=str(path),
                             line=reader.line_num, column=name)
    index = {name: header.index(name) for name in (*required, *optional) if name in header}
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            missing = header[len(row)]
            raise TraceError(f"row has {len(row)} fields, the header {len(header)}",
                             source=str(path), line=reader.line_num, column=missing)
        yield reader.line_num, {name: row[i].strip() for name, i in index.items()}


def number(text: Any, path: Path, line: int | None, column: str, *,
           label: str = "line") -> float:
    """``text`` as a finite float, or ``TraceError`` naming where it was."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise TraceError(f"expected a number, got {text!r}", source=str(path), line=line,
                         column=column, line_label=label)
    return value


def count(text: Any, path: Path, line: int | None, column: str, *, label: str = "line") -> int:
    """``text`` as a non-negative whole number of tokens."""
    value = number(text, path, line, column, label=label)
    if value < 0 or value != int(value):
        raise TraceError(f"expected a whole number >= 0, got {text!r}", source=str(path),
                         line=line, column=column, line_label=label)
    return int(value)
