"""Read request-trace files as they are published, chunk by chunk.

``FORMATS`` names the published layouts: the Azure LLM inference traces 2023/2024
(``TIMESTAMP, ContextTokens, GeneratedTokens``), Mooncake JSON lines (``timestamp`` in ms,
``input_length``, ``output_length``, ``hash_ids``), BurstGPT (``Timestamp, Model,
Request tokens, Response tokens, ...``, optional ``Session ID``) and Vidur's processed traces
(``arrived_at, num_prefill_tokens, num_decode_tokens``). Any other CSV, JSON-lines or Parquet
file is read through a ``TraceLayout`` built from a column mapping.

Files stream in chunks (``CHUNK_ROWS`` CSV rows or Parquet rows, ``JSON_BLOCK_BYTES`` of JSON);
``chunks`` yields them and ``sim.workload.traces.read_table`` checks and collects their values,
so memory holds the output columns plus one chunk. Gzip input (recognised by its magic bytes)
is read directly. Problems raise ``TraceError`` naming the file, the line (1-based, counting
every line of the file, blank ones included, one record per line; ``row`` for Parquet) and the
column (``located_error``). Blank lines are skipped.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import math
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from sim.errors import TraceError

#: CSV or Parquet rows parsed per chunk.
CHUNK_ROWS = 1 << 17
#: JSON-lines bytes parsed per block.
JSON_BLOCK_BYTES = 1 << 24

Container = Literal["csv", "jsonl", "parquet"]
TimeUnit = Literal["s", "ms", "us", "ns", "datetime"]
#: Seconds per unit of a numeric arrival column.
UNIT_S = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


@dataclass(frozen=True, slots=True)
class TraceLayout:
    """Where the request fields live in a trace file.

    Attributes:
        container: ``csv``, ``jsonl`` or ``parquet``.
        arrival, prompt_tokens, output_tokens: column names of the arrival time and the token
            counts.
        time_unit: unit of ``arrival``: ``s``, ``ms``, ``us``, ``ns``, or ``datetime``
            (ISO 8601 text, or a Parquet timestamp column).
        hash_ids: column holding each request's list of prompt-block hash ids, or ``None``.
        model: column naming the model a request was sent to, or ``None``.
        session_id: column with a session id (any value; equal values, same session), or
            ``None``.
        optional: columns that may be missing from a file (read when present).
        failed_when_no_output: a request with 0 output tokens failed (BurstGPT).
    """

    container: Container
    arrival: str
    prompt_tokens: str
    output_tokens: str
    time_unit: TimeUnit = "s"
    hash_ids: str | None = None
    model: str | None = None
    session_id: str | None = None
    optional: tuple[str, ...] = ()
    failed_when_no_output: bool = False

    def wanted(self) -> list[str]:
        """Every column the layout reads, in a fixed order."""
        names = [self.arrival, self.prompt_tokens, self.output_tokens, self.hash_ids,
                 self.model, self.session_id]
        return [n for n in dict.fromkeys(names) if n is not None]

    def required(self) -> list[str]:
        """The columns a file must have."""
        return [n for n in self.wanted() if n not in self.optional]


FORMATS: dict[str, TraceLayout] = {
    "azure": TraceLayout("csv", "TIMESTAMP", "ContextTokens", "GeneratedTokens", "datetime"),
    "mooncake": TraceLayout("jsonl", "timestamp", "input_length", "output_length", "ms",
                            hash_ids="hash_ids"),
    "burstgpt": TraceLayout("csv", "Timestamp", "Request tokens", "Response tokens", "s",
                            model="Model", session_id="Session ID", optional=("Session ID",),
                            failed_when_no_output=True),
    "vidur": TraceLayout("csv", "arrived_at", "num_prefill_tokens", "num_decode_tokens", "s"),
}


@dataclass(frozen=True, eq=False)
class TraceTable:
    """The requests of a trace file in file order, as columns.

    Attributes:
        path: the file read.
        layout: how it was read.
        time_s: float64 arrival times in seconds after the first record's timestamp (so that
            datetimes keep sub-microsecond precision); file order, possibly unsorted.
        prompt_tokens, output_tokens: int64 token counts, in ``[0, MAX_TOKENS]``.
        hash_ptr, hash_ids: CSR of the prompt-block hash ids (``None`` without a hash column):
            record ``i`` owns ``hash_ids[hash_ptr[i]:hash_ptr[i+1]]``.
        model_code: int64 index into ``model_names`` per record, or ``None``.
        model_names: model names in order of first appearance.
        session_id: int64 dense session ids (``-1`` where missing), or ``None``.
    """

    path: Path
    layout: TraceLayout
    time_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    hash_ptr: np.ndarray | None = None
    hash_ids: np.ndarray | None = None
    model_code: np.ndarray | None = None
    model_names: tuple[str, ...] = ()
    session_id: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.time_s.shape[0])

    def error(self, record: int, column: str | None, message: str) -> TraceError:
        """Return a ``TraceError`` locating data record ``record`` (0-based, file order)."""
        return located_error(self.path, self.layout.container, record, column, message)


def located_error(path: Path, container: Container, record: int, column: str | None,
                  message: str) -> TraceError:
    """Build a ``TraceError`` for data record ``record`` (0-based), finding its line."""
    if container == "parquet":
        return TraceError(message, source=str(path), line=record + 1, column=column,
                          line_label="row")
    try:
        line: int | None = record_line(path, record, has_header=container == "csv")
    except Exception as exc:
        if damage(exc) is None:
            raise
        line = None  # the line cannot be found in a damaged file; the record number can
        message = f"record {record + 1}: {message}"
    return TraceError(message, source=str(path), line=line, column=column)


def is_gzip(path: Path) -> bool:
    """True when the file starts with the gzip magic bytes."""
    with path.open("rb") as f:
        return f.read(2) == b"\x1f\x8b"


def open_text(path: Path) -> IO[str]:
    """Open a (possibly gzip-compressed) trace file as UTF-8 text."""
    if is_gzip(path):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return path.open(encoding="utf-8", errors="replace")


def record_line(path: Path, record: int, *, has_header: bool) -> int:
    """Return the 1-based line of data record ``record`` (0-based), skipping blank lines.

    Reads the file from the start; used only to report errors.
    """
    want = record + (1 if has_header else 0)
    seen = -1
    lineno = 0
    with open_text(path) as f:
        for lineno, text in enumerate(f, 1):
            if text.strip():
                seen += 1
                if seen == want:
                    return lineno
    return lineno + 1


def chunks(path: Path, layout: TraceLayout,
           max_rows: int | None = None) -> Iterator[dict[str, Any]]:
    """Yield the wanted columns of ``path`` chunk by chunk (pandas Series; a hash-id column
    stays an arrow list array); at most ``max_rows`` records when given.

    Raises:
        TraceError: an empty file, a missing column, or a record the parser cannot read.
    """
    readers = {"csv": _csv_chunks, "jsonl": _json_chunks, "parquet": _parquet_chunks}
    return _unbroken(path, layout, readers[layout.container](path, layout, max_rows))


def _unbroken(path: Path, layout: TraceLayout,
              frames: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Pass ``frames`` on, turning the errors of a damaged file (a truncated or corrupt gzip
    stream, a corrupt Parquet file, an I/O error) into one ``TraceError`` naming the file."""
    try:
        yield from frames
    except TraceError:
        raise
    except Exception as exc:
        problem = damage(exc)
        if problem is None:
            raise
        raise TraceError(f"cannot read the file: {problem}; expected an intact "
                         f"{_kind(path, layout)} file", source=str(path)) from None


