"""Trace readers: each published format on its fixture, gzip, generic layouts, a 1M-row file,
and every kind of bad input reported as one line naming the file, line and column (exit 2)."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sim.cli import main
from sim.errors import TraceError
from sim.workload.trace_readers import FORMATS, TraceLayout
from sim.workload.traces import read_table

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "traces"
AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"


def fixture(name: str) -> Path:
    """Path of a trace fixture."""
    return FIXTURES / name


def write(tmp_path: Path, name: str, text: str) -> Path:
    """Write ``text`` to ``tmp_path / name`` and return the path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def azure_rows(*rows: str) -> str:
    """An Azure-format CSV with the given data rows."""
    return "\n".join([AZURE_HEADER, *rows]) + "\n"


def stats_cli(*args: str) -> object:
    """Run ``simlb trace stats`` through click's test runner."""
    return CliRunner().invoke(main, ["trace", "stats", *args])


# --- each format on its fixture ---------------------------------------------------------------

def test_azure_fixture_values() -> None:
    """Datetimes with 7 fractional digits become offsets in seconds; counts are exact."""
    t = read_table(fixture("azure_conv_fixture.csv"), FORMATS["azure"])
    assert len(t) == 400
    assert t.time_s[:3].tolist() == pytest.approx([0.0, 0.1651815, 0.4384223], abs=1e-9)
    assert t.prompt_tokens[:3].tolist() == [340, 362, 783]
    assert t.output_tokens[:3].tolist() == [214, 95, 46]
    assert t.prompt_tokens[-1] == 2385 and t.output_tokens[-1] == 127
    assert t.time_s[-1] == pytest.approx(117.4237549, abs=1e-9)
    assert t.hash_ptr is None and t.model_code is None


def test_mooncake_fixture_values() -> None:
    """Millisecond timestamps, lengths and the hash-id lists as a CSR."""
    t = read_table(fixture("mooncake_fixture.jsonl"), FORMATS["mooncake"])
    assert len(t) == 285
    assert t.time_s[:4].tolist() == pytest.approx([0.0, 4.6, 5.1, 7.0])
    assert t.prompt_tokens[:4].tolist() == [2782, 1107, 1787, 2715]
    assert t.output_tokens[:4].tolist() == [198, 309, 900, 137]
    assert t.hash_ptr is not None and t.hash_ids is not None
    assert t.hash_ids[t.hash_ptr[0]:t.hash_ptr[1]].tolist() == [0, 1, 2, 3, 745, 746]
    assert t.hash_ids[t.hash_ptr[3]:t.hash_ptr[4]].tolist() == [313, 314, 315, 316, 317, 318]


def test_burstgpt_fixture_values() -> None:
    """Whole-second timestamps, model names as codes, failed rows kept by the reader."""
    t = read_table(fixture("burstgpt_fixture.csv"), FORMATS["burstgpt"])
    assert len(t) == 300
    assert t.time_s[:3].tolist() == [0.0, 0.0, 0.0]
    assert t.prompt_tokens[:3].tolist() == [1812, 144, 747]
    assert t.output_tokens[:4].tolist() == [1378, 37, 397, 0]
    assert t.model_names == ("ChatGPT", "GPT-4")
    assert int((t.output_tokens == 0).sum()) == 13
    assert t.session_id is None  # the optional Session ID column is absent


def test_vidur_fixture_values() -> None:
    """Vidur's processed traces: arrived_at in seconds from 0."""
    t = read_table(fixture("vidur_fixture.csv"), FORMATS["vidur"])
    assert len(t) == 300
    assert t.time_s[:3].tolist() == pytest.approx([0.0, 0.267241, 0.439854])
    assert t.prompt_tokens[:3].tolist() == [1936, 492, 781]
    assert t.output_tokens[:3].tolist() == [190, 751, 101]


