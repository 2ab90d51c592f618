"""Readers for ``vllm bench serve`` detailed results and for plain CSV/Parquet tables."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from sim.errors import TraceError
from sim.fidelity._parse import UNITS, count, csv_rows, number, read_json
from sim.fidelity.run import EngineConfig, MeasuredRun, derived_itl, sort_by_arrival

#: fields of a ``--columns`` mapping: required ones first
TABLE_FIELDS = ("arrival", "prompt", "output", "ttft", "e2e", "itl", "status")
REQUIRED_FIELDS = ("arrival", "prompt", "output", "ttft", "e2e")
#: status values (lower case) that mean the request completed
OK_VALUES = {"ok", "success", "succeeded", "completed", "true", "1", "200"}


def read_vllm_bench(path: Path) -> MeasuredRun:
    """``vllm bench serve --save-result --save-detailed`` JSON.

    Per request it holds ``input_lens``, ``output_lens``, ``ttfts`` (s), ``itls`` (list of
    gaps, s) and ``errors``; newer vLLM also ``start_times`` (the client's send, perf_counter
    s). E2E = TTFT + sum(ITLs). Without ``start_times`` the sends are unknown (the file gives
    only the nominal ``request_rate`` and seed, and the client's Poisson draws cannot be
    reproduced outside vLLM's code), so the file is refused. Engine settings are not in the
    file: give them with ``--engine`` (and ``num_gpu_blocks`` from the server log).
    """
    data = read_json(path)
    if not isinstance(data, dict):
        raise TraceError("expected a JSON object (vllm bench serve --save-result)",
                         source=str(path))
    for key in ("input_lens", "output_lens", "ttfts", "itls"):
        if not isinstance(data.get(key), list):
            raise TraceError("missing per-request list; save the result with --save-detailed",
                             source=str(path), column=key, line=None)
    if not isinstance(data.get("start_times"), list):
        raise TraceError("no per-request send times (start_times, written by vLLM >= 0.10 "
                         "with --save-detailed); a teacher-forced replay needs them",
                         source=str(path), column="start_times")
    n = len(data["input_lens"])
    if n == 0:
        raise TraceError("no requests", source=str(path), column="input_lens")
    for key in ("output_lens", "ttfts", "itls", "start_times"):
        if len(data[key]) != n:
            raise TraceError(f"has {len(data[key])} entries, input_lens {n}",
                             source=str(path), column=key)
    errors = data.get("errors") or [""] * n
    send, prompt, output, ttft, e2e, itl, ok = [], [], [], [], [], [], []
    for i in range(n):
        send.append(number(data["start_times"][i], path, i, "start_times", label="index"))
        prompt.append(count(data["input_lens"][i], path, i, "input_lens", label="index"))
        output.append(count(data["output_lens"][i], path, i, "output_lens", label="index"))
        gaps = data["itls"][i] or []
        good = not (i < len(errors) and errors[i]) and prompt[-1] >= 1 and output[-1] >= 1
        first = number(data["ttfts"][i], path, i, "ttfts", label="index") if good else math.nan
        if good and first <= 0:
            good, first = False, math.nan
        total = float(np.sum(gaps)) if gaps else 0.0
        ttft.append(first)
        e2e.append(first + total if good else math.nan)
        itl.append(total / len(gaps) if good and gaps else math.nan)
        ok.append(good)
    t = np.array(send)
    arrays = {"arrival_s": t - t.min(), "prompt_tokens": np.array(prompt, np.int64),
              "output_tokens": np.array(output, np.int64), "ttft_s": np.array(ttft),
              "e2e_s": np.array(e2e), "itl_s": np.array(itl), "ok": np.array(ok)}
    notes = ["E2E = TTFT + sum of the streamed ITLs; ITL = their mean per request",
             "engine settings are not in the file: set them with --engine"]
    if (~arrays["ok"]).any():
        notes.append(f"excluded, failed: {int((~arrays['ok']).sum())}")
    engine = EngineConfig(engine=str(data.get("backend", "vllm")),
                          model=str(data.get("model_id", "")))
    rate = data.get("request_rate")
    rate_rps = float(rate) if isinstance(rate, (int, float)) and math.isfinite(rate) else (
        (n - 1) / float(arrays["arrival_s"].max()) if n > 1 and t.max() > t.min() else math.nan)
    run = MeasuredRun(path.stem, str(path), "vllm-bench", engine=engine, notes=notes,
                      rate_rps=rate_rps, **arrays)
    return sort_by_arrival(run)


def parse_columns(spec: str, source: str) -> dict[str, tuple[str, float]]:
    """``arrival=col:us,prompt=col,...`` -> field -> (column, seconds per unit)."""
    out: dict[str, tuple[str, float]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        field, eq, rest = item.partition("=")
        col, _, unit = rest.partition(":")
        if not eq or field not in TABLE_FIELDS or not col:
            raise TraceError(f"expected FIELD=COLUMN[:UNIT] with FIELD one of "
                             f"{', '.join(TABLE_FIELDS)}, got {item!r}", source=source,
                             column="--columns")
        if unit and unit not in UNITS:
            raise TraceError(f"unknown unit {unit!r}; expected one of {', '.join(UNITS)}",
                             source=source, column="--columns")
        out[field] = (col, UNITS[unit or "s"])
    missing = [f for f in REQUIRED_FIELDS if f not in out]
    if missing:
        raise TraceError(f"--columns lacks {', '.join(missing)}; expected at least "
                         f"{', '.join(REQUIRED_FIELDS)}", source=source, column="--columns")
    return out


def read_table(path: Path, spec: str) -> MeasuredRun:
    """A CSV or Parquet file, one row per request, read through a ``--columns`` mapping.

    Arrival may be absolute (epoch) or relative: the first arrival becomes 0. TTFT and E2E
    are durations from the arrival; ``itl`` (optional) is a per-request mean; ``status``
    (optional) marks completed rows with ok/success/completed/true/1/200.
    """
    mapping = parse_columns(spec, str(path))
    cols = {f: c for f, (c, _) in mapping.items()}
    rows: list[tuple[int, dict[str, Any]]]
    label = "line"
    if path.suffix == ".parquet":
        rows, label = _parquet_rows(path, list(cols.values())), "row"
    else:
        required = [cols[f] for f in REQUIRED_FIELDS]
        optional = [cols[f] for f in ("itl", "status") if f in cols]
        rows = list(csv_rows(path, required, optional))
    if not rows:
        raise TraceError("no requests; expected one row per request", source=str(path),
                         line=2 if label == "line" else 1, line_label=label)
    values: dict[str, list[float]] = {f: [] for f in cols}
    ok: list[bool] = []
    for line, row in rows:
        good = str(row.get(cols.get("status", ""), "ok")).strip().lower() in OK_VALUES
        for f, c in cols.items():
            if f == "status":
                continue
            text = row[c]
            if f in ("ttft", "e2e", "itl") and (not good or text in ("", None)):
                if f != "itl" and good:
                    raise TraceError("expected a number, got ''", source=str(path),
                                     line=line, column=c, line_label=label)
                values[f].append(math.nan)
            elif f in ("prompt", "output"):
                values[f].append(count(text, path, line, c, label=label))
            else:
                values[f].append(number(text, path, line, c, label=label) * mapping[f][1])
        ok.append(good and values["prompt"][-1] >= 1 and values["output"][-1] >= 1)
    t = np.array(values["arrival"])
    arrays = {"arrival_s": t - t.min(), "prompt_tokens": np.array(values["prompt"], np.int64),
              "output_tokens": np.array(values["output"], np.int64),
              "ttft_s": np.array(values["ttft"]), "e2e_s": np.array(values["e2e"]),
              "ok": np.array(ok)}
    if "itl" in values:
        arrays["itl_s"] = np.array(values["itl"])
        notes = []
    else:
        arrays["itl_s"] = derived_itl(arrays["ttft_s"], arrays["e2e_s"],
                                      arrays["output_tokens"])
        notes = ["ITL = (E2E - TTFT) / (output - 1) per request"]
    notes.append("engine settings are not in the file: set them with --engine")
    if (~arrays["ok"]).any():
        notes.append(f"excluded, not ok: {int((~arrays['ok']).sum())}")
    n = len(t)
    span = float(t.max() - t.min())
    run = MeasuredRun(path.stem, str(path), "table", engine=EngineConfig(), notes=notes,
                      rate_rps=(n - 1) / span if span > 0 else math.nan, **arrays)
    return sort_by_arrival(run)


def _parquet_rows(path: Path, columns: list[str]) -> list[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise TraceError(f"cannot read Parquet ({exc})", source=str(path)) from None
    for c in columns:
        if c not in table.column_names:
            raise TraceError(f"missing column; the file has {', '.join(table.column_names)}",
                             source=str(path), column=c)
    data = {c: table.column(c).to_pylist() for c in columns}
    return [(i + 1, {c: data[c][i] for c in columns}) for i in range(table.num_rows)]