def _kind(path: Path, layout: TraceLayout) -> str:
    """``gzip-compressed CSV``, ``Parquet``, ...: what the file was read as."""
    name = {"csv": "CSV", "jsonl": "JSON-lines", "parquet": "Parquet"}[layout.container]
    try:
        return f"gzip-compressed {name}" if layout.container != "parquet" and is_gzip(path) \
            else name
    except OSError:
        return name


def damage(exc: BaseException) -> str | None:
    """A short description of ``exc`` when it says a file is damaged or unreadable (a
    truncated or corrupt gzip stream, a corrupt Parquet or Arrow file, an I/O error); None for
    any other exception."""
    import zlib

    if isinstance(exc, EOFError):
        return "it ends early (truncated?)"
    if isinstance(exc, gzip.BadGzipFile | zlib.error):
        return f"corrupt gzip data ({_short(exc)})"
    if isinstance(exc, OSError) and not type(exc).__module__.startswith("pyarrow"):
        return exc.strerror or _short(exc)
    try:
        import pyarrow as pa
    except ImportError:  # pragma: no cover
        return None
    if isinstance(exc, pa.ArrowException):
        return f"corrupt data ({_short(exc)})"
    return None


def _names(names: list[str]) -> str:
    """Column names for a message: printable (a binary file's bytes shown as ``?``), at most
    120 characters."""
    text = ", ".join(names)
    if not all(c.isprintable() for c in text):
        return "unreadable bytes; is it a text file in the format given?"
    return text if len(text) <= 120 else text[:117] + "..."


