"""``simlb profile derive`` and the shipped ``*-aic`` profiles (sim.calibration.aic).

The derivation tests need the optional ``aiconfigurator-core`` package (the ``calibrate``
extra) and skip without it. It is located with ``importlib.util.find_spec``, never imported:
the derivation reads its data files only. Configs are written into tmp_path from the published
shapes, so only the regeneration test reads the shared ``model_configs`` folder.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sim.errors import InputError
from sim.model.profile import load_profile, parse_profile

REPO = Path(__file__).resolve().parents[1]
HAVE_AIC = importlib.util.find_spec("aiconfigurator_core") is not None
needs_aic = pytest.mark.skipif(not HAVE_AIC, reason="aiconfigurator-core not installed "
                                                    "(pip install -e '.[calibrate]')")
#: vLLM 0.23, H100 80GB HBM3, Qwen3-14B, gpu_memory_utilization 0.9, block 16 (measured)
MEASURED_QWEN3_14B_BLOCKS = 18038

QWEN3_14B = {"architectures": ["Qwen3ForCausalLM"], "hidden_size": 5120,
             "num_hidden_layers": 40, "num_attention_heads": 40, "num_key_value_heads": 8,
             "head_dim": 128, "intermediate_size": 17408, "vocab_size": 151936,
             "max_position_embeddings": 40960, "tie_word_embeddings": False}


def _config(tmp_path: Path, cfg: dict[str, Any], name: str = "config.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(cfg))
    return str(path)


def _derive(model: str, gpu: str = "h100_sxm", tp: int = 1, **kw: Any) -> dict[str, Any]:
    from sim.calibration.aic.build import Options, derive

    return derive(Options(model=model, gpu=gpu, tp=tp, **kw))


def _lin(data: dict[str, Any], n: int) -> float:
    return parse_profile(data).step_model.lin.at(n)


# --- the shipped files (no aiconfigurator-core needed) --------------------------------------

def test_shipped_qwen3_14b_kv_capacity_is_close_to_the_measured_run() -> None:
    """18,038 blocks of 16 were measured (vLLM 0.23, util 0.9); the analytic rule is within 3%."""
    prof = load_profile(REPO / "profiles/h100/qwen3-14b-aic.json")
    blocks = prof.kv_capacity_blocks(0.9, 16)
    assert abs(blocks / MEASURED_QWEN3_14B_BLOCKS - 1) < 0.03
    assert prof.checks["kv_measured"]["got_blocks"] == blocks


@pytest.mark.parametrize("path", sorted((REPO / "profiles").rglob("*-aic.json")),
                         ids=lambda p: p.stem)
def test_shipped_aic_profiles_are_derived_and_self_contained(path: Path) -> None:
    """Each *-aic profile names aiconfigurator-core and its engine, and has no local paths."""
    prof = load_profile(path)
    assert prof.source.kind == "derived" and "aiconfigurator-core" in prof.source.tool
    assert "vllm==" in prof.source.tool
    assert prof.step_model.cpu_overhead_ms == 0.0
    text = path.read_text()
    assert "/work/" not in text and "site-packages" not in text
    lin = prof.step_model.lin
    assert lin.at(1) < lin.at(1024) < lin.at(8192)


# --- derivation ------------------------------------------------------------------------------

@needs_aic
def test_qwen3_14b_h100_is_plausible_and_kv_matches(tmp_path: Path) -> None:
    """Decode at B=1 streams ~28 GB of weights: 8-14 ms; lin is monotone; KV within 3%."""
    data = _derive(_config(tmp_path, QWEN3_14B), model_name="qwen3-14b")
    prof = parse_profile(data)
    y = prof.step_model.lin.y_ms
    assert list(y) == sorted(y)
    assert 8.0 < prof.step_model.lin.at(1) < 14.0
    assert prof.step_model.lin.at(8192) > 20 * prof.step_model.lin.at(1)
    assert abs(prof.kv_capacity_blocks(0.9, 16) / MEASURED_QWEN3_14B_BLOCKS - 1) < 0.03
    assert data["checks"]["kv_measured"]["expected_blocks"] == MEASURED_QWEN3_14B_BLOCKS
    assert data["fit_quality"]["attn_decode"]["mape_pct"] < 15
    assert data["metadata"]["engine"] == "vllm==0.24.0"


@needs_aic
def test_derivation_is_deterministic(tmp_path: Path) -> None:
    cfg = _config(tmp_path, QWEN3_14B)
    assert _derive(cfg, gpu="a100_sxm") == _derive(cfg, gpu="a100_sxm")


@needs_aic
def test_tensor_parallel_halves_the_per_gpu_work(tmp_path: Path) -> None:
    """TP2 lin < TP1 lin at every N; TP2 has a comm table, TP1 none; TP2 holds more KV."""
    cfg = _config(tmp_path, QWEN3_14B)
    one, two = _derive(cfg), _derive(cfg, tp=2)
    assert one["step_model"]["comm"] is None and two["step_model"]["comm"] is not None
    for n in (1, 64, 256, 1024, 8192):
        assert _lin(two, n) < _lin(one, n)
        assert _lin(two, n) > 0.4 * _lin(one, n)
    assert two["kv_cache"]["capacity_tokens"] > 2 * one["kv_cache"]["capacity_tokens"]


@needs_aic
def test_moe_costs_follow_the_active_experts(tmp_path: Path) -> None:
    """Qwen3-30B-A3B: one token reads 8 of 128 experts, so lin(1) is far below streaming all
    61 GB of weights; 256 tokens touch nearly every expert, so lin(256) is several times lin(1).
    Its weights (30B) count fully against KV memory."""
    cfg = {"architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 2048,
           "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4,
           "head_dim": 128, "intermediate_size": 6144, "moe_intermediate_size": 768,
           "num_experts": 128, "num_experts_per_tok": 8, "vocab_size": 151936,
           "max_position_embeddings": 40960, "tie_word_embeddings": False,
           "mlp_only_layers": [], "decoder_sparse_step": 1}
    data = _derive(_config(tmp_path, cfg))
    params = data["model"]["params"]
    assert 30.0e9 < params < 31.0e9
    assert data["metadata"]["active_params"] < 3.5e9
    all_weights_ms = params * 2 / data["hardware"]["effective_bandwidth_bytes_per_s"] * 1e3
    assert _lin(data, 1) < 0.35 * all_weights_ms
    assert _lin(data, 256) > 3 * _lin(data, 1)
    assert data["fit_quality"]["lookups"]["n_extrapolated"] == 0


@needs_aic
def test_unmeasured_shapes_are_scaled_and_counted(tmp_path: Path) -> None:
    """An MoE shape not in the table and an MHA decode layout (32 KV heads) are scaled from the
    nearest measured ones, and the profile counts the extrapolations."""
    cfg = {"architectures": ["MixtralForCausalLM"], "hidden_size": 4096,
           "num_hidden_layers": 4, "num_attention_heads": 32, "num_key_value_heads": 32,
           "intermediate_size": 12000, "num_local_experts": 8, "num_experts_per_tok": 2,
           "vocab_size": 32000, "max_position_embeddings": 4096}
    data = _derive(_config(tmp_path, cfg))
    extra = data["fit_quality"]["lookups"]["extrapolated"]
    assert {"moe", "attn_decode"} <= set(extra)
    assert data["checks"]["extrapolated_lookups"] == len(extra)


@needs_aic
@pytest.mark.parametrize(("kw", "needle"), [
    ({"gpu": "tpu_v5"}, "unknown GPU 'tpu_v5'"),
    ({"engine": "vllm==0.1.0"}, "available: vllm==0.24.0"),
    ({"engine": "sglang==0.5.14"}, "not available for h100_sxm"),
    ({"dtype": "float8"}, "dtype 'float8'"),
    ({"tp": 3}, "--tp 3 must divide"),
])
def test_bad_options_are_one_line_input_errors(tmp_path: Path, kw: dict, needle: str) -> None:
    with pytest.raises(InputError) as err:
        _derive(_config(tmp_path, QWEN3_14B), **kw)
    assert needle in str(err.value) and "\n" not in str(err.value)


@needs_aic
@pytest.mark.parametrize(("change", "needle"), [
    ({"architectures": ["DeepseekV3ForCausalLM"]}, "architecture 'DeepseekV3ForCausalLM'"),
    ({"vocab_size": None}, "missing field 'vocab_size'"),
])
def test_bad_configs_are_one_line_input_errors(tmp_path: Path, change: dict,
                                               needle: str) -> None:
    cfg = {k: v for k, v in (QWEN3_14B | change).items() if v is not None}
    with pytest.raises(InputError) as err:
        _derive(_config(tmp_path, cfg))
    assert needle in str(err.value) and "\n" not in str(err.value)


@needs_aic
def test_unknown_model_name_lists_the_known_ones() -> None:
    with pytest.raises(InputError, match=r"unknown model 'acme/Nope'.*Qwen/Qwen3-32B"):
        _derive("acme/Nope")


@needs_aic
def test_cli_writes_a_profile_and_refuses_bad_input(tmp_path: Path) -> None:
    from sim.cli import main

    cfg, out = _config(tmp_path, QWEN3_14B), tmp_path / "q.json"
    ok = CliRunner().invoke(main, ["profile", "derive", "--model", cfg, "--gpu", "h100_sxm",
                                   "--out", str(out)], prog_name="simlb")
    assert ok.exit_code == 0, ok.output
    assert load_profile(out).name == "h100/config-aic"
    bad = CliRunner().invoke(main, ["profile", "derive", "--model", cfg, "--gpu", "h100_sxm",
                                    "--engine", "vllm==9.9", "--out", str(out)],
                             prog_name="simlb")
    assert bad.exit_code == 2
    lines = bad.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("simlb: error: engine 'vllm==9.9'")


@pytest.mark.slow
@needs_aic
def test_regenerating_gives_the_shipped_files(tmp_path: Path, shared_dir: Path) -> None:
    """``python -m sim.calibration.aic --all`` reproduces every shipped *-aic file byte for
    byte (needs the shared model_configs for Llama-2-7B, CodeLlama-34B and Qwen3-14B)."""
    from sim.calibration.aic.ship import main

    assert (shared_dir / "model_configs").is_dir()
    assert main(["--all", "--out", str(tmp_path)]) == 0
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.json"))
    shipped = sorted(p.relative_to(REPO / "profiles")
                     for p in (REPO / "profiles").rglob("*-aic.json"))
    assert made == shipped
    for rel in made:
        assert (tmp_path / rel).read_bytes() == (REPO / "profiles" / rel).read_bytes(), rel
