"""Reliability (issue 13): goodput under overload, size limits, corrupt inputs, racing
writers, orphaned workers, report folders, trace output paths, clusters serving nothing."""

from __future__ import annotations

import numpy as np

from sim import app
from sim.model.requests import COMPLETED
from sim.runner import simulate, workload_for

from conftest import scenario_dict, write_scenario


def test_goodput_counts_measured_requests_only_under_overload(tmp_path):
    """At twice the capacity every measured request misses the TTFT SLO, while requests that
    arrived in the warm-up complete inside the window: goodput is the hand count, not the
    throughput."""
    raw = scenario_dict(duration_s=30.0, warmup_s=10.0, drain_timeout_s=5.0)
    raw["workload"]["arrivals"]["params"]["rate_rps"] = 200.0
    raw["slo"] = {"ttft_s": 1.0, "tpot_s": 0.5}
    resolved = app.load(write_scenario(tmp_path, raw))
    result = simulate(resolved, resolved.strategies[0], 0, workload_for(resolved, 0))
    req, s = result.requests, result.summary
    a, b = 10.0, 30.0
    arrival, finish = req["arrival_s"], req["finish_s"]
    done_in_window = (req["status"] == COMPLETED) & (finish >= a) & (finish < b)
    measured = (arrival >= a) & (arrival < b)
    ttft = req["first_token_s"] - arrival
    out = req["output_tokens"]
    tpot = np.where(out > 1, (finish - req["first_token_s"]) / np.maximum(out - 1, 1), 0.0)
    good = done_in_window & measured & (ttft <= 1.0) & (tpot <= 0.5)
    assert (done_in_window & ~measured).sum() > 50  # warm-up arrivals finishing in the window
    assert s["throughput"]["goodput_rps"] == good.sum() / (b - a)
    assert s["throughput"]["goodput_rps"] <= s["throughput"]["completed_rps"] / 2
    assert s["slo"]["attainment"]["all"] < 0.2
