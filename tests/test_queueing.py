"""The simulator against queueing theory, with a node reduced to a textbook server.

A *textbook node* serves one request at a time (``max_num_seqs: 1``); each request has one
output token, so it is done when its prefill ends, and the ``linear`` test-double cost makes
the prefill take ``prompt_tokens / M`` seconds. Geometric prompt lengths with mean M = 10,000
then give service times that are exponential with mean 1 up to a 1/(2M) discretisation error
(fixed lengths give deterministic service). Each test runs seeded replications and compares the
mean sojourn time with theory within 4 standard errors (and a few per cent); Little's law is
checked on every run.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from sim import app
from sim.runner import simulate, workload_for

import queueing_theory as qt
from conftest import scenario_dict, write_scenario

M = 10_000  # tokens per unit of service time


def textbook(lam_total: float, nodes: int, strategies: list[str], *, fixed: bool = False,
             duration_s: float = 12_000.0) -> dict:
    raw = scenario_dict(duration_s=duration_s, warmup_s=duration_s / 10, drain_timeout_s=1e6)
    raw["cluster"] = {"node_groups": [{
        "count": nodes,
        "cost_model": {"name": "linear", "params": {"prefill_token_s": 1.0 / M}},
        "kv_capacity_tokens": 10_000_000,
        "prefix_caching": False,
        "batcher": {"name": "continuous", "params": {"max_num_seqs": 1,
                                                     "max_num_batched_tokens": 1_000_000}},
    }]}
    raw["router"] = {"strategies": [{"name": s} for s in strategies], "telemetry_interval_s": 0}
    prompt = ({"name": "fixed", "params": {"tokens": M}} if fixed
              else {"name": "geometric", "params": {"mean_tokens": M}})
    raw["workload"] = {"arrivals": {"name": "poisson", "params": {"rate_rps": lam_total}},
                       "prompt_tokens": prompt,
                       "output_tokens": {"name": "fixed", "params": {"tokens": 1}}}
    return raw


def sojourn_means(tmp_path: Path, raw: dict, replications: int) -> dict[str, np.ndarray]:
    """Mean E2E per replication and strategy; asserts Little's law on every run."""
    resolved = app.load(write_scenario(tmp_path, raw), replications=replications)
    means: dict[str, list[float]] = {c.label: [] for c in resolved.strategies}
    for k in range(replications):
        workload = workload_for(resolved, k)
        for choice in resolved.strategies:
            s = simulate(resolved, choice, k, workload).summary
            assert s["requests"]["unfinished"] == 0
            assert s["littles_law"]["ratio"] == pytest.approx(1.0, abs=0.02), choice.label
            means[choice.label].append(s["latency_s"]["e2e"]["mean"])
    return {k: np.array(v) for k, v in means.items()}


def assert_matches(samples: np.ndarray, theory: float, rel: float = 0.05) -> None:
    mean = float(samples.mean())
    se = float(samples.std(ddof=1) / math.sqrt(samples.size))
    assert abs(mean - theory) < 4 * se + 1e-12 or abs(mean - theory) < 0.005 * theory, (
        mean, se, theory)
    assert abs(mean - theory) / theory < rel, (mean, theory)


@pytest.mark.slow
def test_random_dispatch_is_independent_mm1_queues(tmp_path):
    """Random dispatch over 4 exponential servers at rho 0.7: E[T] = 1/(mu - lambda)."""
    means = sojourn_means(tmp_path, textbook(2.8, 4, ["random"]), replications=6)
    assert_matches(means["random"], qt.mm1_sojourn(0.7))


@pytest.mark.slow
def test_round_robin_is_erlang_c_arrivals_to_each_server(tmp_path):
    """Round robin over 4 exponential servers at rho 0.8 is E_4/M/1 at each server."""
    means = sojourn_means(tmp_path, textbook(3.2, 4, ["round_robin"]), replications=6)
    assert_matches(means["round_robin"], qt.round_robin_sojourn(4, 0.8))