def _short(exc: BaseException) -> str:
    """The first line of an exception's message, printable and at most 120 characters."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= 120 else text[:117] + "..."


# --- CSV --------------------------------------------------------------------------------------

def _csv_header(path: Path, layout: TraceLayout) -> list[str]:
    """Return the header's column names; check that the required ones are there."""
    with open_text(path) as f:
        for lineno, text in enumerate(f, 1):  # noqa: B007
            if text.strip():
                names = [n.strip() for n in next(csv.reader([text]))]
                break
        else:
            raise TraceError(f"empty file; expected a header line with the columns "
                             f"{', '.join(layout.required())}", source=str(path), line=1,
                             column=layout.arrival)
    for name in layout.required():
        if name not in names:
            raise TraceError(f"missing column (the header has: {_names(names)})",
                             source=str(path), line=lineno, column=name)
    return names


def _csv_chunks(path: Path, layout: TraceLayout,
                max_rows: int | None) -> Iterator[dict[str, Any]]:
    """Yield the wanted columns of a CSV file chunk by chunk, as pandas Series."""
    # Every column is parsed (so a row with too many fields is an error, not silently cut),
    # with pandas' own type inference: forcing a text dtype or replacing bad bytes makes the C
    # parser several times slower.
    import pandas as pd  # imported here: a run without a CSV trace never loads pandas

    present = [n for n in layout.wanted() if n in _csv_header(path, layout)]
    try:
        reader = pd.read_csv(path, index_col=False, chunksize=CHUNK_ROWS, nrows=max_rows,
                             skipinitialspace=True,
                             compression="gzip" if is_gzip(path) else None)
        while True:
            with warnings.catch_warnings():
                # a short row is read with missing values, which the value checks report
                # with their line; pandas' multi-line warning about it would only add noise
                warnings.simplefilter("ignore", pd.errors.ParserWarning)
                frame = next(reader, None)
            if frame is None:
                return
            frame.columns = [c.strip() for c in frame.columns]
            yield {name: frame[name] for name in present}
    except pd.errors.ParserError as exc:
        raise _parser_error(path, exc) from None
    except UnicodeDecodeError as exc:
        raise TraceError(f"not UTF-8 text ({exc.reason} at byte {exc.start} of a chunk)",
                         source=str(path)) from None


def _parser_error(path: Path, exc: Exception) -> TraceError:
    """Turn a pandas tokenizer error ("Expected 3 fields in line 5, saw 4") into a TraceError."""
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    found = re.search(r"[Ee]xpected (\d+) fields in line (\d+), saw (\d+)", text)
    if found:
        return TraceError(f"{found.group(3)} fields where the header has {found.group(1)}",
                          source=str(path), line=int(found.group(2)))
    return TraceError(f"cannot parse CSV: {text}", source=str(path))


# --- JSON lines and Parquet -------------------------------------------------------------------

def _arrow_types(layout: TraceLayout, first: dict[str, Any]) -> dict[str, Any]:
    """The arrow types of the wanted JSON fields; a session id's type follows ``first``."""
    import pyarrow as pa

    types: dict[str, Any] = {layout.arrival: pa.string() if layout.time_unit == "datetime"
                             else pa.float64(),
                             layout.prompt_tokens: pa.float64(),
                             layout.output_tokens: pa.float64()}
    if layout.hash_ids:
        types[layout.hash_ids] = pa.list_(pa.int64())
    if layout.model:
        types[layout.model] = pa.string()
    if layout.session_id:
        text = isinstance(first.get(layout.session_id), str)
        types[layout.session_id] = pa.string() if text else pa.float64()
    return types


