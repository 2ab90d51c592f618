"""Per-request records written as Parquet row groups (issue 18), and the pandas-free Arrow
conversion behind every result file: the same values and schema as ``pa.table``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sim.model.requests import STATUS_NAMES
from sim.results import RequestsWriter, arrow_table, status_names, write_requests


def _columns(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    finish = rng.random(n) * 100
    finish[rng.random(n) < 0.1] = np.nan
    return {"request_id": np.arange(n, dtype=np.int64),
            "status": rng.integers(0, len(STATUS_NAMES), n),
            "finish_s": finish,
            "strided": np.arange(2 * n, dtype=np.float64)[::2]}


def test_arrow_table_matches_pa_table() -> None:
    cols = _columns(1000)
    cols["status"] = status_names(cols["status"])
    cols["text"] = np.array(["", "é", "long text"] * 333 + ["x"])
    ours, theirs = arrow_table(cols), pa.table(cols)
    assert ours.schema == theirs.schema
    for name in cols:  # NaN != NaN, so compare the bytes of the pylists' repr
        assert repr(ours.column(name).to_pylist()) == repr(theirs.column(name).to_pylist())
    assert ours.column("finish_s").null_count == theirs.column("finish_s").null_count == 0


def test_row_groups_hold_the_same_rows(tmp_path: Path) -> None:
    cols = _columns(10_001)
    write_requests(tmp_path / "one.parquet", cols)
    write_requests(tmp_path / "many.parquet", cols, row_group_rows=1000)
    one, many = pq.ParquetFile(tmp_path / "one.parquet"), pq.ParquetFile(tmp_path / "many.parquet")
    assert one.metadata.num_row_groups == 1 and many.metadata.num_row_groups == 11
    a, b = one.read(), many.read()
    assert a.schema == b.schema
    for name in a.column_names:
        assert repr(a.column(name).to_pylist()) == repr(b.column(name).to_pylist())
    assert b.column("status").to_pylist()[:5] == [STATUS_NAMES[int(s)]
                                                  for s in cols["status"][:5]]


def test_writer_streams_chunks_and_handles_empty(tmp_path: Path) -> None:
    cols = _columns(300)
    with RequestsWriter(tmp_path / "s.parquet") as writer:
        for start in range(0, 300, 128):
            writer.write({k: v[start:start + 128] for k, v in cols.items()})
    assert writer.rows == 300
    table = pq.read_table(tmp_path / "s.parquet")
    assert table.num_rows == 300
    assert table.column("request_id").to_pylist() == list(range(300))
    write_requests(tmp_path / "empty.parquet", {k: v[:0] for k, v in cols.items()})
    empty = pq.read_table(tmp_path / "empty.parquet")
    assert empty.num_rows == 0 and empty.column_names == list(cols)
