"""The columnar request stream every workload source produces.

A workload is a set of numpy columns, one row per request, sorted by arrival time. Nothing in the
simulation creates a Python object per request from it; the router and nodes index the columns.

Prompt content is described by *segments* so that prefix caching can tell which prompt blocks
of two requests are identical without storing tokens. Request ``i`` owns the segments
``seg_ptr[i]:seg_ptr[i+1]``; their lengths add up to ``prompt_tokens[i]``. A segment key is either

* ``-1``: content unique to this request, never shared (no hashing work is spent on it), or
* a non-negative *path-unique* id: every request that carries the key has exactly the same
  tokens before the segment and in it. Keys therefore imply their whole prefix, and the id of a
  KV block is ``(key of the segment holding its last token, offset of that token's end within
  the segment)``: a chained block hash without hashing (see ``sim.model.kv_cache``).

``output_key[i]`` is the path-unique key of the tokens request ``i`` generates, or ``-1`` when no
later request reuses them. Multi-turn sessions set it so that turn ``k+1``, whose prompt extends
turn ``k``'s prompt and answer, hits the blocks turn ``k`` left in the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Keys are below this bound so that ``key << OFFSET_BITS | offset`` stays a machine-size int.
MAX_SEGMENT_KEY = 1 << 38
#: Bits reserved for the token offset inside a segment (segments up to 16M tokens).
OFFSET_BITS = 24


@dataclass(frozen=True, eq=False)
class Workload:
    """Requests in arrival order, as columns.

    Attributes:
        arrival_s: arrival times in seconds, float64, non-decreasing, starting at or after 0.
        prompt_tokens: prompt length in tokens, int64, >= 1.
        output_tokens: true number of tokens the request generates, int64, >= 1. The router
            never sees it; it only sees ``max_output_tokens``.
        max_output_tokens: the request's output cap (the API's ``max_tokens``), int64,
            >= ``output_tokens``.
        session_id: session of the request, int64, ``-1`` when it belongs to none.
        prefix_group: shared-prefix group, int64, ``-1`` when none (for statistics and
            prefix-aware strategies; caching itself works from the segments).
        seg_ptr: int64, length ``n + 1``; request ``i`` owns segments ``seg_ptr[i]:seg_ptr[i+1]``.
        seg_key: int64 segment keys (see module docstring).
        seg_len: int64 segment lengths in tokens, >= 1.
        output_key: int64, path-unique key of the generated tokens, or ``-1``.
        expected_rate_rps: the analytic long-run request rate of the generating process.
        source: a short description of where the requests came from (generator names, trace).
        extra: further per-request columns (``model``, ``sheddable``).
        accounting: what became of the input (``summary.json``'s ``input`` block): for a
            trace its row count, the requests replayed, every drop by reason, and the
            outputs capped and prompts trimmed (``sim.workload.replay``); JSON types only.
    """

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    max_output_tokens: np.ndarray
    session_id: np.ndarray
    prefix_group: np.ndarray
    seg_ptr: np.ndarray
    seg_key: np.ndarray
    seg_len: np.ndarray
    output_key: np.ndarray
    expected_rate_rps: float
    source: str = ""
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    accounting: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.arrival_s.shape[0])

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first column that breaks the invariants above."""
        n = len(self)
        for name in ("prompt_tokens", "output_tokens", "max_output_tokens", "session_id",
                     "prefix_group", "output_key"):
            if getattr(self, name).shape != (n,):
                shape = getattr(self, name).shape
                raise ValueError(f"column {name} has shape {shape}, want ({n},)")
        if n and (not np.all(np.isfinite(self.arrival_s)) or self.arrival_s[0] < 0):
            raise ValueError("arrival_s must be finite and non-negative")
        if n > 1 and np.any(np.diff(self.arrival_s) < 0):
            raise ValueError("arrival_s must be sorted")
        if np.any(self.prompt_tokens < 1) or np.any(self.output_tokens < 1):
            raise ValueError("prompt_tokens and output_tokens must be >= 1")
        if np.any(self.max_output_tokens < self.output_tokens):
            raise ValueError("max_output_tokens must be >= output_tokens")
        if self.seg_ptr.shape != (n + 1,) or self.seg_ptr[0] != 0:
            raise ValueError("seg_ptr must have n + 1 entries starting at 0")
        if self.seg_ptr[-1] != self.seg_key.shape[0] or self.seg_key.shape != self.seg_len.shape:
            raise ValueError("seg_ptr, seg_key and seg_len disagree in length")
        if np.any(self.seg_len < 1):
            raise ValueError("seg_len must be >= 1")
        if np.any(self.seg_key >= MAX_SEGMENT_KEY) or np.any(self.seg_key < -1):
            raise ValueError(f"seg_key must be -1 or in [0, {MAX_SEGMENT_KEY})")
        per_request = np.add.reduceat(self.seg_len, self.seg_ptr[:-1]) if n else self.seg_len[:0]
        if n and np.any(np.diff(self.seg_ptr) < 1):
            raise ValueError("every request needs at least one segment")
        if n and not np.array_equal(per_request, self.prompt_tokens):
            raise ValueError("segment lengths must add up to prompt_tokens")

    def fingerprint(self) -> str:
        """A sha256 over every column: equal fingerprints mean identical request streams."""
        import hashlib

        h = hashlib.sha256()
        for name in ("arrival_s", "prompt_tokens", "output_tokens", "max_output_tokens",
                     "session_id", "prefix_group", "seg_ptr", "seg_key", "seg_len", "output_key"):
            h.update(np.ascontiguousarray(getattr(self, name)).tobytes())
        return h.hexdigest()


def unique_prompt_workload(arrival_s: np.ndarray, prompt_tokens: np.ndarray,
                           output_tokens: np.ndarray, max_output_tokens: np.ndarray | None = None,
                           expected_rate_rps: float = float("nan"), source: str = "") -> Workload:
    """Build a workload whose prompts share nothing (one unique segment per request)."""
    n = int(arrival_s.shape[0])
    out = np.asarray(output_tokens, dtype=np.int64)
    return Workload(
        arrival_s=np.asarray(arrival_s, dtype=np.float64),
        prompt_tokens=np.asarray(prompt_tokens, dtype=np.int64),
        output_tokens=out,
        max_output_tokens=out.copy() if max_output_tokens is None
        else np.asarray(max_output_tokens, dtype=np.int64),
        session_id=np.full(n, -1, dtype=np.int64),
        prefix_group=np.full(n, -1, dtype=np.int64),
        seg_ptr=np.arange(n + 1, dtype=np.int64),
        seg_key=np.full(n, -1, dtype=np.int64),
        seg_len=np.asarray(prompt_tokens, dtype=np.int64).copy(),
        output_key=np.full(n, -1, dtype=np.int64),
        expected_rate_rps=expected_rate_rps,
        source=source,
    )
