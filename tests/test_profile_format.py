"""The profile file format: loading, validation errors, KV sizing, writing, import hygiene."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from sim.errors import ProfileError
from sim.model.profile import (
    load_profile,
    parse_profile,
    shipped_profile_names,
    write_profile,
)

from conftest import tiny_profile_data

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_path(tmp_path: Path) -> Path:
    return write_profile(tiny_profile_data(), tmp_path / "tiny.json")


def test_tiny_profile_round_trips(tiny_path: Path) -> None:
    """A written profile loads back with the same values."""
    prof = load_profile(tiny_path)
    assert prof.name == "test/tiny"
    assert prof.path == tiny_path
    assert prof.step_model.lin.x == (1, 4, 8)
    assert prof.step_model.head.slope_ms == 0.1
    assert prof.step_model.attn_prefill.coef == (0.2, 0.002, 0.0001)
    assert prof.kv_cache.capacity_tokens == 2720


def test_write_is_sorted_indented_and_leaves_no_temp_files(tiny_path: Path) -> None:
    """The writer sorts keys, indents by 2 and cleans up its temporary file."""
    text = tiny_path.read_text(encoding="utf-8")
    assert text.startswith('{\n  "checks": {}')
    assert text.endswith("}\n")
    assert [p.name for p in tiny_path.parent.iterdir()] == ["tiny.json"]


def test_relative_path_resolves_against_base_dir(tiny_path: Path) -> None:
    """A relative ref is looked up in the scenario's folder; '.json' may be omitted."""
    assert load_profile("tiny", base_dir=tiny_path.parent).path == tiny_path
    assert load_profile("tiny.json", base_dir=tiny_path.parent).path == tiny_path


def test_table_evaluation() -> None:
    """Tables clamp below the grid, interpolate inside and follow the tail above."""
    lin = parse_profile(tiny_profile_data()).step_model.lin
    assert [lin.at(x) for x in (0, 1, 2, 4, 6, 8, 12)] == [1.0, 1.0, 1.0, 1.0, 1.5, 2.0, 3.0]


def test_kv_capacity_recomputed_for_other_settings(tiny_path: Path) -> None:
    """vLLM's rule from the stored terms: floor(budget / block_bytes) * block_size."""
    prof = load_profile(tiny_path)
    assert prof.kv_capacity_tokens() == 2720  # floor(700000 / 4096) = 170 blocks
    assert prof.kv_capacity_blocks(0.5) == 73  # floor(300000 / 4096)
    assert prof.kv_capacity_tokens(0.5) == 73 * 16
    assert prof.kv_capacity_tokens(block_size=32) == 85 * 32  # floor(700000 / 8192)
    assert prof.kv_capacity_tokens(0.2) == 0  # budget negative: no blocks
    with pytest.raises(ValueError):
        prof.kv_capacity_tokens(1.5)


