"""``simlb run --stream``: fleet-scale runs in bounded memory from the command line
(sim.runner_stream, issue 18)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from click.testing import CliRunner, Result

from sim.cli import main

from conftest import expect_error, scenario_dict, write_scenario


def run(scenario: Path, out: Path, *args: Any) -> Result:
    return CliRunner().invoke(main, ["run", str(scenario), "--out", str(out), "--quiet",
                                     *map(str, args)], prog_name="simlb")


def _scenario(tmp_path: Path, **changes: Any) -> Path:
    raw = scenario_dict(**({"duration_s": 150.0, "warmup_s": 10.0} | changes))
    raw["router"]["strategies"] = [{"name": "round_robin"}, {"name": "least_loaded"}]
    return write_scenario(tmp_path, raw)


def test_stream_writes_complete_results(tmp_path: Path) -> None:
    result = run(_scenario(tmp_path), tmp_path / "out", "--stream")
    assert result.exit_code == 0, result.output
    seeds = sorted((tmp_path / "out" / "test").glob("*/seed-7"))
    assert len(seeds) == 2
    tables = []
    for seed_dir in seeds:
        summary = json.loads((seed_dir / "summary.json").read_text(encoding="utf-8"))
        requests = pq.read_table(seed_dir / "requests.parquet").to_pydict()
        assert len(requests["request_id"]) == summary["requests"]["arrived"] > 800
        assert requests["request_id"] == list(range(len(requests["request_id"])))
        assert summary["sketch"]["latency_relative_error"] == 0.005
        assert summary["input"]["chunked"] is True
        meta = json.loads((seed_dir / "meta.json").read_text(encoding="utf-8"))
        assert meta["requests"] == summary["requests"]["arrived"]
        resolved = (seed_dir / "scenario.resolved.yaml").read_text(encoding="utf-8")
        assert "streamed: true" in resolved
        tables.append(requests)
        assert not list(seed_dir.parent.glob(".*"))  # no temporary records left
    # both strategies saw the same requests (common random numbers)
    for key in ("arrival_s", "prompt_tokens", "output_tokens"):
        assert np.array_equal(tables[0][key], tables[1][key])
    assert "round_robin" in result.stdout and "least_loaded" in result.stdout


def test_stream_in_worker_processes_gives_the_same_results(tmp_path: Path) -> None:
    path = _scenario(tmp_path)
    serial = run(path, tmp_path / "a", "--stream")
    parallel = run(path, tmp_path / "b", "--stream", "--jobs", 2)
    assert serial.exit_code == 0 and parallel.exit_code == 0, parallel.output
    for name in ("round_robin", "least_loaded"):
        a, b = (tmp_path / d / "test" / name / "seed-7" for d in "ab")
        assert (a / "summary.json").read_bytes() == (b / "summary.json").read_bytes()
        assert pq.read_table(a / "requests.parquet").equals(pq.read_table(b / "requests.parquet"))


def test_stream_is_not_limited_by_the_request_count(tmp_path: Path) -> None:
    path = _scenario(tmp_path, limits={"max_requests": 100})
    expect_error(run(path, tmp_path / "a"), "limits.max_requests")
    assert run(path, tmp_path / "b", "--stream").exit_code == 0


def test_stream_refuses_what_it_cannot_stream(tmp_path: Path) -> None:
    raw = scenario_dict()
    raw["workload"]["arrivals"] = {"name": "mmpp2", "params": {
        "low_rps": 2, "high_rps": 8, "mean_low_s": 5, "mean_high_s": 2}}
    expect_error(run(write_scenario(tmp_path, raw), tmp_path / "out", "--stream"),
                 "s.yaml", "workload.arrivals", "--stream", "mmpp2")
    assert not (tmp_path / "out").exists()


def test_stream_refuses_prefill_decode_roles(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    expect_error(run(repo / "scenarios" / "disagg_long.yaml", tmp_path / "out", "--stream"),
                 "disagg_long.yaml", "cluster.node_groups", "--stream")


def test_a_failing_streamed_run_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    import sim.runner_stream

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(sim.runner_stream.RecordSink, "add", boom)
    result = run(_scenario(tmp_path), tmp_path / "out", "--stream")
    assert isinstance(result.exception, RuntimeError)
    assert not (tmp_path / "out").exists()
