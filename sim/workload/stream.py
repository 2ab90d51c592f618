"""Chunked (streaming) generation of synthetic workloads, for fleet-scale runs (issue 18).

``build_workload`` draws every request of a run at once: about 100 bytes per request in numpy
columns (1 GB for 10M requests) before the simulation makes its own per-request state.
``iter_chunks`` draws the same kind of workload one time window at a time: chunk ``k`` holds
the requests arriving in ``[k chunk_s, (k + 1) chunk_s)``, as a ``Workload`` of its own, with
``first_id``, the global id of its first request (ids are consecutive across chunks, in arrival
order). Only one chunk need exist at a time.

The draws of chunk ``k`` come from streams of their own, ``(seed, "workload", <part>, "chunk",
k)``, so a chunk is the same whichever chunks were drawn before it (a run can resume, or shard
by window). **The request stream is therefore not the one ``build_workload`` draws for the same
seed** (that one draws each component over the whole run at once): it is another draw of the
same distributions, which the tests check. A chunked run is reproducible for a given
``(seed, chunk_s)``; changing ``chunk_s`` changes the draws, never their distribution.

Supported: single-turn synthetic workloads (any prompt and output lengths, shared prefixes,
``models`` and ``sheddable_fraction``) with ``poisson`` or ``piecewise`` arrivals, whose counts
in disjoint windows are independent Poisson variables, so drawing window by window is exact.
Sessions (a conversation's turns cross windows), ``mmpp2`` and ``gamma`` arrivals (their state
carries across windows) and traces (``sim.workload.trace_readers`` already reads in chunks)
are refused with a message.

``ArrivalSource`` is the interface a simulation takes chunks through (see ``ChunkSource``):
the router asks for the next chunk when its next arrival lies beyond the requests it holds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from sim.rng import stream
from sim.workload.arrivals import PiecewiseArrivals, PoissonArrivals
from sim.workload.base import Workload
from sim.workload.prefixes import prefix_segments
from sim.workload.replay import NodeLimits, fit_context
from sim.workload.spec import WorkloadSpec, _Parts, _resolve

#: the default window of one chunk, seconds (an hour of a diurnal day)
CHUNK_S = 3600.0


@dataclass(frozen=True)
class WorkloadChunk:
    """The requests arriving in ``[start_s, end_s)``; global ids ``first_id`` onwards."""

    index: int
    first_id: int
    start_s: float
    end_s: float
    workload: Workload

    def __len__(self) -> int:
        return len(self.workload)


class ArrivalSource(Protocol):
    """Chunks of requests in arrival order, pulled by the simulation as it needs them."""

    def next_chunk(self) -> WorkloadChunk | None:
        """The next chunk, or None when the arrivals are exhausted."""


class ChunkSource:
    """An ``ArrivalSource`` over ``iter_chunks`` (skips empty windows); counts what it gave."""

    def __init__(self, chunks: Iterator[WorkloadChunk]):
        self._chunks = chunks
        self.requests = 0
        self.chunks = 0

    def next_chunk(self) -> WorkloadChunk | None:
        """The next non-empty chunk, or None at the end."""
        for chunk in self._chunks:
            if len(chunk):
                self.requests += len(chunk)
                self.chunks += 1
                return chunk
        return None


def check_streamable(spec: WorkloadSpec) -> None:
    """Raise ``ValueError`` saying why ``spec`` cannot be drawn in chunks (if it cannot)."""
    if spec.trace is not None:
        raise ValueError("a trace is read in chunks already (sim.workload.trace_readers); "
                         "chunked generation is for synthetic workloads")
    if spec.sessions is not None:
        raise ValueError("sessions cannot be drawn in time windows (a session's turns cross "
                         "them); draw the workload whole")
    assert spec.arrivals is not None
    if spec.arrivals.name not in ("poisson", "piecewise"):
        raise ValueError(f"arrivals '{spec.arrivals.name}' carry state across windows; "
                         f"chunked generation supports poisson and piecewise")


def iter_chunks(spec: WorkloadSpec, duration_s: float, seed: int, *,
                chunk_s: float = CHUNK_S,
                limits: NodeLimits | None = None) -> Iterator[WorkloadChunk]:
    """Draw the requests of ``[0, duration_s)`` window by window (see the module docstring).

    Each chunk is a validated ``Workload``; its ``accounting`` counts that chunk's capped
    outputs and over-context requests (``accounting_total`` adds them up).

    Raises:
        ValueError: the workload cannot be drawn in chunks (``check_streamable``), or
            ``duration_s`` or ``chunk_s`` is not a positive finite number.
    """
    check_streamable(spec)
    if not (math.isfinite(duration_s) and duration_s >= 0):
        raise ValueError(f"need a finite duration_s >= 0, got {duration_s}")
    if not (math.isfinite(chunk_s) and chunk_s > 0):
        raise ValueError(f"need a finite chunk_s > 0, got {chunk_s}")
    parts = _resolve(spec, "workload")
    prefix_sizes = _prefix_sizes(parts, seed)
    first_id = 0
    for k in range(max(1, math.ceil(duration_s / chunk_s))):
        t0, t1 = k * chunk_s, min((k + 1) * chunk_s, duration_s)
        arrival_s = window_arrivals(parts, _rng(seed, "arrivals", k), t0, t1)
        w = _chunk(spec, parts, prefix_sizes, arrival_s, seed, k)
        w, context = fit_context(w, "reject", limits, [])
        w = dataclasses.replace(w, accounting={**w.accounting, **context})
        w.validate()
        yield WorkloadChunk(k, first_id, t0, t1, w)
        first_id += len(w)


def accounting_total(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``input`` counts of a chunked run: integer counts added up over the chunks."""
    total: dict[str, Any] = {"kind": "synthetic", "chunked": True}
    for acc in chunks:
        for key, value in acc.items():
            if isinstance(value, int) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
            else:
                total.setdefault(key, value)
    return total