def _write_raw(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _mutate(path_keys: tuple, value: object, delete: bool = False) -> dict:
    data = copy.deepcopy(tiny_profile_data())
    node = data
    for key in path_keys[:-1]:
        node = node[key]
    if delete:
        del node[path_keys[-1]]
    else:
        node[path_keys[-1]] = value
    return data


BAD_CASES = [
    (("schema",), "simlb.profile/v0", False, "schema", "expected 'simlb.profile/v1'"),
    (("step_model", "attn_decode", "coef", 1), -0.01, False,
     "step_model.attn_decode.coef[1]", ">= 0"),
    (("step_model", "lin", "y_ms", 2), 0.5, False, "step_model.lin.y_ms[2]", "non-decreasing"),
    (("step_model", "lin", "x_tokens", 1), 1, False, "step_model.lin.x_tokens[1]",
     "strictly increasing"),
    (("step_model", "head", "y_ms", 0), math.nan, False, "step_model.head.y_ms[0]", "finite"),
    (("model", "params"), None, True, "model.params", "missing"),
    (("hardware", "tensor_parallel"), "1", False, "hardware.tensor_parallel", "integer"),
    (("step_model", "lin", "y_ms"), [1.0, 2.0], False, "step_model.lin.y_ms", "expected 3"),
    (("kv_cache", "capacity_tokens"), 9999, False, "kv_cache.capacity_tokens", "2720"),
    (("kv_cache", "kv_bytes_per_token_per_gpu"), 512, False,
     "kv_cache.kv_bytes_per_token_per_gpu", "256"),
    (("model", "num_layer"), 2, False, "model.num_layer", "unknown field"),
    (("step_model", "mixed_factor"), 0.0, False, "step_model.mixed_factor", "> 0"),
    (("step_model", "attn_prefill", "features"), ["a", "b", "c"], False,
     "step_model.attn_prefill.features", "per_chunk"),
    (("step_model", "units"), "s", False, "step_model.units", "'ms'"),
    (("source", "kind"), "guessed", False, "source.kind", "derived"),
]


@pytest.mark.parametrize(("keys", "value", "delete", "field", "words"), BAD_CASES)
def test_bad_field_names_file_and_field(tmp_path: Path, keys: tuple, value: object,
                                        delete: bool, field: str, words: str) -> None:
    """Each invalid field raises ProfileError naming the file and the dotted field."""
    path = _write_raw(tmp_path, _mutate(keys, value, delete))
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    err = info.value
    assert err.source == str(path)
    assert err.field == field
    assert words in err.detail
    assert "\n" not in str(err)


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is a ProfileError naming it and listing the shipped profiles."""
    missing = tmp_path / "nope.json"
    with pytest.raises(ProfileError) as info:
        load_profile(missing)
    assert info.value.source == str(missing)
    assert "no profile file" in str(info.value)


def test_invalid_json(tmp_path: Path) -> None:
    """Broken JSON is reported with its position."""
    path = tmp_path / "broken.json"
    path.write_text('{"schema": ', encoding="utf-8")
    with pytest.raises(ProfileError, match="invalid JSON") as info:
        load_profile(path)
    assert info.value.source == str(path)


def test_not_an_object(tmp_path: Path) -> None:
    """A JSON file that is not an object fails at the top level."""
    path = tmp_path / "list.json"
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(ProfileError, match="expected an object"):
        load_profile(path)


def test_unknown_name_lists_shipped_profiles() -> None:
    """An unknown shipped name says which names exist."""
    with pytest.raises(ProfileError) as info:
        load_profile("h100/llama-9b")
    assert info.value.source == "h100/llama-9b"
    for name in shipped_profile_names():
        assert name in str(info.value)


def test_profiles_dir_env_override(tiny_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIMLB_PROFILES_DIR replaces the shipped folder for name lookups."""
    monkeypatch.setenv("SIMLB_PROFILES_DIR", str(tiny_path.parent))
    monkeypatch.chdir(REPO)
    assert shipped_profile_names() == ["tiny"]
    assert load_profile("tiny").path == tiny_path


def test_write_refuses_invalid_data(tmp_path: Path) -> None:
    """write_profile validates first and writes nothing when the data are bad."""
    target = tmp_path / "out" / "bad.json"
    with pytest.raises(ProfileError) as info:
        write_profile(_mutate(("step_model", "cpu_overhead_ms"), -1.0), target)
    assert info.value.field == "step_model.cpu_overhead_ms"
    assert not target.exists()


def test_write_replaces_existing_file(tiny_path: Path) -> None:
    """Writing over an existing profile replaces it whole."""
    data = tiny_profile_data()
    data["name"] = "test/renamed"
    write_profile(data, tiny_path)
    assert load_profile(tiny_path).name == "test/renamed"


BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pydantic", "simpy", "pandas", "scipy", "torch"):
            raise ImportError("blocked " + name)
        return None
sys.meta_path.insert(0, Block())
from sim.model.profile import load_profile
p = load_profile("h100/llama-3-8b")
assert p.kv_capacity_tokens() > 0
print("ok")
"""


def test_profile_module_needs_neither_pydantic_nor_simpy() -> None:
    """The loader runs where pydantic, SimPy, pandas and scipy are missing (GPU machines)."""
    done = subprocess.run([sys.executable, "-c", BLOCKER], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
