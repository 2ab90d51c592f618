"""``simlb profile`` command line: registration, spellings, bad input (exit code 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sim.profile.cli import profile as group

REPO = Path(__file__).resolve().parents[1]


def _invoke(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(group, args)
    return result.exit_code, result.output


def test_registered_in_simlb() -> None:
    from sim.cli import main

    result = CliRunner().invoke(main, ["profile", "--help"])
    assert result.exit_code == 0
    for word in ("run", "fit", "check", "--model", "--device"):
        assert word in result.output


def test_help_without_arguments() -> None:
    code, out = _invoke([])
    assert code == 0 and "Commands:" in out


def test_options_before_a_sub_command_are_refused(tmp_path: Path) -> None:
    code, out = _invoke(["--model", "tiny", "check", "x"])
    assert code == 2 and "after 'run'" in out


@pytest.mark.parametrize("spelling", [[], ["run"]])
def test_unknown_model(spelling: list[str], tmp_path: Path) -> None:
    code, out = _invoke([*spelling, "--model", "gpt-17", "--device", "cpu", "--out",
                         str(tmp_path / "x.json")])
    assert code == 2
    assert "simlb: error: gpt-17: unknown model" in out and len(out.strip().splitlines()) == 1


def test_missing_config_field(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"hidden_size": 64, "num_attention_heads": 4,
                               "intermediate_size": 8, "vocab_size": 10}))
    code, out = _invoke(["run", "--model", str(cfg), "--device", "cpu", "--out",
                         str(tmp_path / "x.json")])
    assert code == 2 and "num_hidden_layers: missing required field" in out


def test_unwritable_output(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, out = _invoke(["run", "--model", "tiny", "--device", "cpu", "--out",
                         str(blocker / "sub" / "x.json")])
    assert code == 2 and "cannot write the output file" in out
    code, out = _invoke(["run", "--model", "tiny", "--device", "cpu", "--out", str(tmp_path)])
    assert code == 2 and "is a folder" in out


def test_cuda_without_cuda(tmp_path: Path) -> None:
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, out = _invoke(["--model", "tiny", "--device", "cuda", "--out",
                         str(tmp_path / "x.json")])
    assert code == 2
    assert "CUDA is not available" in out or "needs PyTorch" in out


def test_missing_run_options() -> None:
    code, out = _invoke(["run", "--model", "tiny"])
    assert code == 2 and "--model and --out are required" in out


def test_fit_and_check_bad_input(tmp_path: Path) -> None:
    code, out = _invoke(["fit", str(tmp_path / "none.json"), "-o", str(tmp_path / "o.json")])
    assert code == 2 and "cannot read the file" in out
    code, out = _invoke(["check", str(tmp_path / "none.json")])
    assert code == 2 and "no profile file" in out


def test_python_dash_m_prints_errors_and_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "sim.profile", "run", "--model", "gpt-17",
                           "--device", "cpu", "--out", str(tmp_path / "x.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("simlb: error: gpt-17: unknown model (built-in: llama-2-7b, "
                                   "llama-3-8b, mistral-7b, qwen2.5-7b, tiny; or give the path "
                                   "of a Hugging Face config.json)")
