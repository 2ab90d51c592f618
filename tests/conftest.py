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


@pytest.fixture
def shared_dir() -> Path:
    """The ../shared reference data; skips the test when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"reference data not found at {SHARED}")
    return SHARED
