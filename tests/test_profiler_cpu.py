"""The CPU path of ``simlb profile`` end to end: tiny model, ci grid (needs torch).

Timing accuracy is never asserted (the CPU noise floor reaches 13%, profiling.md §6.3).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from sim.errors import ProfileError  # noqa: E402
from sim.model.profile import load_profile  # noqa: E402
from sim.profile import fit, model  # noqa: E402
from sim.profile.shapes import BUILTIN  # noqa: E402

from conftest import scenario_dict, write_scenario  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny CPU profile and its samples file, via the issue's spelling of the command."""
    from sim.cli import main

    folder = tmp_path_factory.mktemp("profile")
    out, samples = folder / "tiny.json", folder / "tiny.samples.json"
    result = CliRunner().invoke(main, ["profile", "--model", "tiny", "--device", "cpu", "--out",
                                       str(out), "--samples", str(samples), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "held-out MAPE" in result.output
    return out, samples


def test_tiny_profile_is_valid(tiny: tuple[Path, Path]) -> None:
    profile = load_profile(tiny[0])
    data = json.loads(tiny[0].read_text())
    sm = profile.step_model
    assert profile.source.kind == "measured" and profile.model.name == "tiny"
    assert np.all(np.diff(sm.lin.y_ms) >= 0) and np.all(np.diff(sm.head.y_ms) >= 0)
    assert min(sm.attn_decode.coef + sm.attn_prefill.coef) >= 0
    assert sm.lin.slope_ms >= 0 and sm.head.slope_ms >= 0
    assert profile.kv_cache.capacity_tokens == profile.kv_capacity_tokens()
    assert "ANALYTIC CPU STAND-IN" in profile.kv_cache.method
    meta = data["metadata"]
    for key in ("created_utc", "command", "seed", "grid", "device", "software", "timing"):
        assert key in meta
    assert meta["software"]["torch"] == torch.__version__ and meta["timing"]["statistic"] == "min"
    assert data["samples"]["columns"][:7] == ["set", "P", "K", "B", "C", "S", "rep"]
    q = data["fit_quality"]
    for key in ("grid", "heldout", "lin_loo_mape_pct", "repeatability_pct", "baselines"):
        assert key in q
    assert q["heldout"]["n"] == 8
    assert max(data["checks"]["correctness"]["rel_err_vs_float64"].values()) < 1e-4


def test_cost_model_evaluates_the_fitted_formula(tiny: tuple[Path, Path]) -> None:
    """The simulator's ``step_s`` equals the fit's prediction (the same step model)."""
    from sim.model.cost import ProfileCostModel

    profile = load_profile(tiny[0])
    cm = ProfileCostModel.from_profile(profile)
    sm = json.loads(tiny[0].read_text())["step_model"]
    for p, k, b, c in ((0, 0, 8, 255), (128, 256, 0, 0), (100, 50, 16, 511), (700, 0, 0, 0)):
        pairs = p * k + p * (p + 1) // 2
        want = fit.predict_ms(sm, np.array([p]), np.array([k]), np.array([b]), np.array([c]))[0]
        got = cm.step_s(p, 1 if p else 0, pairs, b, b * (c + 1)) * 1e3
        assert got == pytest.approx(want, rel=1e-9)


def test_simulator_runs_a_scenario_with_it(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    from sim import app

    node = {"count": 2, "kv_capacity_tokens": 20_000,
            "cost_model": {"name": "profile", "params": {"profile": str(tiny[0])}},
            "batcher": {"name": "continuous",
                        "params": {"max_num_seqs": 64, "max_num_batched_tokens": 512}}}
    raw = scenario_dict(cluster={"node_groups": [node]}, duration_s=20.0, warmup_s=2.0)
    resolved = app.load(write_scenario(tmp_path, raw))
    results = app.run_all(resolved, tmp_path / "results")
    requests = results[0].summary["requests"]
    assert requests["completed"] == requests["arrived"] > 50
    assert results[0].summary["latency_s"]["tpot"]["p50"] > 0
    assert (tmp_path / "results" / "test").is_dir()


def test_refit_gives_the_same_profile(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    from sim.profile.cli import profile as group

    first = json.loads(tiny[0].read_text())
    for src in tiny:
        out = tmp_path / f"refit-{src.name}"
        result = CliRunner().invoke(group, ["fit", str(src), "-o", str(out)])
        assert result.exit_code == 0, result.output
        again = json.loads(out.read_text())
        assert again["step_model"] == first["step_model"]
        assert again["fit_quality"] == first["fit_quality"]
        assert again == first


def test_check_runs_on_it(tiny: tuple[Path, Path]) -> None:
    from sim.profile.cli import profile as group

    result = CliRunner().invoke(group, ["check", str(tiny[0])])
    assert result.exit_code == 0, result.output
    assert "held-out: n=8" in result.output
    assert "calibration: skipped" in result.output


def _tiny_model() -> model.Llama:
    return model.build_model(BUILTIN["tiny"], "cpu", torch.float32, 0, 256)


def test_correctness_gate_passes_on_the_real_attention() -> None:
    errs = model.check_correctness(_tiny_model(), 0)
    assert set(errs) == {"prefill", "chunked_prefill", "decode", "layer"}
    assert max(errs.values()) < 1e-5


def _decode_wrong_gqa(q, k, v, cache, ctx):
    cache[0, :, :, ctx].copy_(k)
    cache[1, :, :, ctx].copy_(v)
    rep = q.shape[1] // k.shape[1]
    out = torch.nn.functional.scaled_dot_product_attention(
        q.unsqueeze(2), cache[0].repeat(1, rep, 1, 1), cache[1].repeat(1, rep, 1, 1))
    return out.reshape(q.shape[0], -1)


def _prefill_not_causal(q, k, v, cache, prefix, mode="lower_right"):
    p = q.shape[0]
    if cache is not None:
        cache[0, 0, :, prefix:prefix + p].copy_(k.transpose(0, 1))
        cache[1, 0, :, prefix:prefix + p].copy_(v.transpose(0, 1))
        k, v = cache[0, 0].transpose(0, 1), cache[1, 0].transpose(0, 1)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), enable_gqa=True)
    return out.transpose(0, 1).reshape(p, -1)


@pytest.mark.parametrize(("name", "broken"), [("attend_decode", _decode_wrong_gqa),
                                              ("attend_prefill", _prefill_not_causal)])
def test_correctness_gate_fails_on_broken_attention(monkeypatch: pytest.MonkeyPatch, name: str,
                                                    broken: object) -> None:
    monkeypatch.setattr(model, name, broken)
    with pytest.raises(ProfileError, match="correctness gate failed"):
        model.check_correctness(_tiny_model(), 0)


BLOCKER = """
import importlib.abc, runpy, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"pydantic", "simpy", "rich", "pyarrow", "matplotlib"}:
            raise ImportError("blocked on the GPU image: " + name)
        return None

sys.meta_path.insert(0, Block())
sys.argv = ["python -m sim.profile"] + sys.argv[1:]
runpy.run_module("sim.profile", run_name="__main__", alter_sys=True)
"""


def test_runs_without_pydantic_and_simpy(tmp_path: Path) -> None:
    """``python -m sim.profile run`` (the other spelling) on a GPU-like image."""
    out = tmp_path / "tiny.json"
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(BLOCKER), "run", "--model", "tiny", "--device",
         "cpu", "--out", str(out), "--quiet"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_profile(out).model.name == "tiny"
    check = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(BLOCKER), "check", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert check.returncode == 0, check.stderr[-3000:]


def test_correctness_gate_catches_a_top_left_causal_mask() -> None:
    """``is_causal`` with a cached prefix is top-left aligned outside FlashAttention: wrong."""
    m = _tiny_model()
    m.prefix_mode = "flash_causal"
    with pytest.raises(ProfileError, match="chunked_prefill"):
        model.check_correctness(m, 0)


def test_config_json_with_a_short_context(tmp_path: Path) -> None:
    """A Hugging Face config whose context (256) is shorter than the lin grid (512 tokens)."""
    from sim.profile.cli import profile as group

    cfg = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "intermediate_size": 256, "vocab_size": 1000,
           "max_position_embeddings": 256, "_name_or_path": "test/short-ctx"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "short.json"
    result = CliRunner().invoke(group, ["run", "--model", str(tmp_path / "config.json"),
                                        "--device", "cpu", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    profile = load_profile(out)
    assert profile.model.name == "short-ctx" and profile.model.max_position == 256
    assert profile.step_model.lin.x_max == 512
    rows = json.loads(out.read_text())["samples"]["rows"]
    assert all(r[2] + r[1] <= 256 and r[4] < 256 for r in rows if r[0] != "lin")
