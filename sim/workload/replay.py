"""Replay a trace table as a ``Workload``: selection, ordering, time scaling, segments.

Steps, in order (``TraceSpec`` documents each option):

1. failed requests (BurstGPT: 0 output tokens) dropped, or kept with 1 output token;
2. models mapped (``model_map``; a ``null`` target drops the model's requests);
3. 0-token requests: an error, dropped or raised to 1 (``zero_tokens``);
4. stable sort by timestamp; unsorted rows are counted in a warning, or an error with
   ``strict``;
5. offsets from the first request; ``jitter_within_s`` spreads each request uniformly inside
   its bucket (seeded from ``(seed, "workload", "trace")``; ``auto``: the trace's timestamp
   grid, ``sim.workload.trace_stats.timestamp_grid_s``);
6. the window ``[start_offset_s, start_offset_s + duration_s)``, then ``max_requests``; offsets
   restart at the first request kept;
7. time scaling (``time_scale`` or ``target_rate_rps``);
   (``prompt_scale`` then shrinks prompts, hashed blocks included);
8. ``loop`` repeats the result (period: span + one mean gap) to fill the scenario's duration;
   each copy gets its own segment keys, sessions and groups;
9. requests at or after the scenario's ``duration_s`` are dropped;
10. ``output_cap`` sets each request's ``max_output_tokens`` (its own output, the trace's
    largest, or a number that cuts larger outputs);
11. with the nodes' context limits known (``node_limits``), a request whose prompt plus cap
    exceeds the context of the nodes that serve its model is trimmed (``over_context: trim``:
    the prompt's end is cut, at least 1 token left) or left for the nodes to reject.

Nothing is lost without a count: ``Workload.accounting`` (``summary.json``'s ``input`` block)
holds the trace's row count, the rows replayed, every drop by reason (all reasons always
present), the outputs capped, the prompts trimmed and the requests still beyond the context;
``trace_rows == replayed_rows + sum(dropped.values())`` always holds (``replayed`` counts the
loop's copies too). ``sim.workload.spec.expected_losses`` computes the block for a resolved
scenario, as ``simlb validate`` needs, and ``loss_lines`` words it.

Prompt segments: a trace with block hashes (Mooncake ``hash_ids``: block ``j`` covers tokens
``[512 j, 512 (j + 1))``) becomes one segment per block with a *chained* key, the dense id of
the pair (key of block ``j - 1``, hash id of block ``j``): requests with equal id prefixes get
equal keys, so the simulator's own KV blocks (16 tokens) are shared exactly where the trace's
blocks are. Prompt tokens beyond the hashed blocks form a private segment. Without hashes
every prompt is one private segment. ``prefix_group`` numbers the distinct first blocks that at
least two requests share.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sim.errors import ScenarioError
from sim.rng import stream
from sim.workload.base import MAX_SEGMENT_KEY, Workload
from sim.workload.prefixes import concat_ranges, take_requests
from sim.workload.trace_readers import TraceTable
from sim.workload.trace_stats import timestamp_grid_s

if TYPE_CHECKING:  # annotations only: traces imports this module to replay what it reads
    from sim.model.cluster import NodeSpec
    from sim.workload.traces import TraceSpec

logger = logging.getLogger(__name__)

#: Largest number of requests ``loop`` may produce.
MAX_LOOP_REQUESTS = 100_000_000
FIELD = "workload.trace"
#: Drop reasons of the ``input.dropped`` block, in the order the replay applies them.
DROP_REASONS = ("failed", "unmapped_model", "zero_tokens", "before_window", "after_window",
                "max_requests", "after_duration")
#: (model a node serves, "" for any; longest prompt + max_output_tokens it accepts), per node
NodeLimits = Sequence[tuple[str, int]]


def replay(table: TraceTable, spec: TraceSpec, duration_s: float | None, seed: int,
           limits: NodeLimits | None = None) -> Workload:
    """Turn ``table`` into a validated ``Workload`` (see the module docstring for the steps).

    Args:
        table: the trace, as read.
        spec: the replay options.
        duration_s: the scenario's duration (``None``: no bound, ``loop`` ignored).
        seed: root seed of the jitter draw (the scenario's seed plus the replication).
        limits: the nodes' context limits (``node_limits``); ``None``: unknown, so nothing is
            trimmed and ``over_context`` is not counted.
    """
    notes: list[str] = []
    dropped = dict.fromkeys(DROP_REASONS, 0)
    changed = {"failed_kept": 0, "raised_to_one": 0}
    rows = np.arange(len(table), dtype=np.int64)
    output = table.output_tokens.copy()
    rows, output = _failed(table, spec, rows, output, notes, dropped, changed)
    rows, models = _models(table, spec, rows, notes, dropped)
    rows, prompt, output = _zero_tokens(table, spec, rows, table.prompt_tokens[rows],
                                        output[rows], notes, dropped, changed)
    order, time_s = _sorted(table, spec, rows, notes)
    offsets = time_s - time_s[0]
    grid = timestamp_grid_s(offsets)
    width = grid if spec.jitter_within_s == "auto" else spec.jitter_within_s
    time_s = _jitter(width, offsets, seed)
    keep, time_s = _window(spec, time_s, dropped)
    pick = order[keep]
    scale = _scale_factor(spec, time_s)
    arrival_s = time_s / scale
    base = _base_workload(table, spec, rows[pick], arrival_s, prompt[pick], output[pick],
                          None if models is None else models[pick])
    if scale != 1.0:
        notes.append(f"time scaled by 1/{scale:.6g}")
    workload, copies = _fill(base, spec, duration_s, notes)
    replayed_rows = len(base) if duration_s is None else int(
        (base.arrival_s < duration_s).sum())
    dropped["after_duration"] = len(base) - replayed_rows
    workload, capped = _cap_outputs(workload, spec, notes)
    workload, context = fit_context(workload, spec.over_context, limits, notes)
    source = f"trace({spec.format}: {table.path}; {len(table)} records read"
    extra = "".join(f"; {n}" for n in notes)
    accounting: dict[str, Any] = {
        "kind": "trace", "format": spec.format, "path": spec.path,
        "trace_rows": len(table), "replayed_rows": replayed_rows, "replayed": len(workload),
        "loop_copies": copies, "dropped": dropped, "dropped_total": sum(dropped.values()),
        **changed, "output_cap": spec.cap, "capped": capped, **context,
        "timestamp_grid_s": grid, "jitter_s": width,
        "replications_identical": width is None}
    workload = _replace(workload, source=f"{source}, {len(workload)} replayed{extra})",
                        accounting=accounting)
    workload.validate()
    return workload


def _failed(table: TraceTable, spec: TraceSpec, rows: np.ndarray, output: np.ndarray,
            notes: list[str], dropped: dict[str, int],
            changed: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    if not table.layout.failed_when_no_output:
        return rows, output
    failed = output == 0
    count = int(failed.sum())
    if not count:
        return rows, output
    if spec.keep_failed:
        notes.append(f"{count} failed requests kept with 1 output token")
        changed["failed_kept"] = count
        return rows, np.where(failed, 1, output)
    notes.append(f"{count} failed requests dropped")
    dropped["failed"] = count
    return rows[~failed], output


def _models(table: TraceTable, spec: TraceSpec, rows: np.ndarray, notes: list[str],
            dropped: dict[str, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Return the rows kept and each one's (mapped) model name, or ``None`` without models."""
    if table.model_code is None:
        return rows, None
    names = list(table.model_names)
    if spec.model_map is not None:
        unknown = sorted(set(names) - set(spec.model_map))
        if unknown:
            raise ScenarioError(f"the trace has model(s) {unknown} with no entry; map each "
                                f"to a served model, or to null to drop its requests "
                                f"(trace models: {names})", field=f"{FIELD}.model_map")
        names = [spec.model_map[n] for n in names]  # type: ignore[misc]
    unmapped = np.array([n is None for n in names] + [False], dtype=bool)
    codes = table.model_code[rows]
    gone = unmapped[codes]
    if gone.any():
        notes.append(f"{int(gone.sum())} requests of unmapped models dropped")
        dropped["unmapped_model"] = int(gone.sum())
    lookup = np.array([n or "" for n in names] + [""], dtype=str)
    return rows[~gone], lookup[codes[~gone]]


def _zero_tokens(table: TraceTable, spec: TraceSpec, rows: np.ndarray, prompt: np.ndarray,
                 output: np.ndarray, notes: list[str], dropped: dict[str, int],
                 changed: dict[str, int]) -> tuple[np.ndarray, ...]:
    zero = (prompt == 0) | (output == 0)
    if not zero.any():
        return rows, prompt, output
    lay = table.layout
    if spec.zero_tokens == "error":
        i = int(np.flatnonzero(zero)[0])
        column = lay.prompt_tokens if prompt[i] == 0 else lay.output_tokens
        raise table.error(int(rows[i]), column, "0 tokens; set workload.trace.zero_tokens "
                          "to 'drop' or 'one' to replay such requests")
    count = int(zero.sum())
    if spec.zero_tokens == "drop":
        notes.append(f"{count} requests with 0 tokens dropped")
        dropped["zero_tokens"] = count
        return rows[~zero], prompt[~zero], output[~zero]
    notes.append(f"{count} requests with 0 tokens raised to 1")
    changed["raised_to_one"] = count
    return rows, np.maximum(prompt, 1), np.maximum(output, 1)


def _sorted(table: TraceTable, spec: TraceSpec, rows: np.ndarray,
            notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Return the stable time order of ``rows`` (as indices into it) and the sorted times."""
    if rows.shape[0] == 0:
        raise ScenarioError("no requests left to replay", field=FIELD)
    time_s = table.time_s[rows]
    back = np.flatnonzero(np.diff(time_s) < 0)
    if back.shape[0] == 0:
        return np.arange(rows.shape[0]), time_s
    if spec.strict:
        i = int(back[0]) + 1
        raise table.error(int(rows[i]), table.layout.arrival,
                          f"timestamp earlier than the previous request's ({back.shape[0]} "
                          "such rows; strict is set)")
    logger.warning("%s: %d requests arrive earlier than the request before them in the file; "
                   "sorted by timestamp", table.path, back.shape[0])
    notes.append(f"{back.shape[0]} out-of-order timestamps sorted")
    order = np.argsort(time_s, kind="stable")
    return order, time_s[order]


def _jitter(width: float | None, time_s: np.ndarray, seed: int) -> np.ndarray:
    """Spread each request uniformly inside its ``width``-second bucket (order kept)."""
    if width is None:
        return time_s
    u = stream(seed, "workload", "trace").random(time_s.shape[0])
    # Sorting the jittered times inside each bucket keeps the requests' order (and so every
    # other column aligned) while giving the same set of times as jittering each one.
    bucket = np.floor(time_s / width + 1e-9)  # a time on the grid opens its bucket
    jittered = (bucket + u) * width
    order = np.lexsort((jittered, bucket))
    return jittered[order]


def _window(spec: TraceSpec, time_s: np.ndarray,
            dropped: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Return the indices kept by the window and ``max_requests``, and their offsets."""
    start = spec.start_offset_s
    end = math.inf if spec.duration_s is None else start + spec.duration_s
    keep = np.flatnonzero((time_s >= start) & (time_s < end))
    dropped["before_window"] = int((time_s < start).sum())
    dropped["after_window"] = int((time_s >= end).sum())
    if spec.max_requests is not None:
        dropped["max_requests"] = max(keep.shape[0] - spec.max_requests, 0)
        keep = keep[: spec.max_requests]
    if keep.shape[0] == 0:
        raise ScenarioError(f"no request in the window [{start:g}, {end:g}) s; the trace spans "
                            f"{time_s[-1]:g} s", field=f"{FIELD}.start_offset_s")
    kept = time_s[keep]
    return keep, kept - kept[0]


def _scale_factor(spec: TraceSpec, time_s: np.ndarray) -> float:
    if spec.time_scale is not None:
        return spec.time_scale
    if spec.target_rate_rps is None:
        return 1.0
    n, span = time_s.shape[0], float(time_s[-1])
    if n < 2 or span <= 0:
        raise ScenarioError("target_rate_rps needs at least two requests at different times",
                            field=f"{FIELD}.target_rate_rps")
    return spec.target_rate_rps / ((n - 1) / span)


def _base_workload(table: TraceTable, spec: TraceSpec, records: np.ndarray,
                   arrival_s: np.ndarray, prompt: np.ndarray, output: np.ndarray,
                   models: np.ndarray | None) -> Workload:
    """One copy of the replayed requests (outputs uncapped)."""
    n = records.shape[0]
    scale = spec.prompt_scale or 1.0
    if table.hash_ptr is not None and table.hash_ids is not None:
        seg_ptr, seg_key, seg_len = hash_segments(table, records, prompt,
                                                  spec.hash_block_tokens, scale)
        prompt = np.add.reduceat(seg_len, seg_ptr[:-1]) if n else prompt
        group = _groups(seg_key, seg_ptr)
    else:
        prompt = _scale_tokens(prompt, scale)
        seg_ptr, seg_key, seg_len = (np.arange(n + 1, dtype=np.int64),
                                     np.full(n, -1, np.int64), prompt.copy())
        group = np.full(n, -1, np.int64)
    session = (np.full(n, -1, np.int64) if table.session_id is None
               else _dense(table.session_id[records]))
    extra = {} if models is None else {"model": models}
    return Workload(arrival_s=arrival_s, prompt_tokens=prompt, output_tokens=output,
                    max_output_tokens=output.copy(), session_id=session, prefix_group=group,
                    seg_ptr=seg_ptr, seg_key=seg_key, seg_len=seg_len,
                    output_key=np.full(n, -1, np.int64), expected_rate_rps=float("nan"),
                    extra=extra)


def chain_keys(ptr: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Give every block the dense id of its whole id prefix ``(ids[0], ..., ids[j])``.

    Args:
        ptr: int64 CSR pointers, ``n + 1`` entries; list ``i`` is ``ids[ptr[i]:ptr[i+1]]``.
        ids: int64 block ids.

    Returns:
        int64 keys aligned with ``ids``: two blocks get the same key exactly when their lists
        agree up to and including them. The key of block ``j`` is the dense id of the pair
        (key of block ``j - 1``, id ``j``), assigned depth by depth (so keys of different
        depths differ); the work is one sort per depth over the lists that reach it.
    """
    import pandas as pd

    total = ids.shape[0]
    if total and (ids.min() < 0 or ids.max() > 4 * total):
        dense = pd.factorize(ids)[0]  # sparse or negative ids: renumber them
    else:
        dense = ids  # ids already small and non-negative (Mooncake's are)
    span = int(dense.max(initial=0)) + 1
    if total and float(total + 1) * float(span) >= 2.0**62:
        raise ValueError(f"{total} hash blocks are too many to chain")
    counts = np.diff(ptr)
    by_depth = np.argsort(-counts, kind="stable")  # lists reaching depth j come first
    neg_counts = -counts[by_depth]  # ascending
    keys = np.empty(total, dtype=np.int64)
    prev = np.full(counts.shape[0], -1, dtype=np.int64)
    next_key = 0
    for j in range(int(counts.max(initial=0))):
        lists = by_depth[: int(np.searchsorted(neg_counts, -j, side="left"))]
        pos = ptr[lists] + j
        # a hash factorisation (linear time) of the (previous key, id) pairs
        codes, uniques = pd.factorize((prev[lists] + 1) * span + dense[pos])
        keys[pos] = next_key + codes
        prev[lists] = keys[pos]
        next_key += uniques.shape[0]
    if next_key > MAX_SEGMENT_KEY:
        raise ValueError(f"{next_key} distinct block prefixes exceed MAX_SEGMENT_KEY")
    return keys


def _scale_tokens(tokens: np.ndarray, scale: float, low: int = 1) -> np.ndarray:
    """``round(tokens * scale)``, at least ``low`` (identity for ``scale == 1``)."""
    if scale == 1.0:
        return tokens
    return np.maximum(np.rint(tokens * scale).astype(np.int64), low)


def hash_segments(table: TraceTable, records: np.ndarray, prompt: np.ndarray,
                  block_tokens: int, scale: float = 1.0,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lay out the prompts of ``records`` as chained hash blocks plus a private tail.

    Block ``j`` of a request holds ``block_tokens`` tokens, the last block the rest of the
    prompt; tokens beyond ``len(hash_ids) * block_tokens`` form a private segment (key -1).
    With ``scale < 1`` full blocks hold ``block_tokens * scale`` tokens (a whole number) and
    the last block and the tail are scaled and rounded (the last block keeps at least 1 token).

    Raises:
        TraceError: a request whose hash ids need more tokens than its prompt has.
    """
    assert table.hash_ptr is not None and table.hash_ids is not None
    if records.shape[0] == len(table) and bool(np.all(records == np.arange(len(table)))):
        ptr, ids = table.hash_ptr, table.hash_ids  # every record, in file order: no copy
    else:
        ptr, index = take_requests(table.hash_ptr, records)
        ids = table.hash_ids[index]
    blocks = np.diff(ptr)
    short = (blocks > 0) & (prompt <= (blocks - 1) * block_tokens)
    if short.any():
        i = int(np.flatnonzero(short)[0])
        raise table.error(int(records[i]), table.layout.hash_ids,
                          f"{blocks[i]} hash ids of {block_tokens} tokens need more than "
                          f"{(blocks[i] - 1) * block_tokens} prompt tokens, the prompt has "
                          f"{prompt[i]}")
    tail = np.maximum(prompt - blocks * block_tokens, 0)
    has = blocks > 0
    last = np.minimum(prompt[has] - (blocks[has] - 1) * block_tokens, block_tokens)
    if scale != 1.0:
        block_tokens = round(block_tokens * scale)
        last = np.minimum(_scale_tokens(last, scale), block_tokens)
        tail = _scale_tokens(tail, scale, low=0)
        tail[~has] = np.maximum(tail[~has], 1)
    seg_ptr = np.zeros(records.shape[0] + 1, dtype=np.int64)
    np.cumsum(blocks + (tail > 0), out=seg_ptr[1:])
    seg_key = np.full(int(seg_ptr[-1]), -1, dtype=np.int64)
    seg_len = np.full(int(seg_ptr[-1]), block_tokens, dtype=np.int64)
    seg_key[concat_ranges(seg_ptr[:-1], blocks)] = chain_keys(ptr, ids)
    seg_len[(seg_ptr[:-1] + blocks - 1)[has]] = last
    seg_len[(seg_ptr[:-1] + blocks)[tail > 0]] = tail[tail > 0]
    return seg_ptr, seg_key, seg_len


def _groups(seg_key: np.ndarray, seg_ptr: np.ndarray) -> np.ndarray:
    """Number the first-block keys that two or more requests share; -1 for the others."""
    first = seg_key[seg_ptr[:-1]] if seg_ptr.shape[0] > 1 else seg_key[:0]
    uniq, inverse, count = np.unique(first, return_inverse=True, return_counts=True)
    shared = (count >= 2) & (uniq >= 0)
    number = np.where(shared, np.cumsum(shared) - 1, -1)
    return number[inverse].astype(np.int64)


def _dense(values: np.ndarray) -> np.ndarray:
    """Renumber ids densely from 0 in order of first appearance, keeping -1."""
    out = np.full(values.shape[0], -1, dtype=np.int64)
    has = values >= 0
    uniq, first, inverse = np.unique(values[has], return_index=True, return_inverse=True)
    rank = np.empty(uniq.shape[0], dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(uniq.shape[0])
    out[has] = rank[inverse]
    return out


def _fill(base: Workload, spec: TraceSpec, duration_s: float | None,
          notes: list[str]) -> tuple[Workload, int]:
    """Repeat ``base`` when ``loop`` is set, then drop requests at or after ``duration_s``;
    return the result and the number of copies."""
    if duration_s is None:
        return base, 1
    n = len(base)
    copies = 1
    if spec.loop:
        span = float(base.arrival_s[-1])
        if n < 2 or span <= 0:
            raise ScenarioError("loop needs at least two requests at different times",
                                field=f"{FIELD}.loop")
        period = span * n / (n - 1)
        copies = max(math.ceil(duration_s / period), 1)
        if copies * n > MAX_LOOP_REQUESTS:
            raise ScenarioError(f"looping would make {copies * n} requests (limit "
                                f"{MAX_LOOP_REQUESTS})", field=f"{FIELD}.loop")
        if copies > 1:
            notes.append(f"looped {copies} times with period {period:.6g} s")
            base = _repeat(base, copies, period)
    keep = base.arrival_s < duration_s
    cut = int((~keep).sum())
    if cut:
        if not spec.loop:
            notes.append(f"{cut} requests at or after duration_s={duration_s:g} dropped")
        base = _take(base, np.flatnonzero(keep))
    return base, copies


def _repeat(w: Workload, copies: int, period_s: float) -> Workload:
    """``copies`` back-to-back copies of ``w``, each with fresh keys, sessions and groups."""
    n, k = len(w), np.arange(copies, dtype=np.int64)
    copy = np.repeat(k, n)

    def shifted(col: np.ndarray, per_copy: int) -> np.ndarray:
        tiled = np.tile(col, copies)
        return np.where(tiled >= 0, tiled + np.repeat(k, col.shape[0]) * per_copy, -1)

    key_span = int(w.seg_key.max(initial=-1)) + 1
    if key_span * copies > MAX_SEGMENT_KEY:
        raise ScenarioError("too many segment keys to loop this trace", field=f"{FIELD}.loop")
    seg_counts = np.tile(np.diff(w.seg_ptr), copies)
    seg_ptr = np.zeros(n * copies + 1, dtype=np.int64)
    np.cumsum(seg_counts, out=seg_ptr[1:])
    return _replace(
        w, arrival_s=np.tile(w.arrival_s, copies) + copy * period_s,
        prompt_tokens=np.tile(w.prompt_tokens, copies),
        output_tokens=np.tile(w.output_tokens, copies),
        max_output_tokens=np.tile(w.max_output_tokens, copies),
        session_id=shifted(w.session_id, int(w.session_id.max(initial=-1)) + 1),
        prefix_group=shifted(w.prefix_group, int(w.prefix_group.max(initial=-1)) + 1),
        seg_ptr=seg_ptr, seg_key=shifted(w.seg_key, key_span),
        seg_len=np.tile(w.seg_len, copies), output_key=np.tile(w.output_key, copies),
        extra={name: np.tile(col, copies) for name, col in w.extra.items()})


def _take(w: Workload, index: np.ndarray) -> Workload:
    """The requests ``index`` of ``w`` (in that order), segments included."""
    seg_ptr, seg_index = take_requests(w.seg_ptr, index)
    cols = ("arrival_s", "prompt_tokens", "output_tokens", "max_output_tokens", "session_id",
            "prefix_group", "output_key")
    return _replace(w, seg_ptr=seg_ptr, seg_key=w.seg_key[seg_index],
                    seg_len=w.seg_len[seg_index],
                    extra={name: col[index] for name, col in w.extra.items()},
                    **{c: getattr(w, c)[index] for c in cols})


def _cap_outputs(w: Workload, spec: TraceSpec, notes: list[str]) -> tuple[Workload, int]:
    """Set ``max_output_tokens`` from ``output_cap``, cut outputs above a fixed cap; return
    the workload and the number of outputs cut."""
    cap = spec.cap
    n = len(w)
    rate = (n - 1) / float(w.arrival_s[-1]) if n > 1 and w.arrival_s[-1] > 0 else float("nan")
    if cap == "own":
        return _replace(w, max_output_tokens=w.output_tokens.copy(), expected_rate_rps=rate), 0
    limit = int(w.output_tokens.max(initial=1)) if cap == "max" else int(cap)
    over = int((w.output_tokens > limit).sum())
    if over:
        logger.warning("%d of %d outputs cut to output_cap=%d", over, n, limit)
        notes.append(f"{over} outputs cut to output_cap={limit}")
    return _replace(w, output_tokens=np.minimum(w.output_tokens, limit),
                    max_output_tokens=np.full(n, limit, dtype=np.int64),
                    expected_rate_rps=rate), over


def node_limits(specs: Sequence[NodeSpec]) -> tuple[tuple[str, int], ...]:
    """Each node's model and context limit: the longest prompt + ``max_output_tokens`` it
    accepts (``max_model_len``, the KV cache, and the batch budget without chunked prefill;
    as ``sim.model.batcher.ContinuousBatcher`` computes it)."""
    out = []
    for spec in specs:
        limit = spec.kv_total_blocks * spec.block_size
        cfg = spec.batcher
        if cfg.max_model_len is not None:
            limit = min(limit, cfg.max_model_len)
        if not cfg.chunked_prefill:
            limit = min(limit, cfg.max_num_batched_tokens)
        out.append((spec.model, int(limit)))
    return tuple(out)


def request_limits(w: Workload, limits: NodeLimits) -> np.ndarray:
    """Per request, the smallest context of the nodes that serve its model (all nodes for a
    request naming no model, or one no node names), so it fits wherever it is routed."""
    everywhere = min(limit for _, limit in limits)
    out = np.full(len(w), everywhere, dtype=np.int64)
    models = w.extra.get("model")
    if models is None:
        return out
    for model in np.unique(models):
        served = [limit for name, limit in limits if name in ("", model)]
        out[models == model] = min(served) if served else everywhere
    return out


def fit_context(w: Workload, policy: str, limits: NodeLimits | None,
                notes: list[str]) -> tuple[Workload, dict[str, Any]]:
    """Trim (``policy == "trim"``) or count the requests whose prompt + cap exceeds their
    context; return the workload and the ``input`` keys that say what happened."""
    out: dict[str, Any] = {"over_context_policy": policy, "context_tokens": None,
                           "trimmed": 0, "trimmed_prompt_tokens": 0, "over_context": 0,
                           "over_context_prompt_tokens": 0}
    if not limits or len(w) == 0:
        return w, out
    context = request_limits(w, limits)
    out["context_tokens"] = int(context.min())
    over = w.prompt_tokens + w.max_output_tokens > context
    if policy == "trim" and over.any():
        target = np.where(over, np.maximum(context - w.max_output_tokens, 1), w.prompt_tokens)
        trimmed = target < w.prompt_tokens
        out["trimmed"] = int(trimmed.sum())
        out["trimmed_prompt_tokens"] = int((w.prompt_tokens - target).sum())
        w = trim_prompts(w, target)
        notes.append(f"{out['trimmed']} prompts trimmed to fit the context")
        over = w.prompt_tokens + w.max_output_tokens > context
    count = int(over.sum())
    out["over_context"] = count
    out["over_context_prompt_tokens"] = int(w.prompt_tokens[over].sum())
    if count:
        logger.warning("%d of %d requests exceed the context (prompt + max_output_tokens > "
                       "%d tokens); the nodes reject them", count, len(w), int(context.min()))
        notes.append(f"{count} requests beyond the context (rejected by the nodes)")
    return w, out


def trim_prompts(w: Workload, target: np.ndarray) -> Workload:
    """Cut each prompt to ``target[i] <= prompt_tokens[i]`` tokens (>= 1) from its end,
    segments included (a cut segment keeps its key: its first tokens are still shared)."""
    counts = np.diff(w.seg_ptr)
    request = np.repeat(np.arange(len(w), dtype=np.int64), counts)
    ends = np.cumsum(w.seg_len)
    starts = ends - w.seg_len
    starts -= np.repeat(starts[w.seg_ptr[:-1]], counts)  # offset inside the request
    keep = starts < target[request]
    seg_len = np.minimum(w.seg_len, target[request] - starts)[keep]
    seg_ptr = np.zeros(len(w) + 1, dtype=np.int64)
    np.cumsum(np.bincount(request[keep], minlength=len(w)), out=seg_ptr[1:])
    return _replace(w, prompt_tokens=target.astype(np.int64), seg_ptr=seg_ptr,
                    seg_key=w.seg_key[keep], seg_len=seg_len)


def loss_lines(accounting: dict[str, Any], replications: int = 1) -> list[str]:
    """One warning line per kind of loss in an ``input`` block (empty when nothing is lost)."""
    lines = []
    dropped = {k: v for k, v in accounting.get("dropped", {}).items() if v}
    if dropped:
        why = ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in dropped.items())
        lines.append(f"{sum(dropped.values()):,} of {accounting['trace_rows']:,} trace rows "
                     f"will not be replayed ({why})")
    if accounting.get("capped"):
        lines.append(f"{accounting['capped']:,} outputs will be cut to output_cap="
                     f"{accounting.get('output_cap')}")
    if accounting.get("trimmed"):
        lines.append(f"{accounting['trimmed']:,} prompts will be trimmed by "
                     f"{accounting['trimmed_prompt_tokens']:,} tokens in all to fit the "
                     f"{accounting['context_tokens']:,}-token context")
    if accounting.get("over_context"):
        hint = ("set workload.trace.over_context: trim, or prompt_scale"
                if accounting.get("kind") == "trace" else "shorten the prompts or the cap")
        lines.append(f"{accounting['over_context']:,} requests exceed the "
                     f"{accounting['context_tokens']:,}-token context (prompt + "
                     f"max_output_tokens) and will be rejected; {hint}")
    if replications > 1 and accounting.get("replications_identical"):
        lines.append(f"the {replications} replications replay identical requests; set "
                     "workload.trace.jitter_within_s (auto or a width) to vary them, or "
                     "read the replications as one run")
    return lines


def _replace(w: Workload, **changes: object) -> Workload:
    import dataclasses

    return dataclasses.replace(w, **changes)  # type: ignore[arg-type]
