"""The shipped profiles: valid, monotone, non-negative; reproducible from the calibration data."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from sim.model.profile import Profile, load_profile, shipped_profile_names

REPO = Path(__file__).resolve().parents[1]
REQUIRED = ("h100/llama-3-8b", "h100/llama-2-7b", "a100/llama-3-8b", "a100/llama-2-70b-tp2")


def _shared() -> Path:
    env = os.environ.get("SIMLB_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


CALIBRATION = _shared() / "calibration"


def needs_shared(test: Callable) -> Callable:
    """Mark a test as reading ../shared and skip it when the data are absent."""
    skip = pytest.mark.skipif(not (CALIBRATION / "vidur").is_dir(),
                              reason="shared calibration data not available")
    return pytest.mark.shared(skip(test))


@pytest.fixture(autouse=True)
def _repo_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMLB_PROFILES_DIR", str(REPO / "profiles"))


def test_required_profiles_are_shipped() -> None:
    """The four profiles the scenarios rely on exist."""
    assert set(REQUIRED) <= set(shipped_profile_names())


@pytest.mark.parametrize("name", shipped_profile_names(REPO / "profiles"))
def test_shipped_profile_is_sane(name: str) -> None:
    """Each shipped profile validates, names its source, and its curves are monotone."""
    prof = load_profile(name)
    assert prof.name == name
    assert prof.source.kind == "derived" and prof.source.data
    assert all(len(f.sha256) == 64 for f in prof.source.data)
    assert prof.path is not None and prof.path.stat().st_size < 200_000
    sm = prof.step_model
    for table in (sm.lin, sm.head, *([sm.comm] if sm.comm else [])):
        assert list(table.y_ms) == sorted(table.y_ms)
        assert table.slope_ms >= 0
    assert min(sm.attn_decode.coef) >= 0 and min(sm.attn_prefill.coef) >= 0
    assert (sm.comm is not None) == (prof.hardware.tensor_parallel > 1)
    assert prof.kv_capacity_tokens() == prof.kv_cache.capacity_tokens > 0


def test_kv_capacities_match_the_analytic_figures() -> None:
    """profiling.md §3.2: about 448k (Llama-3-8B) and 117k (Llama-2-7B) tokens on an H100."""
    assert load_profile("h100/llama-3-8b").kv_capacity_tokens() == 448304
    assert load_profile("h100/llama-2-7b").kv_capacity_tokens() == 116992
    prof = load_profile("h100/llama-3-8b")
    assert prof.kv_capacity_tokens(0.92) > prof.kv_capacity_tokens(0.9)


def _raw_sums(prof: Profile) -> tuple[np.ndarray, np.ndarray]:
    from sim.calibration import derive, vidur

    model = derive.MODELS[prof.model.name]
    gpu = "h100" if "H100" in prof.hardware.gpu else "a100"
    path = vidur.mlp_csv(CALIBRATION / "vidur", gpu, model.vidur_dir)
    sums = vidur.step_sums(vidur.op_medians(path, prof.hardware.tensor_parallel),
                           prof.model.num_layers)
    return sums.index.to_numpy(), sums.to_numpy()


@needs_shared
@pytest.mark.parametrize("name", ["h100/llama-2-7b", "a100/llama-3-8b", "a100/llama-2-7b",
                                  "a100/llama-2-70b-tp2", "h100/llama-2-70b-tp2"])
def test_lin_reproduces_the_measured_sums(name: str) -> None:
    """The lin table stays within 2% MAPE (15% at worst, where the data dip below a
    monotone curve) of the summed Vidur op medians it was fitted to."""
    prof = load_profile(name)
    x, raw = _raw_sums(prof)
    ape = np.abs(np.array([prof.step_model.lin.at(v) for v in x]) / raw - 1.0) * 100.0
    assert ape.mean() < 2.0
    assert ape.max() < 15.0


@needs_shared
def test_a100_70b_attention_is_the_measured_fit() -> None:
    """The fully measured setup uses the per-layer attention fits times its 80 layers."""
    from sim.calibration import vidur

    dec, pf = vidur.fit_attention(CALIBRATION / "vidur/legacy_attention/a100/attention.csv")
    sm = load_profile("a100/llama-2-70b-tp2").step_model
    assert sm.attn_decode.coef == pytest.approx([80 * c for c in dec.coef], rel=1e-5)
    assert sm.attn_prefill.coef == pytest.approx([80 * c for c in pf.coef], rel=1e-5)
    assert dec.mape_pct < 12 and pf.mape_pct < 12 and dec.r2 > 0.95 and pf.r2 > 0.9


@needs_shared
def test_derive_output_equals_the_shipped_files(tmp_path: Path) -> None:
    """Re-deriving gives byte-identical files (the profiles are reproducible)."""
    from sim.calibration import derive

    assert derive.main(["--calibration", str(CALIBRATION), "--out", str(tmp_path)]) == 0
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.json"))
    # the *-aic profiles come from sim.calibration.aic (tests/test_profile_derive.py)
    shipped = sorted(p.relative_to(REPO / "profiles") for p in (REPO / "profiles").rglob("*.json")
                     if not p.stem.endswith("-aic"))
    assert made == shipped
    for rel in made:
        assert (tmp_path / rel).read_bytes() == (REPO / "profiles" / rel).read_bytes(), rel
