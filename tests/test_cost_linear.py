"""The ``linear`` test-double cost model."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from sim.model.cost import LinearCostModel, cost_models


def _model(**params: float) -> LinearCostModel:
    return LinearCostModel(LinearCostModel.Params(**params))


def test_registered_by_name() -> None:
    """The scenario name 'linear' maps to this class."""
    assert cost_models.get("linear") is LinearCostModel
    assert {"linear", "profile"} <= set(cost_models.names())


def test_step_formula() -> None:
    """step_s + prefill_token_s*P + decode_seq_s*B + ctx_token_s*ctx."""
    cm = _model(step_s=0.01, prefill_token_s=1e-4, decode_seq_s=1e-3, ctx_token_s=1e-6)
    assert cm.step_s(100, 2, 5000, 4, 1000) == pytest.approx(0.01 + 0.01 + 0.004 + 0.001)
    assert cm.step_s(0, 0, 0, 4, 1000) == pytest.approx(0.01 + 0.004 + 0.001)


def test_constant_step_for_queueing_validations() -> None:
    """With only step_s the cost is the same for every step (M/D/1-style service)."""
    cm = _model(step_s=0.5)
    assert {cm.step_s(p, 1, 0, b, c) for p, b, c in ((1, 0, 0), (900, 3, 7000))} == {0.5}


@given(b=st.integers(0, 10_000), ctx=st.integers(0, 10**7))
def test_decode_terms_bit_identical(b: int, ctx: int) -> None:
    """A pure-decode step equals base_s + per_ctx_s * sum_ctx exactly."""
    cm = _model(step_s=0.013, decode_seq_s=3.3e-5, ctx_token_s=7.1e-8)
    base_s, per_s = cm.decode_terms(b)
    assert cm.step_s(0, 0, 0, b, ctx) == base_s + per_s * ctx


def test_no_grid_no_capacity_and_token_flops() -> None:
    """No extrapolation, no limits, no KV capacity; FLOPs count tokens for MFU."""
    cm = _model(step_s=0.01, peak_flops=5000.0)
    assert not cm.is_extrapolated(10**9, 10**6)
    cm.check_limits(10**9, 10**6)
    assert cm.kv_capacity_tokens(0.9, 16) is None
    assert cm.max_model_len is None
    assert cm.flops(128, 99, 99) == 128.0
    assert cm.peak_flops == 5000.0
    assert cm.description.startswith("linear(step_s=0.01")


@pytest.mark.parametrize("bad", [{"step_s": -1.0}, {"step_s": float("nan")},
                                 {"step_s": float("inf")}, {}, {"step_s": 1, "typo": 2},
                                 {"step_s": 1, "peak_flops": 0}])
def test_params_are_validated(bad: dict) -> None:
    """Negative, non-finite, all-zero and unknown parameters are rejected."""
    with pytest.raises(ValidationError):
        LinearCostModel.Params(**bad)