def test_gzip_read_directly(tmp_path: Path) -> None:
    """Gzip files (recognised by their magic bytes, whatever the name) read as the original."""
    for name, fmt in (("azure_conv_fixture.csv", "azure"),
                      ("mooncake_fixture.jsonl", "mooncake")):
        packed = tmp_path / f"{name}.gz"
        with fixture(name).open("rb") as src, gzip.open(packed, "wb") as dst:
            shutil.copyfileobj(src, dst)
        plain = read_table(fixture(name), FORMATS[fmt])
        zipped = read_table(packed, FORMATS[fmt])
        assert np.array_equal(plain.time_s, zipped.time_s)
        assert np.array_equal(plain.prompt_tokens, zipped.prompt_tokens)
        if plain.hash_ids is not None:
            assert np.array_equal(plain.hash_ids, zipped.hash_ids)


def test_generic_csv_jsonl_parquet(tmp_path: Path) -> None:
    """A column mapping reads the same requests from CSV, JSON lines and Parquet."""
    import pandas as pd

    frame = pd.DataFrame({"ts_ms": [0, 250, 1000], "inp": [10, 20, 30], "out": [1, 2, 3],
                          "blocks": [[1, 2], [1, 3], [4]], "llm": ["a", "b", "a"]})
    frame.drop(columns="blocks").to_csv(tmp_path / "t.csv", index=False)
    frame.to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "t.parquet")
    for container in ("csv", "jsonl", "parquet"):
        layout = TraceLayout(container, "ts_ms", "inp", "out", "ms", model="llm",  # type: ignore[arg-type]
                             hash_ids=None if container == "csv" else "blocks")
        t = read_table(tmp_path / f"t.{container}", layout)
        assert t.time_s.tolist() == [0.0, 0.25, 1.0]
        assert t.prompt_tokens.tolist() == [10, 20, 30]
        assert t.model_names == ("a", "b") and t.model_code.tolist() == [0, 1, 0]
        if container != "csv":
            assert t.hash_ptr.tolist() == [0, 2, 4, 5]
            assert t.hash_ids.tolist() == [1, 2, 1, 3, 4]


def test_head_only(tmp_path: Path) -> None:
    """max_rows reads the first records only (what simlb validate checks)."""
    bad = write(tmp_path, "late.csv", azure_rows(*[f"2024-01-01 00:00:0{i}.0,10,5"
                                                   for i in range(5)], "x,1,1"))
    assert len(read_table(bad, FORMATS["azure"], max_rows=5)) == 5
    with pytest.raises(TraceError, match="line 7"):
        read_table(bad, FORMATS["azure"])


