"""Readers of measured runs (``sim.fidelity``): every layout on tiny synthetic fixtures, and
bad input as one-line errors naming file, line and column (exit code 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from sim.cli import main
from sim.errors import TraceError
from sim.fidelity.readers import detect, discover, read_run

from conftest import expect_error

FIX = Path(__file__).parent / "fixtures" / "fidelity"
TRACEV2 = FIX / "tracev2" / "results" / "rate2"
LSS = FIX / "llmservingsim" / "examples" / "GPU" / "tiny"
TABLE_COLUMNS = ("arrival=t_send_ms:ms,prompt=in_tok,output=out_tok,ttft=ttft_ms:ms,"
                 "e2e=latency_s,status=ok")


def fidelity(*args: object) -> Result:
    """Run ``simlb fidelity`` with the tiny test profile's stand-in (a linear cost model)."""
    return CliRunner().invoke(main, ["fidelity", *map(str, args)], prog_name="simlb")


def test_tracev2_columns_engine_and_failed_rows() -> None:
    run = read_run("tracev2", TRACEV2)
    assert len(run) == 40 and run.n_ok == 39  # every row counted, the failed one excluded
    assert run.name == "rate2" and run.layout == "tracev2"
    assert run.arrival_s[0] == 0 and np.all(np.diff(run.arrival_s) >= 0)
    assert np.all(run.prompt_tokens >= 90)  # server_input_tokens, not input_tokens
    ok = run.ok
    assert np.allclose(run.ttft_s[ok], 0.030 + (run.prompt_tokens[ok] - 10) * 50e-6)
    assert np.allclose(run.e2e_s[ok] - run.ttft_s[ok], 15 * 0.010)
    assert np.allclose(run.itl_s[ok], 0.010)
    assert np.isnan(run.ttft_s[~ok]).all()
    eng = run.engine
    assert (eng.version, eng.max_num_batched_tokens, eng.num_gpu_blocks) == ("0.23.0", 512, 400)
    assert eng.kv_capacity_tokens == 6400 and eng.max_num_seqs == 256
    assert any("1 error" in n for n in run.notes)
    assert any("max_num_seqs" in n for n in run.notes)
    assert "peer" in run.extra and set(run.group) == {"tenantA", "tenantB"}


def test_llmservingsim_clock_alignment() -> None:
    run = read_run("llmservingsim", LSS)
    assert len(run) == 30 and run.n_ok == 29
    assert run.engine.gpu == "Test GPU" and run.engine.num_gpu_blocks == 300
    assert run.engine.max_num_seqs == 32
    # request 0 reached the engine instantly: the offset comes from it; the others' hand-off
    # (0, 2 or 4 ms) is counted in their TTFT
    hand = 0.002 * (np.arange(30) % 3)
    hand[0] = 0.0
    ok = run.ok
    assert np.allclose(run.ttft_s[ok], 0.05 + hand[ok], atol=1e-6)
    assert np.allclose(run.e2e_s[ok], 0.05 + 0.19 + hand[ok], atol=1e-6)
    assert np.allclose(np.diff(run.arrival_s), 0.25)


def test_vllm_bench_json() -> None:
    run = read_run("vllm-bench", FIX / "vllm_bench.json")
    assert len(run) == 12 and run.n_ok == 11 and not run.ok[3]
    assert np.allclose(run.e2e_s[run.ok], run.ttft_s[run.ok] + 0.09)
    assert np.allclose(run.itl_s[run.ok], 0.01)
    assert run.rate_rps == 4.0


def test_vllm_bench_without_send_times_is_refused() -> None:
    with pytest.raises(TraceError, match="start_times"):
        read_run("vllm-bench", FIX / "vllm_bench_no_start_times.json")


def test_table_with_units() -> None:
    run = read_run("table", FIX / "table.csv", columns=TABLE_COLUMNS)
    assert len(run) == 25 and run.n_ok == 24
    assert np.allclose(np.diff(run.arrival_s), 0.3)
    assert np.allclose(run.e2e_s[run.ok], 0.155)
    assert np.allclose(run.ttft_s[run.ok], 0.045 + 0.001 * (np.arange(25) % 5)[run.ok])


def test_engine_overrides() -> None:
    run = read_run("table", FIX / "table.csv", columns=TABLE_COLUMNS,
                   engine={"num_gpu_blocks": "100", "chunked_prefill": "false"})
    assert run.engine.num_gpu_blocks == 100 and run.engine.chunked_prefill is False


