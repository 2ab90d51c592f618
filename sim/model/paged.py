"""Append-only columns kept in fixed-size pages whose oldest pages can be dropped (issue 18).

A fleet-scale run cannot hold every request's inputs and records at once (10M requests in
Python lists take several GB). A ``PagedColumn`` is indexed by the request's global id like a
list (``column[rid]``, so the model's call sites stay as they are), but its values live in
pages of ``1 << PAGE_BITS`` entries: the table appends a chunk of requests as they are pulled and
drops a page once every request in it is final. Reading a dropped page raises
``ReleasedError``: a request released while the model still needed it is a loud bug, never a
silently wrong value.

A page is a Python list (inputs: indexing a list is the cheapest read) or an ``array.array``
of machine values (records: 8 bytes an entry, read back as numpy without a copy).
"""

from __future__ import annotations

from array import array
from typing import Any

#: entries per page by default: ``1 << PAGE_BITS`` (the page of ``i`` is ``i >> PAGE_BITS``)
PAGE_BITS = 16


class ReleasedError(LookupError):
    """A read or write of an entry whose page was released."""


class _Released:
    """Stands in for a dropped page."""

    __slots__ = ("first",)

    def __init__(self, first: int):
        self.first = first

    def __getitem__(self, i: int) -> Any:
        raise ReleasedError(f"entry {self.first + i} was read after its page was released")

    def __setitem__(self, i: int, value: Any) -> None:
        raise ReleasedError(f"entry {self.first + i} was written after its page was released")


class PagedColumn:
    """A list-like column of global positions ``0 .. len - 1`` in pages.

    Args:
        typecode: ``None`` for pages that are Python lists; an ``array`` type code (``"d"``,
            ``"q"``) for pages of machine values.
        fill: the value new entries take in ``grow`` (records start as their "not yet" value).
        bits: ``1 << bits`` entries per page.
    """

    __slots__ = ("bits", "fill", "length", "mask", "pages", "size", "typecode")

    def __init__(self, typecode: str | None = None, fill: Any = None, bits: int = PAGE_BITS):
        self.pages: list[Any] = []
        self.length = 0
        self.typecode = typecode
        self.fill = fill
        self.bits = bits
        self.size = 1 << bits
        self.mask = self.size - 1

    def __getitem__(self, i: int) -> Any:
        return self.pages[i >> self.bits][i & self.mask]

    def __setitem__(self, i: int, value: Any) -> None:
        self.pages[i >> self.bits][i & self.mask] = value

    def __len__(self) -> int:
        return self.length

    def extend(self, values: list[Any]) -> None:
        """Append ``values`` at positions ``len ..``."""
        start = 0
        while start < len(values):
            used = self.length & self.mask
            if used == 0 and self.length >> self.bits == len(self.pages):
                self.pages.append(self._page())
            take = min(self.size - used, len(values) - start)
            page = self.pages[-1]
            if self.typecode is None and used == len(page):
                page.extend(values[start:start + take])
            else:
                page[used:used + take] = self._as_page(values[start:start + take])
            self.length += take
            start += take

    def grow(self, n: int) -> None:
        """Append ``n`` entries of the fill value."""
        self.extend([self.fill] * n)

    def page(self, k: int) -> Any:
        """Page ``k`` (a list or an array; a full page holds ``size`` entries, the last one
        may hold fewer: ``entries(k)``)."""
        return self.pages[k]

    def entries(self, k: int) -> int:
        """How many positions of page ``k`` are in use."""
        return max(0, min(self.size, self.length - (k << self.bits)))

    def release(self, k: int) -> None:
        """Drop page ``k``: its memory is freed, and using its entries raises."""
        self.pages[k] = _Released(k << self.bits)

    def release_below(self, position: int) -> None:
        """Drop every page that lies wholly below ``position``."""
        for k in range(min(position >> self.bits, len(self.pages))):
            if not isinstance(self.pages[k], _Released):
                self.release(k)

    def _page(self) -> Any:
        if self.typecode is None:
            return []
        return array(self.typecode, [0]) * self.size

    def _as_page(self, values: list[Any]) -> Any:
        return values if self.typecode is None else array(self.typecode, values)
