"""Real request traces as a workload: the ``workload.trace`` block and its entry points.

A scenario replays a trace instead of drawing synthetic requests with::

    workload:
      trace: {format: azure, path: /data/AzureLLMInferenceTrace_conv.csv, duration_s: 600}

``TraceSpec`` holds the options (file, column mapping, replay options); ``read_table`` reads a
file's chunks (``sim.workload.trace_readers``) and checks every value: missing or NaN values,
non-numbers, fractional, negative or too large token counts, unparsable timestamps, malformed
hash-id lists, each reported with the file, line and column. ``check_trace`` checks the file
cheaply (it exists, its header and first ``HEAD_ROWS`` records parse), as ``simlb validate``
needs; ``trace_workload`` reads the whole file and replays it (``sim.workload.replay``). A
relative ``path`` is resolved against the scenario file's folder (``base_dir``), or the
working directory when no folder is given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from sim.errors import ScenarioError, TraceError
from sim.spec import StrictModel
from sim.workload.base import Workload
from sim.workload.lengths import MAX_TOKENS
from sim.workload.replay import replay
from sim.workload.trace_readers import (
    FORMATS,
    UNIT_S,
    TraceLayout,
    TraceTable,
    chunks,
    located_error,
    open_text,
)

if TYPE_CHECKING:
    import pandas as pd

#: Records read by ``check_trace``.
HEAD_ROWS = 100

TraceFormat = Literal["azure", "mooncake", "burstgpt", "vidur", "csv", "jsonl", "parquet"]
GENERIC_FORMATS = ("csv", "jsonl", "parquet")


class TraceColumns(StrictModel):
    """Column names of a generic ``csv``, ``jsonl`` or ``parquet`` trace."""

    arrival: str = Field(description="arrival time column (unit: time_unit)")
    prompt_tokens: str = Field(description="prompt length column, tokens")
    output_tokens: str = Field(description="generated length column, tokens")
    hash_ids: str | None = Field(None, description="list of prompt-block hash ids (jsonl, "
                                                   "parquet); equal ids, equal blocks")
    model: str | None = Field(None, description="model name column")
    session_id: str | None = Field(None, description="session id column")


class TraceSpec(StrictModel):
    """Which trace to replay and how.

    The window (``start_offset_s``, ``duration_s``) is in the trace's own seconds, counted from
    its first request, and applies before time scaling; ``max_requests`` then keeps the first
    requests of the window. Time scaling divides every offset by ``time_scale`` (a speed-up
    factor) or by the factor that makes the mean rate ``(n - 1) / span`` equal
    ``target_rate_rps``. ``jitter_within_s`` moves each request to a uniform point of its
    ``jitter_within_s``-wide bucket (for traces rounded to whole seconds; ``auto``: the grid
    the timestamps are rounded to, found from the trace, none when finer than 1 ms); the draw is
    seeded by replication, so replications differ. The scenario's
    ``duration_s`` still bounds the replay: requests at or after it are dropped; with ``loop``
    the trace is repeated (period: its span plus one mean gap) to fill it. ``prompt_scale``
    shrinks prompts (rounded, at least 1 token; hashed blocks become
    ``hash_block_tokens * prompt_scale`` tokens, so the sharing structure is kept), for example
    to replay long-context traces on a model with a short context.

    ``output_cap`` is the ``max_tokens`` each replayed request sends: ``own`` (default; what a
    client replaying a trace sends: the request's own output), ``max`` (the trace's largest
    output) or a number (outputs above it are cut to it, and counted). A request whose prompt
    plus cap exceeds the context of the nodes serving it is rejected by them (``over_context:
    reject``, vLLM's behaviour) or has its prompt's end trimmed to fit (``trim``); counted
    either way (``sim.workload.replay``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    format: TraceFormat
    path: str = Field(description="trace file; relative paths start at the scenario's folder")
    columns: TraceColumns | None = Field(None, description="column mapping (generic formats)")
    time_unit: Literal["s", "ms", "us", "ns", "datetime"] | None = Field(
        None, description="unit of the arrival column (generic formats; default s)")
    hash_block_tokens: int = Field(512, ge=1, le=MAX_TOKENS,
                                   description="tokens per hash-id block (Mooncake: 512)")
    start_offset_s: float = Field(0.0, ge=0, description="window start, trace seconds")
    duration_s: float | None = Field(None, gt=0, description="window length, trace seconds")
    max_requests: int | None = Field(None, ge=1, description="keep the first N requests")
    time_scale: float | None = Field(None, gt=0, description="speed-up factor")
    target_rate_rps: float | None = Field(None, gt=0, description="rescale to this mean rate")
    jitter_within_s: float | Literal["auto"] | None = Field(
        None, description="timestamp bucket width, s, or auto (the trace's rounding grid); "
                          "arrivals spread inside it, seeded by replication")
    loop: bool = Field(False, description="repeat the trace to fill the scenario's duration_s")
    model_map: dict[str, str | None] | None = Field(
        None, description="trace model name -> served model; null drops that model's requests")
    keep_failed: bool = Field(False, description="BurstGPT: keep failed requests (0 output "
                                                 "tokens) as 1-token requests")
    zero_tokens: Literal["error", "drop", "one"] = Field(
        "error", description="a 0-token prompt or output: an error, dropped, or raised to 1")
    prompt_scale: float | None = Field(
        None, gt=0, le=1, description="shrink every prompt by this factor (blocks of hashed "
                                      "traces too, so sharing is kept), e.g. for short-context "
                                      "models")
    output_cap: Literal["own", "max"] | int = Field(
        "own", description="max_tokens of each request: own (its own output), max (the "
                           "trace's largest output) or a number (larger outputs cut to it)")
    over_context: Literal["reject", "trim"] = Field(
        "reject", description="prompt + cap beyond the context: rejected by the node (vLLM) "
                              "or the prompt's end trimmed to fit; counted either way")
    max_output_tokens: int | None = Field(
        None, ge=1, le=MAX_TOKENS, description="older name of output_cap: <number>")
    strict: bool = Field(False, description="unsorted timestamps are an error, not sorted")

    @model_validator(mode="after")
    def _consistent(self) -> TraceSpec:
        if isinstance(self.jitter_within_s, float | int) and self.jitter_within_s <= 0:
            raise ValueError("jitter_within_s: expected a width > 0 s or 'auto'")
        if isinstance(self.output_cap, int) and not 1 <= self.output_cap <= MAX_TOKENS:
            raise ValueError(f"output_cap: expected own, max or 1..{MAX_TOKENS} tokens")
        if self.max_output_tokens is not None and self.output_cap != "own":
            raise ValueError("give at most one of output_cap and max_output_tokens (its older "
                             "name)")
        if self.time_scale is not None and self.target_rate_rps is not None:
            raise ValueError("give at most one of time_scale and target_rate_rps")
        generic = self.format in GENERIC_FORMATS
        if generic and self.columns is None:
            raise ValueError(f"format '{self.format}' needs 'columns' (arrival, prompt_tokens, "
                             "output_tokens)")
        if not generic and (self.columns is not None or self.time_unit is not None):
            raise ValueError(f"format '{self.format}' has fixed columns; 'columns' and "
                             "'time_unit' are for csv, jsonl and parquet")
        if generic and self.format == "csv" and self.columns and self.columns.hash_ids:
            raise ValueError("hash_ids need a list column: use jsonl or parquet")
        if self.model_map is not None and self.layout().model is None:
            raise ValueError("model_map needs a model column (burstgpt, or columns.model)")
        if self.keep_failed and not self.layout().failed_when_no_output:
            raise ValueError("keep_failed applies to burstgpt only")
        if self.prompt_scale is not None and self.layout().hash_ids is not None:
            scaled = self.hash_block_tokens * self.prompt_scale
            if scaled < 1 or abs(scaled - round(scaled)) > 1e-9:
                raise ValueError(f"prompt_scale * hash_block_tokens must be a whole number of "
                                 f"tokens, got {scaled:g}")
        return self

    @property
    def cap(self) -> Literal["own", "max"] | int:
        """The effective ``output_cap`` (``max_output_tokens`` when given)."""
        return self.max_output_tokens if self.max_output_tokens is not None else self.output_cap

    def layout(self) -> TraceLayout:
        """The file layout this spec reads."""
        if self.format not in GENERIC_FORMATS:
            return FORMATS[self.format]
        cols = self.columns
        assert cols is not None  # checked by the validator
        return TraceLayout(self.format, cols.arrival, cols.prompt_tokens,  # type: ignore[arg-type]
                           cols.output_tokens, self.time_unit or "s", hash_ids=cols.hash_ids,
                           model=cols.model, session_id=cols.session_id)

    def resolve_path(self, base_dir: Path | None) -> Path:
        """The trace file: ``path`` as given when absolute, else under ``base_dir`` (or cwd)."""
        path = Path(self.path).expanduser()
        if path.is_absolute():
            return path
        return (base_dir or Path.cwd()) / path


def _existing_path(spec: TraceSpec, base_dir: Path | None, field: str) -> Path:
    path = spec.resolve_path(base_dir)
    if not path.is_file():
        raise ScenarioError(f"trace file not found: {path}", field=f"{field}.path")
    return path


def check_trace(spec: TraceSpec, base_dir: Path | None = None, field: str = "workload.trace",
                ) -> None:
    """Check that the trace file exists and its header and first ``HEAD_ROWS`` records parse.

    Raises:
        ScenarioError: the file does not exist (field ``<field>.path``).
        TraceError: a missing column, an empty file or a bad value in the first records.
    """
    read_table(_existing_path(spec, base_dir, field), spec.layout(), max_rows=HEAD_ROWS)


def read_trace(spec: TraceSpec, base_dir: Path | None = None,
               field: str = "workload.trace") -> TraceTable:
    """Read the whole trace file of ``spec`` (chunked; see ``sim.workload.trace_readers``)."""
    return read_table(_existing_path(spec, base_dir, field), spec.layout())


def trace_workload(spec: TraceSpec, duration_s: float | None, seed: int,
                   base_dir: Path | None = None) -> Workload:
    """Read and replay a trace: the requests arriving in ``[0, duration_s)``.

    Args:
        spec: the trace and its replay options.
        duration_s: the scenario's duration; requests at or after it are dropped (``None``:
            no bound, and ``loop`` is ignored).
        seed: root seed; only ``jitter_within_s`` draws, from ``(seed, "workload", "trace")``.
        base_dir: folder that a relative ``spec.path`` starts from.
    """
    return replay(read_trace(spec, base_dir), spec, duration_s, seed)


def infer_format(path: Path) -> TraceFormat:
    """Guess a published format from a file's name and first line (for the command line).

    Raises:
        TraceError: the format cannot be told; the message says to pass ``--format``.
    """
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".parquet", ".pq")):
        raise TraceError("a Parquet trace needs --format parquet and a column mapping",
                         source=str(path))
    with open_text(path) as f:
        first = next((line for line in f if line.strip()), "")
    if first.lstrip().startswith("{"):
        try:
            keys = set(json.loads(first))
        except (json.JSONDecodeError, TypeError):
            keys = set()
        if {"timestamp", "input_length", "output_length"} <= keys:
            return "mooncake"
    else:
        header = {h.strip() for h in first.split(",")}
        for fmt, layout in FORMATS.items():
            if layout.container == "csv" and set(layout.required()) <= header:
                return fmt  # type: ignore[return-value]
    raise TraceError("cannot tell the trace format from the first line; pass --format",
                     source=str(path), line=1)


