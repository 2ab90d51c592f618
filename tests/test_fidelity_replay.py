"""Teacher-forced replay (``sim.fidelity.replay``) and the ``simlb fidelity`` command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from sim.cli import main
from sim.errors import ScenarioError
from sim.fidelity.evaluate import evaluate_one
from sim.fidelity.readers import read_run
from sim.fidelity.replay import replay, scenario_tree, workload_of
from sim.outcome import COMPLETED, REJECTED, UNFINISHED

from conftest import REPO, expect_error

FIX = Path(__file__).parent / "fixtures" / "fidelity"
TRACEV2 = FIX / "tracev2" / "results" / "rate2"
PROFILE = "h100/llama-3-8b"


def fidelity(*args: object) -> Result:
    return CliRunner().invoke(main, ["fidelity", *map(str, args)], prog_name="simlb")


def qwen_profile() -> str:
    """The Qwen3-14B H100 profile once it is shipped, else the Llama-3-8B stand-in."""
    found = sorted((REPO / "profiles" / "h100").glob("qwen3-14b*.json"))
    return f"h100/{found[0].stem}" if found else PROFILE


def test_scenario_tree_carries_the_engine() -> None:
    run = read_run("tracev2", TRACEV2)
    node = scenario_tree(run, PROFILE)["cluster"]["node_groups"][0]
    assert node["kv_capacity_tokens"] == 400 * 16
    assert node["batcher"] == {"name": "continuous",
                               "params": {"max_num_seqs": 256, "max_num_batched_tokens": 512,
                                          "chunked_prefill": True}}
    assert node["max_model_len_tokens"] == 4096 and node["prefix_caching"] is True


def test_workload_is_teacher_forced() -> None:
    run = read_run("tracev2", TRACEV2)
    w = workload_of(run)
    ok = run.ok
    assert len(w) == run.n_ok
    assert np.allclose(w.arrival_s, run.arrival_s[ok] - run.arrival_s[ok][0])
    assert np.array_equal(w.prompt_tokens, run.prompt_tokens[ok])
    assert np.array_equal(w.output_tokens, run.output_tokens[ok])
    assert np.array_equal(w.max_output_tokens, run.output_tokens[ok])
    assert np.all(w.seg_key == -1)


def test_replay_accounts_for_every_request() -> None:
    run = read_run("tracev2", TRACEV2)
    pred = replay(run, PROFILE)
    assert pred.status.shape == (len(run),)
    assert np.all(pred.status[~run.ok] == -1)  # failed rows: not replayed
    replayed = pred.status[run.ok]
    assert np.isin(replayed, [COMPLETED, UNFINISHED, REJECTED]).all()
    assert (replayed == COMPLETED).sum() == run.n_ok  # light load: all complete
    done = pred.completed
    assert np.all(pred.ttft_s[done] > 0) and np.all(pred.e2e_s[done] > pred.ttft_s[done])
    assert np.isnan(pred.e2e_s[~done]).all()


def test_overrides_reach_the_cost_model() -> None:
    run = read_run("tracev2", TRACEV2)
    base = replay(run, PROFILE)
    slow = replay(run, PROFILE, ["cost_model.params.cpu_overhead_ms=20"])
    assert np.nanmean(slow.e2e_s) > np.nanmean(base.e2e_s) + 15 * 0.020
    assert slow.scenario["cluster"]["node_groups"][0]["cost_model"]["params"][
        "cpu_overhead_ms"] == 20
    few = replay(run, PROFILE, ["kv_capacity_tokens=null", "duration_s=1000"])
    assert "kv_capacity_tokens" not in few.scenario["cluster"]["node_groups"][0]
    with pytest.raises(ScenarioError, match="no_such_param"):
        replay(run, PROFILE, ["cost_model.params.no_such_param=1"])


@pytest.mark.slow
def test_cli_table_json_and_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = fidelity(FIX, "--profile", PROFILE, "--out", out, "--report")
    assert result.exit_code == 0, result.output
    assert "rate2" in result.output and "median |err|" in result.output
    doc = json.loads((out / "fidelity.json").read_text())
    assert doc["schema"] == "simlb.fidelity/v1" and len(doc["runs"]) == 2
    assert doc["summary"]["runs"] == 2
    page = (out / "fidelity.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "GPU/tiny" in page
    result = fidelity(TRACEV2, "--profile", PROFILE, "--json")
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)["runs"][0]
    assert run["rows"] == 40 and run["failed"] == 1 and run["scored"] == 39
    assert run["peer"]["tenants"].keys() == {"tenantA", "tenantB"}
    for metric in ("ttft", "e2e", "itl"):
        assert all(v is not None for v in run["error"][metric].values())


def test_cli_bad_override_and_profile() -> None:
    expect_error(fidelity(TRACEV2, "--profile", PROFILE, "--set",
                          "batcher.params.max_num_seqs=0"), "max_num_seqs")
    expect_error(fidelity(TRACEV2, "--profile", "h100/no-such-model"), "no-such-model")
    expect_error(fidelity(TRACEV2, "--profile", PROFILE, "--engine", "gpus=2"), "gpus")


def test_residency_run_loose_bounds(shared_dir: Path) -> None:
    path = shared_dir / "ground_truth" / "residency_vllm" / "results" / "sweep_rate" / \
        "agg_2rps" / "vanilla"
    if not path.is_dir():
        pytest.skip(f"{path} not found")
    ev = evaluate_one("tracev2", path, qwen_profile(), max_requests=500)
    s = ev.score
    assert s.rows == 500 and s.scored == 500
    for metric in ("ttft", "e2e", "itl"):
        assert all(math.isfinite(v) for v in s.error[metric].values())
    assert abs(s.error["e2e"]["mean"]) < 50  # loose until the profile is calibrated
    assert not s.overload_measured.overloaded and not s.overload_predicted.overloaded
