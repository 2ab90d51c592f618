"""simlb calibrate: the API-latency solve, the split by run, the search, the CLI, and the
shipped Qwen3-14B profile against held-out measured runs (looser than the benchmark's
targets, so CI catches regressions)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sim.calibration.engine_fit import (
    api_shift,
    fit,
    solve_api_latency,
    split_runs,
)
from sim.cli import main
from sim.fidelity.readers import read_run
from sim.fidelity.replay import replay
from sim.fidelity.score import score_run
from sim.model.profile import load_profile

FIX = Path(__file__).parent / "fixtures" / "fidelity"
TRACEV2 = FIX / "tracev2" / "results" / "rate2"
PROFILE = "h100/qwen3-14b-aic"
ZERO_API = [f"cost_model.params.{k}=0" for k in (
    "api_latency_ms", "api_latency_us_per_prompt_token", "api_latency_us_per_active_request")]


def test_api_latency_solve_recovers_known_terms() -> None:
    """Measured TTFT = engine TTFT + 12 ms + 5 us/prompt token + 300 us/active request: the
    non-negative least squares gives back the three terms."""
    run = read_run("tracev2", TRACEV2)
    pred = replay(run, PROFILE, ZERO_API)
    truth = {"api_latency_ms": 12.0, "api_latency_us_per_prompt_token": 5.0,
             "api_latency_us_per_active_request": 300.0}
    shift = api_shift(run, pred, truth)
    measured = replace(run, ttft_s=pred.ttft_s + shift, e2e_s=pred.e2e_s + shift)
    got = solve_api_latency([measured], [pred])
    for key, want in truth.items():
        assert got[key] == pytest.approx(want, rel=1e-6, abs=1e-6)


def test_split_keeps_one_workload_together() -> None:
    """Two runs of the same requests (vanilla/patched) land on the same side; patterns hold
    out by name."""
    run = read_run("tracev2", TRACEV2)
    twin = replace(run, name="rate2/twin")
    other = replace(run, name="other", output_tokens=run.output_tokens + 1, rate_rps=9.0)
    train, test = split_runs([run, twin, other])
    assert {r.name for r in train} in ({run.name, "rate2/twin"}, {"other"})
    assert len(train) + len(test) == 3
    train, test = split_runs([run, twin, other], ["oth*"])
    assert [r.name for r in test] == ["other"]


def test_fit_improves_a_run_with_known_host_time() -> None:
    """A run 'measured' with 0.05 ms of host time per sequence and 20 ms of API latency: the
    fit starting from zero finds a better loss and API terms near the truth."""
    run = read_run("tracev2", TRACEV2)
    truth = ["cost_model.params.cpu_per_seq_ms=0.05", "cost_model.params.api_latency_ms=20",
             *ZERO_API[1:]]
    pred = replay(run, PROFILE, truth)
    measured = replace(run, ttft_s=pred.ttft_s, e2e_s=pred.e2e_s, itl_s=pred.itl_s)
    cal = fit([measured], PROFILE, ["cost_model.params.cpu_overhead_ms=0"],
              terms=("cpu_per_seq_ms",), start={"cpu_per_seq_ms": 0.0}, max_evaluations=12)
    first_loss = cal.history[0][1]
    assert cal.loss < first_loss / 10
    assert cal.values["cpu_per_seq_ms"] == pytest.approx(0.05, abs=0.02)
    assert cal.values["api_latency_ms"] == pytest.approx(20.0, abs=3.0)


def test_cli_writes_a_calibrated_profile(tmp_path: Path) -> None:
    out = tmp_path / "cal.json"
    result = CliRunner().invoke(main, ["calibrate", str(TRACEV2), "--profile", PROFILE,
                                       "--max-evaluations", "4", "-o", str(out), "--json"],
                                prog_name="simlb")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    prof = load_profile(str(out))
    assert prof.step_model.cpu_per_seq_ms == pytest.approx(doc["values"]["cpu_per_seq_ms"],
                                                           rel=1e-5, abs=1e-9)
    data = json.loads(out.read_text())
    assert data["fit_quality"]["calibration"]["train_runs"] == doc["train"]
    assert "simlb calibrate" in data["source"]["method"]


@pytest.mark.parametrize("args, needle", [
    (["--fit", "bogus"], "--fit"),
    (["--test", "*"], "--test"),
])
def test_cli_bad_input_is_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    result = CliRunner().invoke(main, ["calibrate", str(TRACEV2), "--profile", PROFILE,
                                       "-o", str(tmp_path / "x.json"), *args],
                                prog_name="simlb")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]
    assert not (tmp_path / "x.json").exists()


@pytest.mark.shared
@pytest.mark.parametrize("cell, e2e_max, ttft_max", [
    ("sweep_rate/agg_2rps/vanilla", 4.0, 8.0),
    ("sweep_rate/agg_6rps/vanilla", 6.0, 8.0),
    ("w5_sweep/agg12", 6.0, 10.0),
    ("sweep_tenants/4T_agg_8rps/vanilla", 6.0, 10.0),
])
def test_shipped_profile_on_held_out_measured_runs(shared_dir: Path, cell: str,
                                                   e2e_max: float, ttft_max: float) -> None:
    """The shipped profile (vLLM v1 host defaults fitted on the other half of the runs)
    against measured vLLM 0.23 runs that were held out of that fit: |error| of mean E2E and
    mean TTFT in %, and the same overload verdict (benchmarks/fidelity.py reports all)."""
    path = shared_dir / "ground_truth" / "residency_vllm" / "results" / cell
    run = read_run("tracev2", path)
    score = score_run(run, replay(run, PROFILE))
    assert abs(score.error["e2e"]["mean"]) < e2e_max
    assert abs(score.error["ttft"]["mean"]) < ttft_max
    assert not score.overload_disagree
    assert np.isfinite(score.error["itl"]["mean"])


@pytest.mark.shared
def test_closed_loop_cell_is_replayed_closed_loop(shared_dir: Path) -> None:
    """A client-capped saturated cell: replayed from the intended schedule with the client's
    cap, simlb agrees that the server was saturated and gets mean E2E within 10 %."""
    path = shared_dir / "ground_truth" / "residency_vllm" / "results" / "w7_sweep" / "agg12"
    run = read_run("tracev2", path)
    pred = replay(run, PROFILE)
    assert any("closed loop" in note for note in pred.notes)
    score = score_run(run, pred)
    assert score.overload_measured.overloaded and score.overload_predicted.overloaded
    assert abs(score.error["e2e"]["mean"]) < 10.0
