"""``simlb capacity`` against queueing theory, and its input errors.

The analytic case: one textbook node (``tests/test_queueing.py``: one request at a time,
exponential service of mean 1 s from the ``linear`` cost model) is an M/M/1 queue, i.e. M/M/c
with c = 1, whose mean sojourn is ``C(c, a) / (c mu - lambda) + 1 / mu`` (Erlang C). The
highest rate whose mean end-to-end latency meets a target T solves that equation; the search
must find it within a few per cent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from test_queueing import textbook

from sim import app
from sim.cli import main
from sim.fidelity.score import overload_verdict
from sim.outcome import COMPLETED
from sim.sweep.cache import TaskCache
from sim.sweep.capacity import CapacitySpec, run_search, start
from sim.sweep.capacity_report import recommendations, sentences
from sim.sweep.executors import InProcess
from sim.sweep.slo import parse_slos
from sim.sweep.tasks import stability

import queueing_theory as qt
from conftest import scenario_dict, write_scenario


def erlang_c_capacity(target_s: float, c: int = 1, mu: float = 1.0) -> float:
    """The arrival rate at which M/M/c's mean sojourn equals ``target_s`` (bisection)."""
    lo, hi = 1e-9, c * mu * (1 - 1e-12)
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if qt.mmc_sojourn(c, mid, mu) <= target_s else (lo, mid)
    return lo


def test_rate_search_finds_the_erlang_c_knee(tmp_path):
    """M/M/1 with a mean-E2E target of 1/(1 - 0.7) s: capacity 0.7 req/s, found within 5 %
    and within the reported interval plus the bisection's resolution."""
    target = 1 / (1 - 0.7)
    raw = textbook(0.5, 1, ["round_robin"], duration_s=4000.0)
    path = write_scenario(tmp_path, raw)
    spec = CapacitySpec(path, parse_slos([f"e2e_mean_s={target}"]), replications=6,
                        rate_range=(0.2, 0.95), tol=0.01)
    search = run_search(start(spec), InProcess(), TaskCache(tmp_path / "cache"))
    row = recommendations(search, {}).iloc[0]
    theory = erlang_c_capacity(target)
    assert theory == pytest.approx(0.7, rel=1e-6)
    assert row.capacity_rps == pytest.approx(theory, rel=0.05), row
    assert abs(row.capacity_rps - theory) <= row.ci95_rps + 2 * spec.tol, row
    assert row.ci95_rps < 0.05
    assert "round_robin" in sentences(recommendations(search, {}), search)[0]


def test_node_search_finds_the_fewest_servers_and_flags_overload(tmp_path):
    """2.5 req/s on exponential servers with a mean-E2E limit of 2.4 s: round robin needs 4
    (E_4/M/1: 1.83 s; 3 give 4.1 s), random 5 (M/M/1 at rho 0.5: 2 s; 4 give 2.67 s). The
    scenario's 2 nodes are overloaded (rho 1.25): detected as a growing queue."""
    raw = textbook(2.5, 2, ["round_robin", "random"], duration_s=2000.0)
    path = write_scenario(tmp_path, raw)
    result = CliRunner().invoke(main, [
        "capacity", str(path), "--vary", "nodes", "--slo", "e2e_mean_s=2.4",
        "--price", "default=3", "--replications", "2", "-j", "1", "-q",
        "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "out" / "capacity.csv").set_index("strategy")
    assert table.loc["round_robin", "nodes"] == 4
    assert table.loc["random", "nodes"] == 5
    assert table.loc["round_robin", "usd_per_hour"] == pytest.approx(12.0)
    assert "cheapest configuration meeting 2.5 req/s" in result.output
    assert "4 x default" in result.output and "round_robin" in result.output
    ev = pd.read_csv(tmp_path / "out" / "evaluations.csv")
    at_two = ev[ev["x"] == 2]
    assert len(at_two) and not at_two["stable"].any() and at_two["growing"].all()
    assert (tmp_path / "out" / "report" / "knee.png").stat().st_size > 1000


@pytest.mark.parametrize(("args", "expected"), [
    (["--slo", "ttft_p98_s=1"], "unknown SLO metric 'ttft_p98_s'"),
    (["--slo", "latency=1"], "unknown SLO metric"),
    (["--slo", "ttft_p99_s=-1"], "positive number"),
    (["--slo", "ttft_p99_s=1", "--slo", "ttft_p99_s=2"], "twice"),
    (["--slo", "ttft_p99_s=1", "--rate-key", "workload.nothing"], "--rate-key"),
    (["--slo", "ttft_p99_s=1", "--vary", "nodes", "--group", "gpu9"], "no node group"),
    (["--slo", "ttft_p99_s=1", "--rate-range", "5:1"], "--rate-range"),
    (["--slo", "ttft_p99_s=1", "--set", "cluster.node_groups.0.count=0"], "count"),
])
def test_bad_input_is_one_line_and_exit_2(args, expected, tmp_path):
    smoke = Path(__file__).resolve().parents[1] / "scenarios" / "smoke.yaml"
    result = CliRunner().invoke(main, ["capacity", str(smoke), *args, "-q",
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("simlb: error:"), result.output
    assert expected in lines[0]


def _requests(rate_rps: float, service_rps: float, duration_s: float = 100.0) -> dict:
    """Synthetic records: Poisson-like even arrivals, one queue served at ``service_rps``,
    each request then decoding for 10 s."""
    arrival = np.arange(0.0, duration_s, 1.0 / rate_rps)
    start = np.maximum.accumulate(np.maximum(arrival, np.arange(arrival.size) / service_rps))
    return {"arrival_s": arrival, "first_scheduled_s": start, "finish_s": start + 10.0,
            "status": np.full(arrival.size, COMPLETED)}


def test_a_growing_queue_fails_stability_even_when_latency_grows_slowly(tmp_path):
    resolved = app.load(write_scenario(tmp_path, scenario_dict(duration_s=100.0,
                                                               warmup_s=0.0)))
    r = _requests(10.0, 8.0)
    e2e_rule = overload_verdict(r["arrival_s"], r["finish_s"] - r["arrival_s"], 256)
    assert not e2e_rule.growing  # 25 s of queueing against 10 s decodes: below its yardstick
    over = stability(resolved, r)
    assert not over["stable"] and over["growing"] and over["queue_growth"] > 100
    under = stability(resolved, _requests(6.0, 8.0))
    assert under["stable"] and under["queue_growth"] == pytest.approx(0.0, abs=1.0)
