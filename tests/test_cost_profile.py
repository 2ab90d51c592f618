"""The ``profile`` cost model: hand-computed steps, decode fast path, extrapolation, limits."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sim.errors import ProfileError
from sim.model.cost import ProfileCostModel, cost_models
from sim.model.profile import load_profile, shipped_profile_names, write_profile

from conftest import tiny_profile_data

REPO = Path(__file__).resolve().parents[1]
EXT = {"kind": "linear", "max_factor": 2.0}


def tiny_data() -> dict:
    """The shared hand-made profile on two GPUs (tensor parallelism 2)."""
    return tiny_profile_data(tensor_parallel=2, kv_bytes_per_token_per_gpu=128,
                             capacity_tokens=5456)


def _model(tmp_path: Path, data: dict | None = None, **params: object) -> ProfileCostModel:
    path = write_profile(data or tiny_data(), tmp_path / "tiny.json")
    return ProfileCostModel(ProfileCostModel.Params(profile=path.name, **params),
                            base_dir=tmp_path)


@pytest.fixture
def tiny(tmp_path: Path) -> ProfileCostModel:
    return _model(tmp_path)


def test_registered_by_name() -> None:
    """The scenario name 'profile' maps to this class."""
    assert cost_models.get("profile") is ProfileCostModel


def test_mixed_step_by_hand(tiny: ProfileCostModel) -> None:
    """3 prefill tokens (1 chunk, 6 pairs) + 2 decodes of 10 context in all."""
    # lin(5) = 1.25, head(3) = 0.3, prefill 0.2 + 0.006 + 0.0006, decode 0.5 + 0.02 + 0.01
    want_ms = (1.25 + 0.3 + 0.2066 + 0.53) * 1.5 + 0.3
    assert tiny.step_s(3, 1, 6, 2, 10) == pytest.approx(want_ms * 1e-3, rel=1e-12)


def test_prefill_only_step_by_hand(tiny: ProfileCostModel) -> None:
    """One 8-token chunk: lin(8) + head(1) + prefill terms, no mixed factor."""
    want_ms = 2.0 + 0.1 + (0.2 + 0.016 + 0.0036) + 0.3
    assert tiny.step_s(8, 1, 36, 0, 0) == pytest.approx(want_ms * 1e-3, rel=1e-12)


def test_decode_only_step_by_hand(tiny: ProfileCostModel) -> None:
    """Two decodes: lin(2) + head(2) + decode terms, no mixed factor."""
    want_ms = 1.0 + 0.2 + 0.53 + 0.3
    assert tiny.step_s(0, 0, 0, 2, 10) == pytest.approx(want_ms * 1e-3, rel=1e-12)
    assert tiny.step_s(0, 0, 0, 0, 0) == pytest.approx(0.3e-3)  # empty: CPU overhead only


def test_comm_table_adds_to_the_step(tmp_path: Path) -> None:
    """A tensor-parallel all-reduce table adds comm(N) to every step."""
    data = tiny_data()
    data["step_model"]["comm"] = {"x_tokens": [1, 2], "y_ms": [0.5, 0.7],
                                  "extrapolation": {**EXT, "slope_ms_per_token": 0.1}}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cm, without = _model(tmp_path / "a", data), _model(tmp_path / "b")
    assert cm.step_s(0, 0, 0, 2, 10) - without.step_s(0, 0, 0, 2, 10) == pytest.approx(0.7e-3)
    # N = 3 is above the comm grid (2): its own tail, 0.7 + 0.1, times the mixed factor
    assert cm.step_s(2, 1, 3, 1, 5) - without.step_s(2, 1, 3, 1, 5) == pytest.approx(
        0.8e-3 * 1.5)
    assert cm.is_extrapolated(3, 1) and not without.is_extrapolated(3, 1)


def test_overrides_replace_file_values(tmp_path: Path) -> None:
    """cpu_overhead_ms and mixed_factor parameters override the profile's."""
    cm = _model(tmp_path, cpu_overhead_ms=0.0, mixed_factor=1.0)
    assert cm.step_s(3, 1, 6, 2, 10) == pytest.approx((1.25 + 0.3 + 0.2066 + 0.53) * 1e-3)