def collect(chunks: Iterator[WorkloadChunk]) -> Workload:
    """Concatenate chunks into one ``Workload`` (for tests and for runs small enough to hold
    whole); segment pointers are offset, ``accounting`` summed."""
    parts = list(chunks)
    if not parts:
        raise ValueError("no chunks")
    ws = [c.workload for c in parts]
    seg_base = np.cumsum([0] + [int(w.seg_ptr[-1]) for w in ws[:-1]])
    seg_ptr = np.concatenate([ws[0].seg_ptr[:1]] + [w.seg_ptr[1:] + base
                                                    for w, base in zip(ws, seg_base,
                                                                       strict=True)])
    cols = {name: np.concatenate([getattr(w, name) for w in ws])
            for name in ("arrival_s", "prompt_tokens", "output_tokens", "max_output_tokens",
                         "session_id", "prefix_group", "seg_key", "seg_len", "output_key")}
    extra = {key: np.concatenate([w.extra[key] for w in ws]) for key in ws[0].extra}
    out = Workload(**cols, seg_ptr=seg_ptr, expected_rate_rps=ws[0].expected_rate_rps,
                   source=ws[0].source, extra=extra,
                   accounting=accounting_total([w.accounting for w in ws]))
    out.validate()
    return out


def window_arrivals(parts: _Parts, rng: np.random.Generator, t0: float,
                    t1: float) -> np.ndarray:
    """Sorted arrival times in ``[t0, t1)`` of a Poisson or piecewise-Poisson process."""
    process = parts.arrivals
    if t1 <= t0:
        return np.zeros(0)
    if isinstance(process, PoissonArrivals):
        n = int(rng.poisson(process.params.rate_rps * (t1 - t0)))
        return np.sort(t0 + rng.random(n) * (t1 - t0))
    assert isinstance(process, PiecewiseArrivals)
    times = []
    # the process's own layout (same package)
    period = process._period_s
    starts = process._offsets_s
    lengths = process._durations_s
    rates = process._rates
    for cycle in range(int(t0 // period), math.ceil(t1 / period)):
        base = cycle * period
        lo = np.maximum(base + starts, t0)
        hi = np.minimum(base + starts + lengths, t1)
        span = np.maximum(hi - lo, 0.0)
        counts = rng.poisson(rates * span)
        for i in np.flatnonzero(counts):
            times.append(lo[i] + rng.random(int(counts[i])) * span[i])
    out = np.sort(np.concatenate(times)) if times else np.zeros(0)
    return out[(out >= t0) & (out < t1)]


def _rng(seed: int, part: str, k: int) -> np.random.Generator:
    return stream(seed, "workload", part, "chunk", k)


def _prefix_sizes(parts: _Parts, seed: int) -> np.ndarray | None:
    """Each prefix group's length, drawn once for the whole run (as ``build_workload``)."""
    model = parts.prefixes
    if model is None:
        return None
    draw = getattr(model, "group_tokens", None)
    if draw is None:
        return np.full(model.key_count, model.params.prefix_tokens,  # type: ignore[attr-defined]
                       dtype=np.int64)
    sizes: np.ndarray = draw(stream(seed, "workload", "prefix_lengths"))
    return sizes


def _chunk(spec: WorkloadSpec, parts: _Parts, prefix_sizes: np.ndarray | None,
           arrival_s: np.ndarray, seed: int, k: int) -> Workload:
    """The requests of one window: lengths, prefixes, outputs, and the request mix."""
    n = arrival_s.shape[0]
    own = parts.prompt.sample(_rng(seed, "prompt_tokens", k), n)
    if parts.prefixes is None or prefix_sizes is None:
        group = np.full(n, -1, dtype=np.int64)
        prefix_tokens = np.zeros(n, dtype=np.int64)
    else:
        group = parts.prefixes.sample(_rng(seed, "prefixes", k), n)
        prefix_tokens = np.where(group >= 0, prefix_sizes[np.maximum(group, 0)], 0)
    rng_out = _rng(seed, "output_tokens", k)
    given = getattr(parts.output, "sample_given", None)
    out = given(rng_out, own + prefix_tokens) if given is not None \
        else parts.output.sample(rng_out, n)
    capped = int(np.count_nonzero(out > parts.max_output_tokens))
    out = np.minimum(out, parts.max_output_tokens)
    seg_ptr, seg_key, seg_len = prefix_segments(group, own, prefix_tokens[group >= 0])
    extra: dict[str, np.ndarray] = {}
    if spec.models:
        names = sorted(spec.models)
        weights = np.array([spec.models[m] for m in names], dtype=float)
        index = _rng(seed, "models", k).choice(len(names), size=n, p=weights / weights.sum())
        extra["model"] = np.array(names)[index]
    if spec.sheddable_fraction:
        extra["sheddable"] = np.asarray(
            _rng(seed, "sheddable", k).random(n) < spec.sheddable_fraction)
    rate = parts.arrivals.mean_rate_rps
    return Workload(
        arrival_s=arrival_s, prompt_tokens=own + prefix_tokens, output_tokens=out,
        max_output_tokens=np.full(n, parts.max_output_tokens, np.int64),
        session_id=np.full(n, -1, dtype=np.int64), prefix_group=group, seg_ptr=seg_ptr,
        seg_key=seg_key, seg_len=seg_len, output_key=np.full(n, -1, dtype=np.int64),
        expected_rate_rps=rate, source=f"synthetic chunked(seed={seed})", extra=extra,
        accounting={"capped": capped, "replayed": n})