@pytest.mark.slow
def test_deterministic_service_is_md1(tmp_path):
    """Fixed service time at rho 0.8 on one node: Pollaczek-Khinchine, E[T] = 3."""
    raw = textbook(0.8, 1, ["round_robin"], fixed=True, duration_s=15_000.0)
    means = sojourn_means(tmp_path, raw, replications=6)
    assert_matches(means["round_robin"], qt.md1_sojourn(0.8))


@pytest.mark.slow
def test_load_aware_dispatch_sits_between_pooled_queue_and_random(tmp_path):
    """At rho 0.8 over 4 servers: M/M/4 <= JSQ <= power-of-two <= random, and JSQ <= RR."""
    raw = textbook(3.2, 4, ["jsq", "least_loaded", "power_of_two", "round_robin", "random"],
                   duration_s=8_000.0)
    means = {k: v.mean() for k, v in sojourn_means(tmp_path, raw, replications=4).items()}
    pooled, random = qt.mmc_sojourn(4, 3.2), qt.mm1_sojourn(0.8)
    assert pooled < means["jsq"] < means["power_of_two"] < means["random"]
    assert pooled < means["least_loaded"] < means["power_of_two"]
    assert means["jsq"] < means["round_robin"] < means["random"]
    assert means["random"] == pytest.approx(random, rel=0.08)
    # router-local in-flight counts are exact queue lengths here: least_loaded is JSQ
    assert means["least_loaded"] == pytest.approx(means["jsq"], rel=0.05)


def test_continuous_batching_is_processor_sharing(tmp_path):
    """Unbounded batch with iteration time bd * batch size: E[T | x] = x bd / (1 - rho)."""
    bd, lam = 0.001, 2.5
    raw = scenario_dict(duration_s=3000.0, warmup_s=300.0, drain_timeout_s=1e5)
    raw["cluster"] = {"node_groups": [{
        "count": 1,
        "cost_model": {"name": "linear", "params": {"prefill_token_s": bd,
                                                    "decode_seq_s": bd}},
        "kv_capacity_tokens": 10_000_000, "prefix_caching": False,
        "batcher": {"name": "continuous", "params": {"max_num_seqs": 10_000,
                                                     "max_num_batched_tokens": 10_000}}}]}
    raw["workload"] = {"arrivals": {"name": "poisson", "params": {"rate_rps": lam}},
                       "prompt_tokens": {"name": "fixed", "params": {"tokens": 1}},
                       "output_tokens": {"name": "uniform",
                                         "params": {"low_tokens": 20, "high_tokens": 380}}}
    resolved = app.load(write_scenario(tmp_path, raw))
    rho = lam * 200 * bd
    ratios = []
    for k in range(3):
        r = simulate(resolved, resolved.strategies[0], k, workload_for(resolved, k)).requests
        keep = (r["arrival_s"] >= 300) & (r["arrival_s"] < 3000)
        e2e = r["finish_s"][keep] - r["arrival_s"][keep]
        x = r["output_tokens"][keep]
        for lo in (20, 140, 260):
            sel = (x >= lo) & (x < lo + 120)
            ratios.append(e2e[sel].mean() / qt.mg1_ps_sojourn(x[sel].mean() * bd, rho))
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.03)
    assert max(abs(r - 1) for r in ratios) < 0.08


def test_theory_functions_match_the_reference_table(shared_dir):
    """The closed forms used above reproduce the anchored reference values."""
    import pandas as pd

    ref = pd.read_csv(shared_dir / "anchors" / "queueing_reference_values.csv")

    def value(model: str, params: str, quantity: str) -> float:
        row = ref[(ref.model == model) & (ref.params == params) & (ref.quantity == quantity)]
        return float(row.value.iloc[0])

    assert qt.mm1_sojourn(0.8) == pytest.approx(value("M/M/1", "lam=0.8,mu=1", "E_T"))
    assert qt.round_robin_sojourn(4, 0.8) == pytest.approx(
        value("RR dispatch (E_N/M/1)", "N=4,rho=0.8,mu=1", "E_T"))
    assert qt.md1_sojourn(0.8) == pytest.approx(value("M/D/1", "lam=0.8,D=1", "E_T"))
    assert qt.mmc_sojourn(4, 3.2) == pytest.approx(value("M/M/c", "c=4,lam=3.2,mu=1", "E_T"))