MEASURE_READ = """
import sys, time
from pathlib import Path
import pandas  # imported lazily by the CSV reader: loaded before the baseline, like the others
from sim.workload.trace_readers import FORMATS
from sim.workload.traces import read_table
def status_mb(key):
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) / 1024 for x in f if x.startswith(key))
base = status_mb("VmRSS:")
started = time.perf_counter()
table = read_table(Path(sys.argv[1]), FORMATS["azure"])
elapsed = time.perf_counter() - started
print(len(table), elapsed, status_mb("VmHWM:") - base)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_one_million_rows_stream_in_bounded_memory(tmp_path: Path) -> None:
    """1M Azure rows load in about a second; the read's peak RSS stays a few times the output.

    Measured in a fresh interpreter: its RSS high-water mark (VmHWM; ru_maxrss would include
    the forking parent's) minus the RSS after imports. Reading the file in one piece instead
    of chunks needs about 1.5 times the bound.
    """
    rng = np.random.default_rng(0)
    k = 10_000  # a 10k-row block written 100 times (the reader does not need sorted times)
    start = np.datetime64("2024-01-01T00:00:00", "ns")
    stamps = start + np.cumsum(rng.integers(1, 4_000_000_000, k)).astype("timedelta64[ns]")
    text = np.char.replace(np.datetime_as_string(stamps, unit="ns"), "T", " ").tolist()
    block = "".join(f"{t},{p},{o}\n" for t, p, o in zip(
        text, rng.integers(1, 8000, k).tolist(), rng.integers(1, 1000, k).tolist(), strict=True))
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8") as f:
        f.write(AZURE_HEADER + "\n")
        for _ in range(100):
            f.write(block)
    done = subprocess.run([sys.executable, "-c", MEASURE_READ, str(path)], capture_output=True,
                          text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    rows, elapsed, growth_mb = done.stdout.split()
    print(f"\n1M-row Azure CSV ({path.stat().st_size / 1e6:.0f} MB): {float(elapsed):.2f} s, "
          f"peak RSS growth {float(growth_mb):.0f} MB for 24 MB of output columns")
    assert int(rows) == 1_000_000
    assert float(growth_mb) < 100.0


# --- bad input ----------------------------------------------------------------------------------

BAD_CSV = [
    ("missing_column", "TIMESTAMP,ContextTokens\n2024-01-01 00:00:00,5\n", 1, "GeneratedTokens",
     "missing column"),
    ("not_numeric", azure_rows("2024-01-01 00:00:00,5,1", "2024-01-01 00:00:01,abc,1"), 3,
     "ContextTokens", "not a number ('abc')"),
    ("negative", azure_rows("2024-01-01 00:00:00,5,1", "2024-01-01 00:00:01,5,-3"), 3,
     "GeneratedTokens", "negative token count"),
    ("nan", azure_rows("2024-01-01 00:00:00,NaN,1"), 2, "ContextTokens", "missing or NaN"),
    ("empty_value", azure_rows("2024-01-01 00:00:00,5,1", "2024-01-01 00:00:01,,1"), 3,
     "ContextTokens", "missing or NaN"),
    ("fraction", azure_rows("2024-01-01 00:00:00,5.5,1"), 2, "ContextTokens",
     "not a whole number"),
    ("bad_time", azure_rows("2024-01-01 00:00:00,5,1", "2024-13-45 00:00:00,5,1"), 3,
     "TIMESTAMP", "unparsable timestamp"),
    ("blank_lines", azure_rows("2024-01-01 00:00:00,5,1", "", "2024-01-01 00:00:01,x,1"), 4,
     "ContextTokens", "not a number"),
    ("empty_file", "", 1, "TIMESTAMP", "empty file"),
    ("header_only", AZURE_HEADER + "\n", 2, "TIMESTAMP", "no requests"),
]


@pytest.mark.parametrize(("name", "text", "line", "column", "what"), BAD_CSV,
                         ids=[c[0] for c in BAD_CSV])
def test_bad_csv_one_line_exit_2(tmp_path: Path, name: str, text: str, line: int, column: str,
                                 what: str) -> None:
    """Each bad CSV gives one stderr line naming the file, line and column; exit code 2."""
    path = write(tmp_path, f"{name}.csv", text)
    result = stats_cli(str(path), "--format", "azure")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0]
    assert f"line {line}," in lines[0] and f"column '{column}'" in lines[0]
    assert what in lines[0]


def test_bad_gzip_csv_counts_lines(tmp_path: Path) -> None:
    """Line numbers hold for gzip input too."""
    path = tmp_path / "bad.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write(azure_rows("2024-01-01 00:00:00,5,1", "2024-01-01 00:00:01,5,1",
                           "2024-01-01 00:00:02,-1,1"))
    with pytest.raises(TraceError, match=r"line 4, column 'ContextTokens': negative"):
        read_table(path, FORMATS["azure"])


def test_too_many_fields(tmp_path: Path) -> None:
    """A row with more fields than the header names its line."""
    path = write(tmp_path, "wide.csv", azure_rows("2024-01-01 00:00:00,5,1",
                                                  "2024-01-01 00:00:01,5,1,9"))
    with pytest.raises(TraceError, match=r"wide\.csv: line 3: 4 fields where the header has 3"):
        read_table(path, FORMATS["azure"])


MOONCAKE_OK = '{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]}'
BAD_JSONL = [
    ("syntax", [MOONCAKE_OK, '{"timestamp": 1, "input_length": 600,'], 2, None,
     "invalid JSON"),
    ("string_count", [MOONCAKE_OK, MOONCAKE_OK.replace("600", '"many"')], 2, "input_length",
     "not a number ('many')"),
    ("missing_field", [MOONCAKE_OK, '{"timestamp": 1, "input_length": 600, "hash_ids": []}'], 2,
     "output_length", "missing"),
    ("negative", ["", MOONCAKE_OK, MOONCAKE_OK.replace('"output_length": 5',
                                                       '"output_length": -5')],
     3, "output_length", "negative token count"),
    ("hash_not_list", [MOONCAKE_OK.replace("[1, 2]", '"ab"')], 1, "hash_ids", "list of integer"),
    ("nan", [MOONCAKE_OK.replace("600", "NaN")], 1, "input_length", "NaN"),
    ("empty", [], 1, "timestamp", "empty file"),
]


@pytest.mark.parametrize(("name", "rows", "line", "column", "what"), BAD_JSONL,
                         ids=[c[0] for c in BAD_JSONL])
def test_bad_jsonl_one_line_exit_2(tmp_path: Path, name: str, rows: list[str], line: int,
                                   column: str | None, what: str) -> None:
    """Bad Mooncake lines are located by line and field; exit code 2."""
    path = write(tmp_path, f"{name}.jsonl", "\n".join(rows) + ("\n" if rows else ""))
    result = stats_cli(str(path), "--format", "mooncake")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and f"line {line}" in lines[0] and what in lines[0]
    if column is not None:
        assert f"column '{column}'" in lines[0]


def test_bad_parquet_names_row_and_column(tmp_path: Path) -> None:
    """Parquet has no lines: errors name the row (1-based) and the column."""
    import pandas as pd

    path = tmp_path / "t.parquet"
    pd.DataFrame({"t": [0.0, 1.0, 2.0], "p": [5, -1, 5], "o": [1, 1, 1]}).to_parquet(path)
    result = stats_cli(str(path), "--format", "parquet", "--column", "arrival=t",
                       "--column", "prompt_tokens=p", "--column", "output_tokens=o")
    assert result.exit_code == 2
    assert "row 2, column 'p': negative token count" in result.stderr
    missing = stats_cli(str(path), "--format", "parquet", "--column", "arrival=t",
                        "--column", "prompt_tokens=p", "--column", "output_tokens=out")
    assert missing.exit_code == 2 and "column 'out': missing column" in missing.stderr


def test_mooncake_hash_ids_must_fit_the_prompt(tmp_path: Path) -> None:
    """Three 512-token blocks cannot hold a 600-token prompt: located error."""
    three = MOONCAKE_OK.replace("[1, 2]", "[1, 2, 3]")
    path = write(tmp_path, "m.jsonl", f"{MOONCAKE_OK}\n{three}\n")
    result = stats_cli(str(path))
    assert result.exit_code == 2
    assert "line 2, column 'hash_ids': 3 hash ids of 512 tokens need more than 1024" in \
        result.stderr


def test_unsorted_warns_with_count_or_fails_strict(tmp_path: Path) -> None:
    """Unsorted timestamps are sorted with a counted warning, or an error with --strict."""
    path = write(tmp_path, "unsorted.csv", azure_rows(
        "2024-01-01 00:00:05,5,1", "2024-01-01 00:00:01,6,1", "2024-01-01 00:00:07,7,1",
        "2024-01-01 00:00:06,8,1"))
    ok = stats_cli(str(path), "--json")
    assert ok.exit_code == 0
    assert "2 requests arrive earlier than the request before them" in ok.stderr
    body = json.loads(ok.stdout)
    assert "2 out-of-order timestamps sorted" in body["source"] and body["rows"] == 4
    assert body["span_s"] == pytest.approx(6.0)
    strict = stats_cli(str(path), "--strict")
    assert strict.exit_code == 2
    assert strict.stderr.count("\n") == 1
    assert "line 3, column 'TIMESTAMP': timestamp earlier than the previous" in strict.stderr


def test_zero_tokens_error_names_the_line(tmp_path: Path) -> None:
    """A 0-token prompt is an error by default, naming line and column."""
    path = write(tmp_path, "zero.csv", azure_rows("2024-01-01 00:00:00,5,1",
                                                  "2024-01-01 00:00:01,0,1"))
    result = stats_cli(str(path))
    assert result.exit_code == 2
    assert "line 3, column 'ContextTokens': 0 tokens" in result.stderr
    assert stats_cli(str(path), "--zero-tokens", "drop").exit_code == 0


def test_unknown_format_asks_for_one(tmp_path: Path) -> None:
    """A CSV whose header matches no published layout needs --format and a mapping."""
    path = write(tmp_path, "odd.csv", "a,b,c\n1,2,3\n")
    result = stats_cli(str(path))
    assert result.exit_code == 2 and "pass --format" in result.stderr