def test_detect_and_discover() -> None:
    assert detect(TRACEV2) == "tracev2"
    assert detect(TRACEV2 / "trace.csv") == "tracev2"
    assert detect(LSS) == "llmservingsim" and detect(LSS / "vllm") == "llmservingsim"
    assert detect(FIX / "vllm_bench.json") == "vllm-bench"
    assert detect(FIX / "table.csv") is None
    assert detect(FIX / "table.csv", "arrival=a") == "table"
    found = discover(FIX)
    assert [layout for layout, _ in found] == ["llmservingsim", "tracev2"]


def _copy_run(tmp_path: Path) -> Path:
    dest = tmp_path / "results" / "run"
    shutil.copytree(TRACEV2, dest)
    shutil.copy(FIX / "tracev2" / "server_config.json", tmp_path / "server_config.json")
    return dest


def _edit_csv(path: Path, line: int, column: str, value: str) -> None:
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[line - 1].split(",")
    cells[header.index(column)] = value
    lines[line - 1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")


def test_cli_missing_column(tmp_path: Path) -> None:
    run = _copy_run(tmp_path)
    text = (run / "trace.csv").read_text().replace("server_input_tokens", "prompt_len", 1)
    (run / "trace.csv").write_text(text)
    expect_error(fidelity(run, "--profile", "h100/llama-3-8b"), "trace.csv", "line 1",
                 "column 'server_input_tokens'", "missing column")


def test_cli_unparsable_time(tmp_path: Path) -> None:
    run = _copy_run(tmp_path)
    _edit_csv(run / "trace.csv", 6, "send_time_us", "12:30")
    expect_error(fidelity(run, "--profile", "h100/llama-3-8b"), "trace.csv", "line 6",
                 "column 'send_time_us'", "expected a number")


def test_cli_no_requests(tmp_path: Path) -> None:
    run = _copy_run(tmp_path)
    header = (run / "trace.csv").read_text().splitlines()[0]
    (run / "trace.csv").write_text(header + "\n\n")
    expect_error(fidelity(run, "--profile", "h100/llama-3-8b"), "trace.csv", "no requests")


def test_cli_all_failed(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,p,o,t,e,s\n0,10,5,0.1,0.2,error\n1,10,5,0.1,0.2,error\n")
    expect_error(fidelity(path, "--profile", "h100/llama-3-8b", "--columns",
                          "arrival=a,prompt=p,output=o,ttft=t,e2e=e,status=s"),
                 "t.csv", "no completed requests")


def test_cli_unknown_layout(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello\n")
    expect_error(fidelity(tmp_path, "--profile", "h100/llama-3-8b"), str(tmp_path),
                 "unknown layout")
    expect_error(fidelity(tmp_path / "missing", "--profile", "h100/llama-3-8b"), "not found")


def test_cli_bad_jsonl_line(tmp_path: Path) -> None:
    dest = tmp_path / "vllm"
    shutil.copytree(LSS / "vllm", dest)
    lines = (dest / "requests.jsonl").read_text().splitlines()
    rec = json.loads(lines[3])
    del rec["queued_ts"]
    lines[3] = json.dumps(rec)
    (dest / "requests.jsonl").write_text("\n".join(lines) + "\n")
    expect_error(fidelity(dest, "--profile", "h100/llama-3-8b"), "requests.jsonl", "line 4",
                 "column 'queued_ts'")


def test_cli_bad_columns_spec() -> None:
    expect_error(fidelity(FIX / "table.csv", "--profile", "h100/llama-3-8b", "--columns",
                          "arrival=t_send_ms:hours,prompt=in_tok"), "--columns", "unknown unit")
    expect_error(fidelity(FIX / "table.csv", "--profile", "h100/llama-3-8b", "--columns",
                          "arrival=t_send_ms,prompt=in_tok"), "--columns", "lacks")


def test_parquet_table_and_bad_row(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "runs.parquet"
    pq.write_table(pa.table({"sent": [0.0, 0.5, 1.0], "p": [10, 20, 30], "o": [5, 5, 5],
                             "ttft": [40.0, 41.0, 42.0], "e2e": [90.0, 91.0, 92.0]}), path)
    spec = "arrival=sent,prompt=p,output=o,ttft=ttft:ms,e2e=e2e:ms"
    run = read_run("table", path, columns=spec)
    assert run.n_ok == 3 and np.allclose(run.ttft_s, [0.040, 0.041, 0.042])
    assert np.allclose(run.itl_s, 0.050 / 4)
    pq.write_table(pa.table({"sent": [0.0, 0.5], "p": [10, -1], "o": [5, 5],
                             "ttft": [40.0, 41.0], "e2e": [90.0, 91.0]}), path)
    expect_error(fidelity(path, "--profile", "h100/llama-3-8b", "--columns", spec),
                 "runs.parquet", "row 2", "column 'p'")
