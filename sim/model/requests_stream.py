"""A request table that loads its requests chunk by chunk and releases finished pages
(fleet-scale runs in bounded memory, issue 18).

``StreamedRequestTable`` is a ``RequestTable`` whose columns are ``PagedColumn``s: the router
calls ``pull`` when its next arrival lies beyond the loaded requests, which appends the next
``WorkloadChunk`` of an ``ArrivalSource`` (ids continue across chunks, segment pointers are
offset), and the run calls ``release_final`` now and then, which hands over whole pages of
requests that are all final (recorded, and with no attempt still live) as numpy columns and
drops them. Resident are the requests of the loaded chunk and of pages not yet wholly final:
the memory of a run no longer grows with its length.

The model reads the table exactly as it reads a whole one (``table.x[rid]``), one Python
``__getitem__`` call more per read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from sim.model.paged import PAGE_BITS, PagedColumn
from sim.model.requests import UNFINISHED, RequestTable
from sim.workload.stream import ArrivalSource

#: input columns taken from the workload, in ``requests.parquet`` order where they appear
_INPUTS = ("arrival_s", "prompt_tokens", "output_tokens", "max_output_tokens", "session_id",
           "prefix_group")
#: record columns: (name, array type code, initial value)
_RECORDS = (("node", "q", -1), ("first_scheduled_s", "d", math.nan),
            ("first_token_s", "d", math.nan), ("finish_s", "d", math.nan),
            ("status", "q", UNFINISHED), ("preemptions", "q", 0), ("cached_tokens", "q", 0),
            ("recomputed_tokens", "q", 0), ("generated_tokens", "q", 0),
            ("client_wait_s", "d", 0.0))


class StreamedRequestTable(RequestTable):
    """Requests loaded from ``source`` as the run needs them; ``n``: requests loaded so far.

    Args:
        source: the chunks of requests, in arrival order.
        page_bits: ``1 << page_bits`` requests per page (the unit of release).
    """

    def __init__(self, source: ArrivalSource, page_bits: int = PAGE_BITS):
        # (not the base's __init__, which reads a whole Workload)
        self.source = source
        self.n = 0
        self.page_bits = page_bits
        for name in (*_INPUTS, "model", "sheddable", "request_tokens", "_seg_ptr", "_seg_key",
                     "_seg_len", "_output_key"):
            setattr(self, name, PagedColumn(bits=page_bits))
        for name, code, fill in _RECORDS:
            setattr(self, name, PagedColumn(code, fill, page_bits))
        #: the ``accounting`` of every chunk loaded (``sim.workload.stream.accounting_total``)
        self.accounting: list[dict[str, Any]] = []
        #: requests below this id have been released
        self.released = 0
        self._segments = 0
        self._exhausted = False

    def pull(self) -> bool:
        """Append the source's next chunk; False when the source is exhausted."""
        if self._exhausted:
            return False
        chunk = self.source.next_chunk()
        if chunk is None:
            self._exhausted = True
            return False
        if chunk.first_id != self.n:
            raise ValueError(f"chunk {chunk.index} starts at request {chunk.first_id}, "
                             f"expected {self.n}")
        w = chunk.workload
        n = len(w)
        cols = {name: getattr(w, name).tolist() for name in _INPUTS}
        for name, values in cols.items():
            getattr(self, name).extend(values)
        models = w.extra.get("model")
        self.model.extend([""] * n if models is None else [str(m) for m in models])
        sheddable = w.extra.get("sheddable")
        self.sheddable.extend([False] * n if sheddable is None
                              else [bool(s) for s in sheddable])
        self.request_tokens.extend([p + m for p, m in zip(
            cols["prompt_tokens"], cols["max_output_tokens"], strict=True)])
        # segment pointers continue after the segments already loaded (the last pointer of
        # one chunk is the first of the next)
        ptr = (w.seg_ptr + self._segments).tolist()
        self._seg_ptr.extend(ptr if self.n == 0 else ptr[1:])
        self._seg_key.extend(w.seg_key.tolist())
        self._seg_len.extend(w.seg_len.tolist())
        self._segments += int(w.seg_ptr[-1])
        self._output_key.extend(w.output_key.tolist())
        for name, _, _ in _RECORDS:
            getattr(self, name).grow(n)
        self.accounting.append(dict(w.accounting))
        self.n += n
        return True

    def release_final(self, live: Callable[[int, int], bool] | None = None,
                      everything: bool = False) -> Iterator[dict[str, np.ndarray]]:
        """Hand over and drop the oldest pages whose requests are all final.

        A page goes when it is wholly loaded (or the source is exhausted), no request in it
        is unfinished, and ``live(first, end)`` (requests with an attempt still running, e.g.
        a hedge) is False. With ``everything``, every loaded page goes (the end of a run, after
        the unfinished requests were booked). Yields each page's columns (``_page_columns``).
        """
        bits = self.page_bits
        while self.released < self.n:
            k = self.released >> bits
            first = k << bits
            end = min(first + (1 << bits), self.n)
            if not everything:
                if end - first < 1 << bits and not self._exhausted:
                    return
                status = np.frombuffer(self.status.page(k), dtype=np.int64)[:end - first]
                if (status == UNFINISHED).any() or (live is not None and live(first, end)):
                    return
            yield self._page_columns(k, first, end)
            self._release_page(k, end)

    def _page_columns(self, k: int, first: int, end: int) -> dict[str, np.ndarray]:
        """The inputs and records of requests ``first .. end - 1`` (page ``k``) as numpy."""
        count = end - first
        cols: dict[str, np.ndarray] = {
            name: np.frombuffer(getattr(self, name).page(k),
                                dtype=np.float64 if code == "d" else np.int64)[:count].copy()
            for name, code, _ in _RECORDS}
        for name in _INPUTS:
            cols[name] = np.array(getattr(self, name).page(k)[:count],
                                  dtype=np.float64 if name.endswith("_s") else np.int64)
        cols["request_id"] = np.arange(first, end, dtype=np.int64)
        return cols

    def _release_page(self, k: int, end: int) -> None:
        for name in (*_INPUTS, "model", "sheddable", "request_tokens", "_output_key",
                     *(r[0] for r in _RECORDS)):
            getattr(self, name).release(k)
        # the segments of the released requests go with them (whole pages only); the pointer
        # of the next request stays
        next_segment = self._seg_ptr[end]
        self._seg_key.release_below(next_segment)
        self._seg_len.release_below(next_segment)
        self._seg_ptr.release_below(end)
        self.released = end
