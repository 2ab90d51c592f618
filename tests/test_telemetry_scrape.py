"""Skipping the telemetry scrape (``Strategy.reads_telemetry = False``, issue 18) changes no
decision, and a strategy that reads telemetry after declaring it does not is an error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sim import app
from sim.errors import SimulationError
from sim.policy.base import ClusterView, RequestInfo, Strategy, strategies
from sim.runner import simulate, workload_for
from sim.testing import make_view

REPO = Path(__file__).resolve().parents[1]
SKIPPING = sorted(name for name in strategies.names()
                  if not strategies.get(name).reads_telemetry)


def test_the_common_strategies_skip_the_scrape() -> None:
    assert {"round_robin", "least_loaded", "sglang_cache_aware", "dynamo_kv"} <= set(SKIPPING)
    assert not {"jsq", "power_of_two", "least_kv", "llm_d"} & set(SKIPPING)


@pytest.mark.parametrize("name", [n for n in SKIPPING if n != "multi_model"])
def test_skipping_the_scrape_changes_no_decision(name: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    resolved = app.load(REPO / "scenarios" / "smoke.yaml", ["duration_s=40"],
                        strategies=(name,))
    workload = workload_for(resolved, 0)
    choice = resolved.strategies[0]
    skipped = simulate(resolved, choice, 0, workload).requests
    monkeypatch.setattr(choice.cls, "reads_telemetry", True)
    scraped = simulate(resolved, choice, 0, workload).requests
    for column, values in scraped.items():
        assert np.array_equal(skipped[column], values, equal_nan=True), column


class _Liar(Strategy):
    """Declares it reads no telemetry, then reads it."""

    reads_telemetry = False

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        return int(np.argmin(view.telemetry.queued))


def test_reading_unsampled_telemetry_is_an_error() -> None:
    from sim.policy.base import UNSAMPLED

    view = make_view()._replace(telemetry=UNSAMPLED)
    with pytest.raises(SimulationError, match=r"view\.telemetry\.queued .*reads_telemetry"):
        _Liar(_Liar.Params(), np.random.default_rng(0)).choose(None, view)  # type: ignore[arg-type]