def test_host_terms_and_gpu_scale_by_hand(tmp_path: Path) -> None:
    """Host time per scheduled sequence adds S * cpu_per_seq_ms; gpu_time_scale multiplies
    the GPU terms only; decode_terms stays exactly what step_s returns."""
    cm = _model(tmp_path, cpu_per_seq_ms=0.05, gpu_time_scale=0.8)
    gpu_ms = (1.25 + 0.3 + 0.2066 + 0.53) * 1.5
    # 1 chunk + 2 decodes = 3 sequences in the step
    assert cm.step_s(3, 1, 6, 2, 10) == pytest.approx(
        (gpu_ms * 0.8 + 0.3 + 3 * 0.05) * 1e-3, rel=1e-12)
    base_s, per_s = cm.decode_terms(2)
    assert base_s + per_s * 10 == pytest.approx(cm.step_s(0, 0, 0, 2, 10), rel=1e-12)
    assert base_s + per_s * 10 == pytest.approx(((1.0 + 0.2 + 0.53) * 0.8 + 0.3 + 0.1) * 1e-3)


def test_host_terms_from_the_profile_file(tmp_path: Path) -> None:
    """The optional step_model fields are read; a scale outside [0.5, 2] is refused."""
    data = tiny_data()
    data["step_model"].update(cpu_per_seq_ms=0.05, gpu_time_scale=1.25)
    cm = _model(tmp_path, data)
    assert cm.step_s(0, 0, 0, 2, 10) == pytest.approx(
        ((1.0 + 0.2 + 0.53) * 1.25 + 0.3 + 0.1) * 1e-3)
    data["step_model"]["gpu_time_scale"] = 3.0
    with pytest.raises(ProfileError, match="gpu_time_scale"):
        write_profile(data, tmp_path / "bad.json")


def test_params_are_validated() -> None:
    """Negative overhead, a zero mixed factor and unknown keys are rejected."""
    for bad in ({"cpu_overhead_ms": -1}, {"mixed_factor": 0}, {"typo": 1},
                {"cpu_per_seq_ms": -0.1}, {"gpu_time_scale": 0.1}):
        with pytest.raises(ValidationError):
            ProfileCostModel.Params(profile="h100/llama-3-8b", **bad)


def test_linear_tail_and_is_extrapolated(tiny: ProfileCostModel) -> None:
    """Above the grid the curves continue with their slopes; the step is flagged."""
    # prefill of 12 tokens: lin(12) = 2 + 4 * 0.25 = 3.0, head(1) = 0.1
    want_ms = 3.0 + 0.1 + (0.2 + 0.024 + 0.0001 * 78) + 0.3
    assert tiny.step_s(12, 1, 78, 0, 0) == pytest.approx(want_ms * 1e-3, rel=1e-12)
    # 5 decodes: lin(5) = 1.25, head(5) = 0.2 + 3 * 0.1
    base_s, per_s = tiny.decode_terms(5)
    assert base_s == pytest.approx((1.25 + 0.5 + 0.5 + 0.05 + 0.3) * 1e-3)
    assert per_s == pytest.approx(1e-6)
    assert tiny.is_extrapolated(9, 1) and tiny.is_extrapolated(8, 3)
    assert not tiny.is_extrapolated(8, 2)


