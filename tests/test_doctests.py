"""Every ``>>>`` example in a docstring of ``sim`` runs and prints what it shows."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

SIM = Path(__file__).resolve().parents[1] / "sim"
MODULES = sorted(
    ".".join(p.relative_to(SIM.parent).with_suffix("").parts).removesuffix(".__init__")
    for p in SIM.rglob("*.py") if ">>> " in p.read_text(encoding="utf-8"))


def test_some_modules_have_examples():
    assert "sim.registry" in MODULES and "sim.testing" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
