"""Shared fixtures: Hypothesis profiles, scenario builders, the ../shared reference data."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=200,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SIMLB_SHARED", REPO.parent / "shared"))

#: a node that is cheap to simulate: linear costs, ample KV
LINEAR_NODE: dict[str, Any] = {
    "count": 2,
    "cost_model": {"name": "linear", "params": {"step_s": 0.01, "prefill_token_s": 2e-5,
                                                "decode_seq_s": 2e-4, "ctx_token_s": 1e-7}},
    "kv_capacity_tokens": 100_000,
}


def scenario_dict(**changes: Any) -> dict[str, Any]:
    """A small valid scenario tree; keyword arguments replace top-level keys."""
    raw: dict[str, Any] = {
        "schema_version": 1,
        "name": "test",
        "seed": 7,
        "duration_s": 60.0,
        "warmup_s": 5.0,
        "cluster": {"node_groups": [copy.deepcopy(LINEAR_NODE)]},
        "router": {"strategies": [{"name": "round_robin"}], "telemetry_interval_s": 0.1},
        "workload": {
            "arrivals": {"name": "poisson", "params": {"rate_rps": 8.0}},
            "prompt_tokens": {"name": "uniform", "params": {"low_tokens": 50,
                                                            "high_tokens": 400}},
            "output_tokens": {"name": "uniform", "params": {"low_tokens": 5,
                                                            "high_tokens": 120}},
        },
    }
    raw.update(changes)
    return raw


def write_scenario(tmp_path: Path, raw: dict[str, Any], name: str = "s.yaml") -> Path:
    """Write a scenario tree to a YAML file and return its path."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def tiny_profile_data(tensor_parallel: int = 1, kv_bytes_per_token_per_gpu: int = 256,
                      capacity_tokens: int = 2720) -> dict[str, Any]:
    """A small hand-made profile: 2 layers, 4 query / 2 KV heads of 16; lin [1,4,8] ->
    [1,1,2] ms (+0.25/token), head [1,2] -> [0.1,0.2] ms, attention and mixed terms set."""
    ext = {"kind": "linear", "max_factor": 2.0}
    return {
        "schema": "simlb.profile/v1", "name": "test/tiny",
        "source": {"kind": "measured", "method": "hand-made for tests", "data": [],
                   "created": "2026-11-27", "tool": "tests"},
        "hardware": {"gpu": "Test GPU", "tensor_parallel": tensor_parallel,
                     "memory_bytes_per_gpu": 1_000_000, "peak_bf16_flops_per_gpu": 1e12,
                     "hbm_bandwidth_bytes_per_s": 1e9, "effective_bandwidth_bytes_per_s": 8e8,
                     "notes": ""},
        "model": {"name": "tiny", "num_layers": 2, "hidden_size": 64, "num_heads": 4,
                  "num_kv_heads": 2, "head_dim": 16, "intermediate_size": 128,
                  "vocab_size": 1000, "params": 50_000, "dtype": "bfloat16",
                  "max_position": 4096},
        "kv_cache": {"dtype": "bfloat16",
                     "kv_bytes_per_token_per_gpu": kv_bytes_per_token_per_gpu,
                     "block_size": 16, "gpu_memory_utilization": 0.9,
                     "total_bytes_per_gpu": 1_000_000, "weights_bytes_per_gpu": 100_000,
                     "peak_activation_bytes_per_gpu": 50_000, "non_torch_bytes_per_gpu": 50_000,
                     "capacity_tokens": capacity_tokens, "method": "hand-made"},
        "step_model": {
            "units": "ms",
            "lin": {"x_tokens": [1, 4, 8], "y_ms": [1.0, 1.0, 2.0],
                    "extrapolation": {**ext, "slope_ms_per_token": 0.25}},
            "comm": None,
            "head": {"x_seqs": [1, 2], "y_ms": [0.1, 0.2],
                     "extrapolation": {"kind": "linear", "slope_ms_per_seq": 0.1,
                                       "max_factor": 4.0}},
            "attn_decode": {"features": ["const", "batch", "sum_ctx"],
                            "coef": [0.5, 0.01, 0.001]},
            "attn_prefill": {"features": ["per_chunk", "chunk_tokens", "attn_pairs"],
                             "coef": [0.2, 0.002, 0.0001]},
            "mixed_factor": 1.5, "cpu_overhead_ms": 0.3,
        },
        "fit_quality": {}, "checks": {},
    }


def expect_error(result: Any, *needles: str) -> str:
    """Assert a CLI result failed with exit code 2 and one stderr line containing every
    needle (no traceback); return the line."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("simlb: error: ")
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


@pytest.fixture
def shared_dir() -> Path:
    """The ../shared reference data; skips the test when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"reference data not found at {SHARED}")
    return SHARED