def test_check_limits_refuses_beyond_max_factor(tiny: ProfileCostModel) -> None:
    """Limits up to max_factor x the grid pass; beyond, a one-line ProfileError."""
    tiny.check_limits(16, 8)
    with pytest.raises(ProfileError, match="re-profile with a larger grid") as info:
        tiny.check_limits(17, 2)
    assert info.value.field == "step_model.lin"
    assert info.value.source.endswith("tiny.json")
    assert "\n" not in str(info.value)
    with pytest.raises(ProfileError) as info:
        tiny.check_limits(16, 9)
    assert info.value.field == "step_model.head"


def test_flops_peak_and_capacity(tiny: ProfileCostModel) -> None:
    """FLOPs 2*params*N + 4*L*Hq*D*(pairs + ctx); peak over both GPUs; KV by vLLM's rule."""
    assert tiny.flops(10, 6, 4) == 2 * 50_000 * 10 + 4 * 2 * 4 * 16 * 10
    assert tiny.peak_flops == 2e12
    assert tiny.kv_capacity_tokens(None, 16) == 5456  # floor(700000 / 2048) = 341 blocks
    assert tiny.kv_capacity_tokens(0.5, 16) == 146 * 16
    assert tiny.max_model_len == 4096
    assert tiny.description.startswith("test/tiny (measured")


@settings(max_examples=300, deadline=None)
@given(b=st.integers(0, 40), ctx=st.integers(0, 10**6))
def test_decode_terms_bit_identical_to_step(b: int, ctx: int) -> None:
    """A pure-decode step is exactly base_s + per_ctx_s * sum_ctx, in and beyond the grid."""
    cm = _shipped("h100/llama-3-8b")
    base_s, per_s = cm.decode_terms(b * 200)
    assert cm.step_s(0, 0, 0, b * 200, ctx) == base_s + per_s * ctx
    base_s, per_s = cm.decode_terms(b)
    assert cm.step_s(0, 0, 0, b, ctx) == base_s + per_s * ctx
    assert isinstance(base_s, float) and isinstance(per_s, float)


_CACHE: dict[str, ProfileCostModel] = {}


def _shipped(name: str) -> ProfileCostModel:
    if name not in _CACHE:
        _CACHE[name] = ProfileCostModel.from_profile(load_profile(REPO / "profiles" / name))
    return _CACHE[name]


@pytest.mark.parametrize("name", shipped_profile_names(REPO / "profiles"))
def test_dense_lookup_matches_the_tables(name: str) -> None:
    """The O(1) dense lists agree with direct table evaluation at every N and beyond."""
    cm = _shipped(name)
    sm = cm.profile.step_model
    grid = sm.lin.x_max
    for n in (*range(1, 300), *range(300, 4 * grid, 97)):
        want_ms = sm.lin.at(n) + (sm.comm.at(n) if sm.comm else 0.0) + sm.head.at(1)
        want_ms += sum(c * f for c, f in zip(sm.attn_prefill.coef, (1, n, n * (n + 1) // 2),
                                              strict=True))
        # host time of the one-sequence step on top of the (scaled) GPU terms
        want_ms = want_ms * sm.gpu_time_scale + sm.cpu_overhead_ms + sm.cpu_per_seq_ms
        got_s = cm.step_s(n, 1, n * (n + 1) // 2, 0, 0)
        assert got_s == pytest.approx(want_ms * 1e-3, rel=1e-9), n
    cm.check_limits(4 * grid, 256)


def test_shipped_headline_profile_is_physically_plausible() -> None:
    """H100 Llama-3-8B: a 64 x 1024 decode step costs 8-13 ms, a 2048-token prefill 40-60 ms."""
    cm = _shipped("h100/llama-3-8b")
    assert 8e-3 < cm.step_s(0, 0, 0, 64, 64 * 1024) < 13e-3
    assert 40e-3 < cm.step_s(2048, 1, 2048 * 2049 // 2, 0, 0) < 60e-3
    assert cm.is_extrapolated(8192, 1) and not cm.is_extrapolated(4096, 256)
    with pytest.raises(ProfileError, match=r"llama-3-8b\.json"):
        cm.check_limits(32768, 256)
