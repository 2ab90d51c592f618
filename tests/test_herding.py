"""Herding: balance over short windows and bursts that the utilisation CV cannot see
(issue 12, item 4)."""

from __future__ import annotations

import numpy as np
import pytest

from sim.metrics.herding import fold_grade, herding, herding_grade
from sim.metrics.recorder import LogHistogram
from sim.metrics.summary import RunData, summarize
from sim.model.requests import COMPLETED

NODES, BURSTS, BURST, PERIOD_S = 8, 200, 8, 0.5


def burst_run(node_of_request: np.ndarray) -> RunData:
    """Bursts of ``BURST`` simultaneous arrivals every ``PERIOD_S``; each request served in
    0.4 s on its node. Every node's work follows its dispatches exactly."""
    n = BURSTS * BURST
    arrival = np.repeat(np.arange(BURSTS) * PERIOD_S, BURST)
    nan = np.full(n, np.nan)
    requests = {
        "arrival_s": arrival, "node": node_of_request.astype(np.int64),
        "status": np.full(n, COMPLETED), "prompt_tokens": np.full(n, 100),
        "output_tokens": np.full(n, 10), "first_scheduled_s": arrival,
        "first_token_s": arrival + 0.05, "finish_s": arrival + 0.4,
        "cached_tokens": np.zeros(n, np.int64), "preemptions": np.zeros(n, np.int64),
        "recomputed_tokens": np.zeros(n, np.int64), "generated_tokens": np.full(n, 10),
        "max_output_tokens": np.full(n, 10), "session_id": nan, "prefix_group": nan,
    }
    # one run per (burst, node that got some of it): its requests' prefill and decode
    burst = np.repeat(np.arange(BURSTS), BURST)
    pairs, count = np.unique(burst * NODES + node_of_request, return_counts=True)
    b, node = pairs // NODES, pairs % NODES
    start = b * PERIOD_S
    runs = {"start_s": start, "end_s": start + 0.4, "node": node,
            "iterations": np.full(b.size, 10), "decode_batch": count,
            "n_chunks": np.ones(b.size, np.int64), "prefill_tokens": 100 * count,
            "prefill_pairs": np.zeros(b.size), "decode_ctx_tokens": np.zeros(b.size),
            "first_s": start, "step_s": np.full(b.size, 0.04),
            "decode_tokens": 10 * count, "flops": 1e12 * count}
    t = np.concatenate([start, start + 0.4])
    order = np.argsort(t, kind="stable")
    states = {"t_s": t[order], "node": np.concatenate([node, node])[order],
              "waiting": np.zeros(2 * b.size, np.int64),
              "running": np.concatenate([count, 0 * count])[order],
              "kv_used_blocks": np.concatenate([10 * count, 0 * count])[order]}
    return RunData(requests=requests, states=states, runs=runs, itl=LogHistogram(),
                   max_num_seqs=np.full(NODES, 256.0), kv_total_blocks=np.full(NODES, 1e4),
                   peak_flops=np.full(NODES, 1e15), window_s=(0.0, BURSTS * PERIOD_S),
                   end_s=BURSTS * PERIOD_S, slo={"ttft_s": 1.0}, grade_on="batch_occupancy",
                   extrapolated_steps=0, kv_evictions=0)


def test_burst_herding_that_the_utilisation_cv_misses() -> None:
    """Every burst to one node (a different one each burst): load is perfectly balanced over
    the run, so the utilisation CV grades it Excellent; the herding measure flags it and the
    balance grade drops to Poor. Round robin within each burst scores 0 and stays Excellent."""
    herded = summarize(burst_run(np.repeat(np.arange(BURSTS) % NODES, BURST)))
    grade = herded["utilization"]["grade"]
    for sense in ("busy", "batch_occupancy", "kv_occupancy", "token_share"):
        assert herded["utilization"][sense]["cv"] == pytest.approx(0.0, abs=1e-9)
    assert grade["cv_grade"] == "Excellent"
    herd = herded["herding"]
    assert herd["burst_max_share"] == pytest.approx(1.0)
    assert herd["burst_index"] == pytest.approx(1.0) and herd["index"] == pytest.approx(1.0)
    assert herd["bursts"] == BURSTS and herd["burst_requests"] == BURSTS * BURST
    assert herd["window_max_share"] == pytest.approx(0.5)  # two bursts per 1-s window
    assert grade["herding_grade"] == "Poor" and grade["grade"] == "Poor"

    spread = summarize(burst_run(np.tile(np.arange(BURST) % NODES, BURSTS)))
    assert spread["herding"]["index"] == 0.0
    assert spread["herding"]["burst_max_share"] == pytest.approx(1 / NODES)
    assert spread["utilization"]["grade"]["grade"] == "Excellent"


def test_ideal_spread_is_zero_and_random_is_mild() -> None:
    """As even as possible is 0 for any group size; uniform random is well below herding."""
    t = np.repeat(np.arange(100) * 0.5, 11)  # 11 per burst over 8 nodes: best share 2/11
    rr = herding(t, np.arange(t.size) % 8, 8)
    assert rr["burst_index"] == 0.0 and rr["burst_max_share_ideal"] == pytest.approx(2 / 11)
    rng = np.random.default_rng(0)
    assert 0.05 < herding(t, rng.integers(8, size=t.size), 8)["index"] < 0.35
    assert herding(np.zeros(0), np.zeros(0, np.int64), 8)["index"] is None


def test_undispatched_requests_are_left_out_and_grades_fold() -> None:
    t = np.array([0.0, 0.0, 0.0, 2.0])
    out = herding(t, np.array([0, -1, 0, 1]), 4)
    assert out["bursts"] == 1 and out["burst_requests"] == 2 and out["burst_index"] == 1.0
    assert [herding_grade(x) for x in (0.0, 0.25, 0.4, 0.9, None)] == [
        "Excellent", "Good", "Fair", "Poor", None]
    util = {"grade": {"sense": "busy", "cv": 0.25, "grade": "Fair"}}
    folded = fold_grade(util, {"index": 0.1, "grade": "Excellent"})["grade"]
    assert folded["grade"] == "Fair" and folded["cv_grade"] == "Fair"
    assert fold_grade(util, {"index": None, "grade": None})["grade"]["grade"] == "Fair"
