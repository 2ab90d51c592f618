"""Packaging facts kept in one place: the version, the CI gates' configuration."""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

import sim

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())


def test_the_version_is_written_once():
    """pyproject.toml reads the version from sim.__version__; the installed metadata agrees."""
    assert "version" not in PYPROJECT["project"]
    assert "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "sim.__version__"}
    try:
        installed = version("simlb")
    except PackageNotFoundError:  # pragma: no cover  (run from a plain checkout)
        pytest.skip("simlb is not installed")
    assert installed == sim.__version__


def test_ci_tools_are_dev_dependencies():
    dev = " ".join(PYPROJECT["project"]["optional-dependencies"]["dev"])
    for tool in ("ruff", "mypy", "pytest-cov", "pandas-stubs", "types-PyYAML"):
        assert tool in dev
    assert PYPROJECT["tool"]["mypy"]["files"]
