"""Plotted comparison reports from result directories (never re-simulating).

Public API:

* ``load_runs(paths) -> Runs``: read result directories into pandas (``sim.report.load``).
* ``build_report(result_dirs, out_dir=None, baseline=None) -> Path``: write the report folder
  (``index.html``, ``summary.md``, ``runs.csv``, ``figures/*.png|svg``) and return the path of
  its ``index.html``.

matplotlib is imported only by ``sim.report.plots``, and only when a report is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sim.report.load import Run, Runs, load_runs

__all__ = ["Run", "Runs", "build_report", "load_runs"]


def build_report(result_dirs: Sequence[str | Path], out_dir: str | Path | None = None,
                 baseline: str | None = None) -> Path:
    """Write the report of ``result_dirs`` to ``out_dir`` (default ``<first>/report``).

    See ``sim.report.html.build_report``; returns the path of ``index.html``.
    """
    from sim.report.html import build_report as build

    return build(result_dirs, out_dir, baseline)
