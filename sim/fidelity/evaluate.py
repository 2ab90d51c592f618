"""Read, replay and score measured runs: the library behind ``simlb fidelity``."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sim
from sim.fidelity.readers import discover, read_run
from sim.fidelity.replay import Prediction, replay
from sim.fidelity.run import MeasuredRun
from sim.fidelity.score import RunScore, aggregate, score_run


@dataclass
class Evaluated:
    """One run with its prediction and score."""

    run: MeasuredRun
    prediction: Prediction
    score: RunScore


def find_runs(paths: Sequence[Path], columns: str | None = None) -> list[tuple[str, Path]]:
    """Every run at or below ``paths`` as ``(layout, path)``, each once, in the given order."""
    seen: set[Path] = set()
    out = []
    for path in paths:
        for layout, found in discover(Path(path), columns):
            key = found.resolve()
            if key not in seen:
                seen.add(key)
                out.append((layout, found))
    return out


def evaluate_one(layout: str, path: Path, profile: str, overrides: Sequence[str] = (), *,
                 columns: str | None = None, engine: Mapping[str, Any] | None = None,
                 max_requests: int | None = None) -> Evaluated:
    """Read one run, replay it teacher-forced and score the prediction."""
    run = read_run(layout, path, columns=columns, engine=engine)
    if max_requests:
        run = run.head(max_requests)
    pred = replay(run, profile, overrides)
    return Evaluated(run, pred, score_run(run, pred))


def evaluate(paths: Sequence[Path], profile: str, overrides: Sequence[str] = (), *,
             columns: str | None = None, engine: Mapping[str, Any] | None = None,
             max_requests: int | None = None,
             progress: Callable[[str], None] | None = None) -> list[Evaluated]:
    """``evaluate_one`` for every run found at ``paths``."""
    out = []
    for layout, path in find_runs(paths, columns):
        if progress:
            progress(str(path))
        out.append(evaluate_one(layout, path, profile, overrides, columns=columns,
                                engine=engine, max_requests=max_requests))
    return out


def to_json(results: Sequence[Evaluated], profile: str, overrides: Sequence[str],
            wall_s: float | None = None) -> dict[str, Any]:
    """The ``fidelity.json`` document."""
    return {
        "schema": "simlb.fidelity/v1",
        "simlb_version": sim.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "profile": profile,
        "overrides": list(overrides),
        "wall_s": wall_s,
        "runs": [r.score.to_dict() for r in results],
        "summary": aggregate([r.score for r in results]),
    }