def read_table(path: Path, layout: TraceLayout, *, max_rows: int | None = None) -> TraceTable:
    """Read ``path`` (or only its first ``max_rows`` records) with ``layout``.

    Raises:
        TraceError: missing columns, an empty file, or a bad value (missing, NaN, not a number,
            not a whole number, negative or above ``MAX_TOKENS`` token counts, an unparsable
            timestamp, a malformed hash-id list), naming the file, line and column.
    """
    collector = _Collector(path, layout)
    for frame in chunks(path, layout, max_rows):
        collector.add(frame)
    if collector.rows == 0:
        parquet = layout.container == "parquet"
        raise TraceError("no requests in the file", source=str(path),
                         line=1 if parquet or layout.container == "jsonl" else 2,
                         column=layout.arrival, line_label="row" if parquet else "line")
    return collector.table()


# --- value checks, one chunk at a time ----------------------------------------------------------

class _Collector:
    """Check and convert chunks of raw columns; concatenate them at the end."""

    def __init__(self, path: Path, layout: TraceLayout) -> None:
        self.path = path
        self.layout = layout
        self.rows = 0
        self.parts: dict[str, list[np.ndarray]] = {}
        self.codes: dict[str, dict[Any, int]] = {"model": {}, "session": {}}
        self.time_ref: Any = None

    def add(self, frame: dict[str, Any]) -> None:
        """Check one chunk (``frame`` maps column names to Series) and keep its columns."""
        lay = self.layout
        start = self.rows
        if len(frame[lay.arrival]) == 0:
            return
        self._keep("time", self._time(frame[lay.arrival], start))
        self._keep("prompt", self._tokens(frame[lay.prompt_tokens], lay.prompt_tokens, start))
        self._keep("output", self._tokens(frame[lay.output_tokens], lay.output_tokens, start))
        if lay.hash_ids:
            lengths, values = self._hashes(frame[lay.hash_ids], start)
            self._keep("hash_len", lengths)
            self._keep("hash", values)
        if lay.model:
            self._keep("model", self._codes(frame[lay.model], "model", start, lay.model))
        if lay.session_id and lay.session_id in frame:
            self._keep("session", self._codes(frame[lay.session_id], "session", start, None))
        self.rows += len(frame[lay.arrival])

    def table(self) -> TraceTable:
        """Return the concatenated ``TraceTable``."""
        cat = {k: np.concatenate(v) for k, v in self.parts.items()}
        hash_ptr = None
        if "hash_len" in cat:
            hash_ptr = np.zeros(self.rows + 1, dtype=np.int64)
            np.cumsum(cat["hash_len"], out=hash_ptr[1:])
        return TraceTable(
            path=self.path, layout=self.layout, time_s=cat["time"],
            prompt_tokens=cat["prompt"], output_tokens=cat["output"], hash_ptr=hash_ptr,
            hash_ids=cat.get("hash"), model_code=cat.get("model"),
            model_names=tuple(self.codes["model"]), session_id=cat.get("session"))

    def _keep(self, name: str, values: np.ndarray) -> None:
        self.parts.setdefault(name, []).append(values)

    def _fail(self, raw: pd.Series, bad: np.ndarray, start: int, column: str,
              what: str) -> TraceError:
        import pandas as pd  # only a trace replay needs pandas

        i = int(np.flatnonzero(bad)[0])
        value = raw.iloc[i]
        message = "missing or NaN value" if pd.isna(value) else f"{what} ({value!r})"
        return located_error(self.path, self.layout.container, start + i, column, message)

    def _time(self, raw: pd.Series, start: int) -> np.ndarray:
        import pandas as pd  # only a trace replay needs pandas

        name = self.layout.arrival
        if self.layout.time_unit == "datetime" or pd.api.types.is_datetime64_any_dtype(raw):
            parsed = raw if pd.api.types.is_datetime64_any_dtype(raw) else pd.to_datetime(
                raw, format="ISO8601", utc=True, errors="coerce")
            bad = parsed.isna().to_numpy()
            if bad.any():
                raise self._fail(raw, bad, start, name, "unparsable timestamp")
            if parsed.dt.tz is not None:
                parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
            ns = parsed.to_numpy().astype("datetime64[ns]").view(np.int64)
            if self.time_ref is None:
                self.time_ref = int(ns[0])
            return (ns - self.time_ref).astype(np.float64) / 1e9
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64,
                                                                na_value=np.nan)
        bad = ~np.isfinite(values)
        if bad.any():
            raise self._fail(raw, bad, start, name, "not a number")
        seconds = values * UNIT_S[self.layout.time_unit]
        if self.time_ref is None:
            self.time_ref = float(seconds[0])
        return seconds - self.time_ref

    def _tokens(self, raw: pd.Series, name: str, start: int) -> np.ndarray:
        import pandas as pd  # only a trace replay needs pandas

        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64,
                                                                na_value=np.nan)
        checks = ((~np.isfinite(values), "not a number"),
                  (values != np.floor(values), "not a whole number"),
                  (values < 0, "negative token count"),
                  (values > MAX_TOKENS, f"more than {MAX_TOKENS} tokens"))
        for bad, what in checks:
            if bad.any():
                raise self._fail(raw, bad, start, name, what)
        return values.astype(np.int64)

    def _codes(self, raw: pd.Series, kind: str, start: int, required: str | None) -> np.ndarray:
        import pandas as pd  # only a trace replay needs pandas

        codes, uniques = pd.factorize(raw)
        if required and (codes < 0).any():
            raise self._fail(raw, codes < 0, start, required, "missing value")
        table = self.codes[kind]
        lut = np.array([table.setdefault(u, len(table)) for u in uniques.tolist()] + [-1],
                       dtype=np.int64)
        return lut[codes]  # code -1 (missing) picks the trailing -1

    def _hashes(self, column: Any, start: int) -> tuple[np.ndarray, np.ndarray]:
        import pyarrow.compute as pc

        name = self.layout.hash_ids
        if column.null_count:
            nulls = column.is_null().to_numpy(zero_copy_only=False)
            i = int(np.flatnonzero(nulls)[0])
            raise located_error(self.path, self.layout.container, start + i, name,
                                "missing hash-id list")
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
        flat = column.flatten()
        if flat.null_count:
            at = int(np.flatnonzero(flat.is_null().to_numpy(zero_copy_only=False))[0])
            i = int(np.searchsorted(np.cumsum(lengths), at, side="right"))
            raise located_error(self.path, self.layout.container, start + i, name,
                                "null inside the hash-id list")
        return lengths, flat.to_numpy(zero_copy_only=False).astype(np.int64)
