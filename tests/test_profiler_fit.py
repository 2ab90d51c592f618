"""The profiler's torch-free parts: shapes, grid, fit on synthetic samples, check, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sim.errors import InputError, ProfileError
from sim.model.profile import load_profile, parse_profile, vllm_kv_blocks
from sim.profile import check, fit, grid
from sim.profile.bench import Timing
from sim.profile.shapes import BUILTIN, resolve_shape, shape_from_config

REPO = Path(__file__).resolve().parents[1]
CALIBRATION = REPO.parent / "shared" / "calibration"

#: the "true" step model the synthetic samples come from (ms)
TRUE_DEC = (0.5, 0.02, 3e-4)
TRUE_PF = (0.7, 0.004, 6e-5)


def true_ms(s: grid.Shape) -> float:
    """A GPU-like step: flat-then-linear lin, linear head, the attention terms above."""
    def lin(n: int) -> float:
        return 5.0 + 0.02 * max(0, n - 64)

    if s.set == "lin":
        return lin(s.P)
    head = 0.3 + 0.002 * s.S
    if s.set == "head":
        return head
    t = lin(s.P + s.B) + head
    if s.P:
        t += TRUE_PF[0] + TRUE_PF[1] * s.P + TRUE_PF[2] * (s.P * s.K + s.P * (s.P + 1) / 2)
    if s.B:
        t += TRUE_DEC[0] + TRUE_DEC[1] * s.B + TRUE_DEC[2] * s.B * (s.C + 1)
    return t


def synthetic(noise: float = 0.0, seed: int = 0) -> fit.Measurement:
    """A measurement of the ``ci`` grid whose times follow ``true_ms`` (times lognormal noise)."""
    rng = np.random.default_rng(seed)
    shapes = grid.plan(grid.GRIDS["ci"], 10**6, 4096, rng)
    results = []
    for s in shapes:
        t = true_ms(s) * float(np.exp(rng.normal(0.0, noise))) if noise else true_ms(s)
        results.append((s, Timing(t, t, t, t, 5, "graph")))
    shape = BUILTIN["tiny"]
    kv = {"dtype": "bfloat16", "kv_bytes_per_token_per_gpu": shape.kv_bytes_per_token(2),
          "block_size": 16, "gpu_memory_utilization": 0.9, "total_bytes_per_gpu": 10**9,
          "weights_bytes_per_gpu": 10**7, "peak_activation_bytes_per_gpu": 10**6,
          "non_torch_bytes_per_gpu": 0, "method": "synthetic"}
    kv["capacity_tokens"] = 16 * vllm_kv_blocks(10**9, 0.9, 11 * 10**6,
                                                 shape.kv_bytes_per_token(2), 16)
    model = {k: v for k, v in shape.as_dict().items() if k in (
        "name", "num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
        "intermediate_size", "vocab_size", "params", "max_position")}
    return fit.Measurement(
        name="test/tiny", created="2026-11-27", tool="tests",
        hardware={"gpu": "Test GPU", "tensor_parallel": 1, "memory_bytes_per_gpu": 10**9,
                  "peak_bf16_flops_per_gpu": 1e12, "hbm_bandwidth_bytes_per_s": 1e9,
                  "effective_bandwidth_bytes_per_s": 1e9, "effective_gemm_flops_per_gpu": 1e12,
                  "notes": ""},
        model={**model, "dtype": "bfloat16"}, kv_cache=kv, correctness={},
        metadata={"device": {"kind": "cuda"}, "timing": {"method": "synthetic"}},
        samples=fit.samples_block(results, "median"))


def test_builtin_shapes_match_published_parameter_counts() -> None:
    """profiling.md §3.2: 8.03B, 6.74B, 7.62B, 7.25B; tiny is 5.1M."""
    got = {k: round(v.params / 1e9, 2) for k, v in BUILTIN.items()}
    assert got == {"llama-3-8b": 8.03, "llama-2-7b": 6.74, "qwen2.5-7b": 7.62,
                   "mistral-7b": 7.25, "tiny": 0.01}
    assert BUILTIN["llama-3-8b"].kv_bytes_per_token(2) == 128 * 1024
    assert BUILTIN["llama-2-7b"].kv_bytes_per_token(2) == 512 * 1024


def test_config_json_and_aliases(tmp_path: Path) -> None:
    cfg = {"hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28,
           "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064,
           "model_type": "qwen2", "rope_theta": 1e6, "max_position_embeddings": 32768,
           "_name_or_path": "Qwen/Qwen2.5-7B"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    shape = resolve_shape(str(path))
    assert shape.name == "qwen2.5-7b" and shape.qkv_bias and shape.head_dim == 128
    assert shape.params == BUILTIN["qwen2.5-7b"].params
    assert resolve_shape("Llama3-8B") is BUILTIN["llama-3-8b"]


@pytest.mark.parametrize(("ref", "message"), [
    ("gpt-17", "unknown model"),
    ("missing/config.json", "cannot read the model config"),
])
def test_bad_model_refs(ref: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        resolve_shape(ref)


def test_config_missing_field_is_named() -> None:
    with pytest.raises(InputError, match="num_attention_heads: missing required field"):
        shape_from_config({"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 8,
                           "vocab_size": 10}, "x", "cfg.json")


def test_grid_respects_pool_context_and_shuffles() -> None:
    spec = grid.GRIDS["full"]
    shapes = grid.plan(spec, 400_000, 8192, np.random.default_rng(0))
    steps = [s for s in shapes if s.set not in ("lin", "head")]
    assert all(s.kv_tokens <= 400_000 and s.K + s.P <= 8192 and s.C < 8192 for s in steps)
    held = [s for s in shapes if s.set == "heldout"]
    assert len(held) == 2 * spec.heldout
    assert {s.rep for s in held} == {0, 1}
    fitted = grid.grid_shapes(spec, 400_000, 8192)
    assert [s for s in shapes if s.set != "heldout"] != fitted  # shuffled
    assert sorted(map(repr, shapes)) == sorted(map(repr, fitted + held))
    assert len(fitted) + len(held) < 200  # about 155 shapes (profiling.md §5.2)


def test_fit_recovers_the_true_model() -> None:
    data = fit.build_profile(synthetic())
    profile = parse_profile(data)
    sm = data["step_model"]
    assert np.allclose(sm["attn_decode"]["coef"], TRUE_DEC, rtol=2e-3, atol=1e-6)
    assert np.allclose(sm["attn_prefill"]["coef"], TRUE_PF, rtol=2e-3, atol=1e-6)
    assert sm["mixed_factor"] == 1.0
    q = data["fit_quality"]
    assert q["heldout"]["mape_pct"] < 0.5 and q["repeatability_pct"] == 0
    assert q["lin"]["loo_mape_pct"] < 5
    assert profile.step_model.lin.at(1) == pytest.approx(5.0)


def test_fit_with_noise_is_monotone_and_non_negative() -> None:
    data = fit.build_profile(synthetic(noise=0.1, seed=3))
    parse_profile(data)  # monotone tables, non-negative numbers, KV rule
    sm = data["step_model"]
    assert min(sm["attn_decode"]["coef"] + sm["attn_prefill"]["coef"]) >= 0
    assert np.all(np.diff(sm["lin"]["y_ms"]) >= 0) and np.all(np.diff(sm["head"]["y_ms"]) >= 0)
    assert data["fit_quality"]["repeatability_pct"] > 1
    assert "global_linear4" in data["fit_quality"]["baselines"]


def test_refit_from_samples_file_is_identical(tmp_path: Path) -> None:
    m = synthetic(noise=0.05)
    first = fit.build_profile(m)
    again = fit.build_profile(fit.measurement_from_json(json.loads(json.dumps(m.to_json())),
                                                        "s"))
    from_profile = fit.build_profile(fit.measurement_from_json(json.loads(json.dumps(first)),
                                                               "p"))
    assert again == first == from_profile


def test_refit_refuses_files_without_samples() -> None:
    data = json.loads((REPO / "profiles" / "h100" / "llama-2-7b.json").read_text())
    with pytest.raises(ProfileError, match="no raw samples"):
        fit.measurement_from_json(data, "h100")
    with pytest.raises(ProfileError, match="expected a profile"):
        fit.measurement_from_json({"schema": "x"}, "x")


def test_check_heldout_on_synthetic() -> None:
    data = fit.build_profile(synthetic(noise=0.05))
    report = check.check(data, parse_profile(data), Path("/nonexistent"))
    assert report["heldout"]["heldout"]["n"] == grid.GRIDS["ci"].heldout
    assert "skipped" in report["calibration"]
    assert any("held-out: n=" in line for line in report["lines"])


@pytest.mark.skipif(not (CALIBRATION / "vidur").is_dir(), reason="no ../shared/calibration")
def test_check_shipped_profile_against_calibration(monkeypatch: pytest.MonkeyPatch) -> None:
    """The derived H100 Llama-2-7B profile comes from the same Vidur data: close to it."""
    monkeypatch.setenv("SIMLB_PROFILES_DIR", str(REPO / "profiles"))
    prof = load_profile("h100/llama-2-7b")
    data = json.loads(Path(str(prof.path)).read_text())
    report = check.check(data, prof, CALIBRATION)
    assert report["heldout"] is None
    assert report["calibration"]["mape_pct"] < 3
    assert {a["quantity"] for a in report["anchors"]} >= {"lin_ms@1", "kv_capacity_tokens"}
    skipped = check.calibration_check(load_profile("h100/llama-3-8b"), CALIBRATION)
    assert "no published h100 measurements" in skipped["skipped"]


def test_gpu_keys() -> None:
    assert check.gpu_key("NVIDIA H100 80GB HBM3") == "h100"
    assert check.gpu_key("NVIDIA A100-SXM4-80GB") == "a100"
    assert check.gpu_key("CPU AMD EPYC") == "cpu"
