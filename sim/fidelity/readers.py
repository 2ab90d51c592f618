"""Read measured serving runs into ``MeasuredRun``s; the layout is recognised from the path.

Layouts:

* ``tracev2``: BLIS TraceV2 (``trace.csv`` + ``trace.yaml``, optional ``summary.json`` and
  ``sim.json``), engine settings from a ``server_config.json`` in the run's folder or above.
* ``llmservingsim``: LLMServingSim's bench (``requests.jsonl`` + ``meta.json``).
* ``vllm-bench``: ``vllm bench serve --save-result --save-detailed`` JSON (``sim.fidelity.
  readers_other``).
* ``table``: any CSV or Parquet file with a ``--columns`` mapping (``sim.fidelity.
  readers_other``).

A folder holding none of these is searched below for runs (so the root of a data set reads as
all its runs, in path order).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sim.errors import TraceError
from sim.fidelity._parse import count, csv_rows, number, read_json, read_text
from sim.fidelity.run import (
    EngineConfig,
    MeasuredRun,
    derived_itl,
    measured_rate,
    sort_by_arrival,
)

LAYOUTS = ("tracev2", "llmservingsim", "vllm-bench", "table")
TRACEV2_COLUMNS = ("send_time_us", "server_input_tokens", "output_tokens",
                   "first_chunk_time_us", "last_chunk_time_us", "status")


def detect(path: Path, columns: str | None = None) -> str | None:
    """The layout of one run at ``path`` (a folder or a file), or None if it is not one."""
    if path.is_dir():
        if (path / "trace.csv").is_file():
            return "tracev2"
        if (path / "requests.jsonl").is_file() and (path / "meta.json").is_file():
            return "llmservingsim"
        if (path / "vllm" / "requests.jsonl").is_file():
            return "llmservingsim"
        return None
    if not path.is_file():
        return None
    if columns:
        return "table"
    if path.name == "requests.jsonl":
        return "llmservingsim"
    if path.suffix == ".json":
        head = read_text(path)[:1_000_000]
        return "vllm-bench" if '"ttfts"' in head and '"input_lens"' in head else None
    if path.suffix == ".csv":
        first = read_text(path).split("\n", 1)[0]
        return "tracev2" if all(c in first for c in TRACEV2_COLUMNS[:3]) else None
    return None


def discover(path: Path, columns: str | None = None) -> list[tuple[str, Path]]:
    """``(layout, path)`` of the run at ``path``, or of every run below a folder.

    Raises:
        TraceError: the path is missing, or nothing at or below it is a known layout.
    """
    if not path.exists():
        raise TraceError("not found; expected a run folder or file", source=str(path))
    layout = detect(path, columns)
    if layout is not None:
        return [(layout, path)]
    found: list[tuple[str, Path]] = []
    if path.is_dir():
        for sub in sorted(p for p in path.rglob("*") if p.is_dir()):
            sub_layout = detect(sub)
            if sub_layout is not None and not (sub.name == "vllm" and detect(sub.parent)):
                found.append((sub_layout, sub))
    if not found:
        raise TraceError(f"unknown layout; expected one of {', '.join(LAYOUTS)} (a folder with "
                         f"trace.csv, or requests.jsonl + meta.json; a vllm bench serve JSON; "
                         f"a CSV/Parquet file with --columns)", source=str(path))
    return found


def read_run(layout: str, path: Path, *, columns: str | None = None,
             engine: Mapping[str, Any] | None = None) -> MeasuredRun:
    """Read one run; ``engine`` overrides (or supplies) the engine settings it records."""
    if layout == "tracev2":
        run = read_tracev2(path)
    elif layout == "llmservingsim":
        run = read_llmservingsim(path)
    elif layout == "vllm-bench":
        from sim.fidelity.readers_other import read_vllm_bench
        run = read_vllm_bench(path)
    elif layout == "table":
        from sim.fidelity.readers_other import read_table
        run = read_table(path, columns or "")
    else:
        raise TraceError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}",
                         source=str(path))
    if engine:
        run.engine = apply_engine(run.engine, engine, str(path))
    if run.n_ok == 0:
        raise TraceError(f"no completed requests among {len(run)} rows; nothing to score",
                         source=run.source)
    return run


def apply_engine(config: EngineConfig, changes: Mapping[str, Any], source: str) -> EngineConfig:
    """``config`` with fields replaced (values converted to the field's type)."""
    from dataclasses import fields, replace

    types = {f.name: f.type for f in fields(EngineConfig)}
    out: dict[str, Any] = {}
    for key, value in changes.items():
        if key not in types:
            raise TraceError(f"unknown engine setting {key!r}; expected one of "
                             f"{', '.join(types)}", source=source, column="--engine")
        kind = str(types[key])
        try:
            if "bool" in kind:
                out[key] = value if isinstance(value, bool) else str(value).lower() in (
                    "1", "true", "yes", "on")
            elif "int" in kind:
                out[key] = int(value)
            else:
                out[key] = str(value)
        except ValueError:
            raise TraceError(f"expected a whole number, got {value!r}", source=source,
                             column=f"--engine {key}") from None
    return replace(config, **out)


def run_name(path: Path) -> str:
    """A short run name: the path below a ``results``/``examples`` folder, else the path."""
    parts = path.resolve().parts
    for anchor in ("results", "examples"):
        if anchor in parts:
            rest = parts[len(parts) - parts[::-1].index(anchor):]
            rest = tuple(p for p in rest if p != "vllm")
            if rest:
                return "/".join(rest)
    return path.name


# ------------------------------------------------------------------------------ TraceV2


#: a run whose sends lag the intended schedule by more than this is a closed loop
CLOSED_LOOP_LAG_S = 1.0


def read_tracev2(path: Path) -> MeasuredRun:
    """A BLIS TraceV2 run folder (or its ``trace.csv``)."""
    folder = path if path.is_dir() else path.parent
    csv_path = folder / "trace.csv" if path.is_dir() else path
    send, prompt, output, ttft, e2e, ok, lag, group = [], [], [], [], [], [], [], []
    notes: list[str] = []
    failed: dict[str, int] = {}
    for line, row in csv_rows(csv_path, TRACEV2_COLUMNS,
                              ("arrival_time_us", "tenant_id", "error_message")):
        t0 = number(row["send_time_us"], csv_path, line, "send_time_us")
        status = row["status"] or "?"
        good = status == "ok"
        prompt.append(count(row["server_input_tokens"], csv_path, line, "server_input_tokens"))
        output.append(count(row["output_tokens"], csv_path, line, "output_tokens"))
        first, last = math.nan, math.nan
        if good:
            first = number(row["first_chunk_time_us"], csv_path, line, "first_chunk_time_us")
            last = number(row["last_chunk_time_us"], csv_path, line, "last_chunk_time_us")
            if not t0 <= first <= last:
                raise TraceError("expected send_time_us <= first_chunk_time_us <= "
                                 "last_chunk_time_us", source=str(csv_path), line=line,
                                 column="first_chunk_time_us")
            good = prompt[-1] >= 1 and output[-1] >= 1
            if not good:
                status = "zero tokens"
        if not good:
            failed[status] = failed.get(status, 0) + 1
        send.append(t0)
        ttft.append((first - t0) * 1e-6)
        e2e.append((last - t0) * 1e-6)
        ok.append(good)
        if row.get("arrival_time_us"):
            lag.append(t0)
            lag.append(number(row["arrival_time_us"], csv_path, line, "arrival_time_us"))
        else:
            lag.extend((t0, math.nan))
        group.append(row.get("tenant_id", "").replace("_", ""))
    if not send:
        raise TraceError("no requests; expected one row per request", source=str(csv_path),
                         line=2)
    arrays = _columns(send, prompt, output, ttft, e2e, ok, scale=1e-6)
    if failed:
        notes.append("excluded, not ok: " + ", ".join(f"{n} {s}" for s, n in failed.items()))
    extra: dict[str, Any] = {}
    pairs = np.array(lag).reshape(-1, 2)
    if np.isfinite(pairs[:, 1]).all():
        rel = (pairs[:, 0] - pairs[:, 0].min()) - (pairs[:, 1] - pairs[:, 1].min())
        extra["send_lag_max_s"] = float(rel.max() * 1e-6)
        # the intended schedule in the order sort_by_arrival gives the rows (by send time)
        order = np.argsort(pairs[:, 0], kind="stable")
        extra["intended_arrival_s"] = (pairs[order, 1] - pairs[:, 1].min()) * 1e-6
        if rel.max() * 1e-6 > CLOSED_LOOP_LAG_S:
            notes.append(f"sends lag the intended schedule by up to {rel.max() * 1e-6:.0f} s "
                         f"(client capped in-flight requests: closed loop; replayed closed "
                         f"loop from the intended schedule)")
    notes.append("ITL = (E2E - TTFT) / (output - 1) per request (per-token times not read)")
    engine = _tracev2_engine(folder, notes)
    peer = folder / "sim.json"
    if peer.is_file():
        extra["peer"] = read_json(peer)
    run = MeasuredRun(run_name(folder), str(csv_path), "tracev2", engine=engine, notes=notes,
                      rate_rps=measured_rate(arrays["arrival_s"]), group=np.array(group),
                      extra=extra,
                      itl_s=derived_itl(arrays["ttft_s"], arrays["e2e_s"],
                                        arrays["output_tokens"]), **arrays)
    return sort_by_arrival(run)


def _tracev2_engine(folder: Path, notes: list[str]) -> EngineConfig:
    """Engine settings from the nearest ``server_config.json`` and ``trace.yaml``."""
    import yaml

    cfg: dict[str, Any] = {}
    for parent in (folder, *folder.parents):
        if (parent / "server_config.json").is_file():
            cfg = read_json(parent / "server_config.json")
            break
    meta: dict[str, Any] = {}
    if (folder / "trace.yaml").is_file():
        try:
            meta = yaml.safe_load(read_text(folder / "trace.yaml")) or {}
        except yaml.YAMLError as exc:
            raise TraceError(f"invalid YAML ({exc})", source=str(folder / "trace.yaml")) from None
    server = meta.get("server") or {}
    if not cfg:
        notes.append("no server_config.json found: engine settings unknown (use --engine)")
    if cfg and "max_num_seqs" not in cfg:
        notes.append("max_num_seqs not recorded: vLLM's default 256 assumed")
    engine = EngineConfig(
        engine=str(server.get("type", "vllm")), version=str(cfg.get("vllm_version", "")),
        model=str(cfg.get("model", server.get("model", ""))), gpu=str(cfg.get("gpu", "")),
        tp=int(cfg.get("tensor_parallel_size", 1)),
        max_num_seqs=int(cfg.get("max_num_seqs", 256)) if cfg else None,
        max_num_batched_tokens=cfg.get("max_num_batched_tokens"),
        chunked_prefill=cfg.get("enable_chunked_prefill"),
        prefix_caching=cfg.get("enable_prefix_caching"), block_size=cfg.get("block_size"),
        num_gpu_blocks=cfg.get("num_gpu_blocks"),
        max_model_len=cfg.get("max_model_len", cfg.get("max_seq_len")))
    return engine


def _columns(send: list[float], prompt: list[int], output: list[int], ttft: list[float],
             e2e: list[float], ok: list[bool], scale: float) -> dict[str, np.ndarray]:
    t = np.array(send, dtype=np.float64)
    return {"arrival_s": (t - t.min()) * scale, "prompt_tokens": np.array(prompt, np.int64),
            "output_tokens": np.array(output, np.int64), "ttft_s": np.array(ttft),
            "e2e_s": np.array(e2e), "ok": np.array(ok, dtype=bool)}


# ----------------------------------------------------------------------- LLMServingSim


def read_llmservingsim(path: Path) -> MeasuredRun:
    """LLMServingSim's ``bench`` output: ``requests.jsonl`` + ``meta.json``.

    ``arrival_time`` is wall-clock (epoch s); the engine's stamps are on its own monotonic
    clock. The two are aligned by the smallest ``queued_ts - arrival_time`` over the run (the
    request that reached the engine fastest is taken to have done so instantly), so TTFT and
    E2E count from the send, as a client sees them; they are at most that one hand-off longer
    than the project's own figures, which count from ``queued_ts``.
    """
    folder = path.parent if path.is_file() else path
    if not (folder / "requests.jsonl").is_file() and (folder / "vllm").is_dir():
        folder = folder / "vllm"
    jsonl = folder / "requests.jsonl"
    send, prompt, output, queued, first, last, ok = [], [], [], [], [], [], []
    for line, text in enumerate(read_text(jsonl).splitlines(), start=1):
        if not text.strip():
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TraceError(f"invalid JSON at column {exc.colno}: {exc.msg}",
                             source=str(jsonl), line=line) from None
        if not isinstance(rec, dict):
            raise TraceError("expected a JSON object per line", source=str(jsonl), line=line)
        for key in ("input_toks", "output_toks", "arrival_time", "queued_ts"):
            if key not in rec:
                raise TraceError("missing field", source=str(jsonl), line=line, column=key)
        send.append(number(rec["arrival_time"], jsonl, line, "arrival_time"))
        queued.append(number(rec["queued_ts"], jsonl, line, "queued_ts"))
        prompt.append(count(rec["input_toks"], jsonl, line, "input_toks"))
        output.append(count(rec["output_toks"], jsonl, line, "output_toks"))
        done = rec.get("first_token_ts") is not None and rec.get("last_token_ts") is not None
        first.append(number(rec["first_token_ts"], jsonl, line, "first_token_ts")
                     if done else math.nan)
        last.append(number(rec["last_token_ts"], jsonl, line, "last_token_ts")
                    if done else math.nan)
        ok.append(done and prompt[-1] >= 1 and output[-1] >= 1)
    if not send:
        raise TraceError("no requests; expected one JSON object per line", source=str(jsonl),
                         line=1)
    a, q = np.array(send), np.array(queued)
    offset = float(np.min(q - a))
    engine_send = a + offset  # the send, on the engine's clock
    ttft = np.array(first) - engine_send
    e2e = np.array(last) - engine_send
    arrays: dict[str, Any] = _columns(send, prompt, output, list(ttft), list(e2e), ok, scale=1.0)
    notes = [f"clocks aligned by min(queued_ts - arrival_time); the hand-off to the engine "
             f"then adds {np.median(q - engine_send) * 1e3:.1f} ms median "
             f"(max {np.max(q - engine_send) * 1e3:.0f} ms) to TTFT",
             "ITL = (E2E - TTFT) / (output - 1) per request"]
    if (~arrays["ok"]).any():
        notes.append(f"excluded, no token stamps: {int((~arrays['ok']).sum())}")
    meta = read_json(folder / "meta.json") if (folder / "meta.json").is_file() else {}
    kw, kv = meta.get("engine_kwargs", {}), meta.get("kv_cache", {})
    sched = meta.get("resolved_config", {}).get("scheduler_config", {})
    engine = EngineConfig(
        engine="vllm", version=str(meta.get("vllm_version", "")),
        model=str(meta.get("model", "")),
        gpu=str(meta.get("hardware", {}).get("device_name", "")) or _lss_gpu(folder, notes),
        tp=int(kw.get("tensor_parallel_size", 1)), dp=int(kw.get("data_parallel_size", 1)),
        max_num_seqs=kw.get("max_num_seqs"),
        max_num_batched_tokens=kw.get("max_num_batched_tokens"),
        chunked_prefill=sched.get("enable_chunked_prefill"),
        prefix_caching=kv.get("enable_prefix_caching"), block_size=kv.get("block_size"),
        num_gpu_blocks=kv.get("num_gpu_blocks"), max_model_len=kw.get("max_model_len"))
    if engine.dp > 1:
        notes.append(f"data_parallel_size {engine.dp}: the replay models one engine")
    run = MeasuredRun(run_name(folder), str(jsonl), "llmservingsim", engine=engine, notes=notes,
                      rate_rps=measured_rate(arrays["arrival_s"]),
                      itl_s=derived_itl(arrays["ttft_s"], arrays["e2e_s"],
                                        arrays["output_tokens"]), **arrays)
    return sort_by_arrival(run)


def _lss_gpu(folder: Path, notes: list[str]) -> str:
    """The GPU named in the simulator-side ``config.json`` of an LLMServingSim example (the
    run's own ``meta.json`` lacks ``hardware`` in some runs), else ""."""
    for parent in (folder, folder.parent):
        cfg = parent / "config.json"
        if cfg.is_file():
            try:
                data = read_json(cfg)
                gpu = str(data["nodes"][0]["instances"][0]["hardware"])
            except (TraceError, KeyError, IndexError, TypeError):
                continue
            notes.append(f"GPU not in meta.json; taken from {cfg.name}: {gpu}")
            return gpu
    return ""