def _json_chunks(path: Path, layout: TraceLayout,
                 max_rows: int | None) -> Iterator[dict[str, Any]]:
    """Yield the wanted fields of a JSON-lines file block by block (pyarrow's reader)."""
    import pyarrow as pa
    import pyarrow.json as pj

    with open_text(path) as f:
        first_line = next((line for line in f if line.strip()), None)
    if first_line is None:
        raise TraceError("empty file; expected one JSON object per line", source=str(path),
                         line=1, column=layout.arrival)
    try:
        first = json.loads(first_line)
    except json.JSONDecodeError:
        first = {}
    if max_rows is not None:
        with open_text(path) as f:
            head = list(itertools.islice((line for line in f if line.strip()), max_rows))
        source: Any = io.BytesIO("".join(head).encode("utf-8"))
    else:
        source = pa.input_stream(str(path), compression="gzip" if is_gzip(path) else None)
    types = _arrow_types(layout, first if isinstance(first, dict) else {})
    options = pj.ParseOptions(explicit_schema=pa.schema(list(types.items())),
                              unexpected_field_behavior="ignore")
    try:
        reader = pj.open_json(source, read_options=pj.ReadOptions(block_size=JSON_BLOCK_BYTES),
                              parse_options=options)
        for batch in reader:
            yield _arrow_frame(batch, layout)
    except pa.ArrowInvalid as exc:
        raise _json_error(path, layout, str(exc)) from None


def _parquet_chunks(path: Path, layout: TraceLayout,
                    max_rows: int | None) -> Iterator[dict[str, Any]]:
    """Yield the wanted columns of a Parquet file batch by batch."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    for name in layout.required():
        if name not in names:
            raise TraceError(f"missing column (the file has: {_names(names)})",
                             source=str(path), column=name)
    present = [n for n in layout.wanted() if n in names]
    done = 0
    for batch in pf.iter_batches(batch_size=CHUNK_ROWS, columns=present):
        if max_rows is not None:
            batch = batch.slice(0, max_rows - done)
        done += batch.num_rows
        yield _arrow_frame(batch, layout)
        if max_rows is not None and done >= max_rows:
            return


def _arrow_frame(batch: Any, layout: TraceLayout) -> dict[str, Any]:
    """Columns of a record batch: pandas Series, the hash-id list kept as an arrow array."""
    out: dict[str, Any] = {}
    for name in batch.schema.names:
        column = batch.column(name)
        out[name] = column if name == layout.hash_ids else column.to_pandas()
    return out


def _json_error(path: Path, layout: TraceLayout, arrow_message: str) -> TraceError:
    """Scan the file with Python's json to find the record pyarrow could not read."""
    with open_text(path) as f:
        for lineno, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                return TraceError(f"invalid JSON at character {exc.colno}: {exc.msg}",
                                  source=str(path), line=lineno)
            problem = _json_record_problem(record, layout)
            if problem is not None:
                column, message = problem
                return TraceError(message, source=str(path), line=lineno, column=column)
    return TraceError(f"cannot read JSON lines: {arrow_message}", source=str(path))


def _json_record_problem(record: Any, layout: TraceLayout) -> tuple[str | None, str] | None:
    """Return ``(column, message)`` for the first field of ``record`` that is malformed."""
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {type(record).__name__}"
    for name in layout.wanted():
        value = record.get(name)
        if name not in record or value is None:
            if name in layout.required():
                return name, "missing or null value"
            continue
        if name == layout.hash_ids:
            if not isinstance(value, list) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value):
                return name, "expected a list of integer hash ids"
        elif name == layout.session_id:
            continue  # any JSON scalar names a session
        elif name == layout.model or (name == layout.arrival and layout.time_unit == "datetime"):
            if not isinstance(value, str):
                return name, f"expected a string, got {value!r}"
        elif isinstance(value, bool) or not isinstance(value, int | float):
            return name, f"not a number ({value!r})"
        elif not math.isfinite(value):
            return name, f"missing or NaN value ({value!r})"
    return None
