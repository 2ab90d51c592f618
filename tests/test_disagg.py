"""Disaggregated prefill and decode: pools, KV transfer, admission, routers, bad input."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import simpy
from click.testing import CliRunner
from test_batcher import make, step

from sim import app
from sim.cli import main
from sim.metrics.recorder import Recorder
from sim.model.cluster import Cluster
from sim.model.requests import COMPLETED, RequestTable
from sim.model.transfer import Disaggregation
from sim.outcome import Outcome
from sim.runner import _router, simulate, workload_for

from conftest import LINEAR_NODE, expect_error, scenario_dict, write_scenario

KV_BYTES = 131_072  # Llama-3-8B: 2 x 32 layers x 8 KV heads x 128 x 2 bytes


def pd_raw(prefill: int = 1, decode: int = 2, rate_rps: float = 8.0, **transfer: Any
           ) -> dict[str, Any]:
    """A small cluster with a prefill and a decode group of linear nodes."""
    raw = scenario_dict(duration_s=20.0, warmup_s=0.0, drain_timeout_s=200.0)
    p = copy.deepcopy(LINEAR_NODE) | {"name": "p", "role": "prefill", "count": prefill}
    d = copy.deepcopy(LINEAR_NODE) | {"name": "d", "role": "decode", "count": decode}
    raw["cluster"]["node_groups"] = [p, d]
    raw["cluster"]["transfer"] = {"kv_bytes_per_token": KV_BYTES, **transfer}
    raw["workload"]["arrivals"]["params"]["rate_rps"] = rate_rps
    return raw


def resolve(tmp_path: Path, raw: dict[str, Any], strategy: str = "pd_round_robin",
            **params: Any):
    raw = copy.deepcopy(raw)
    raw["router"]["strategies"] = [{"name": strategy, "params": params}]
    tmp_path.mkdir(parents=True, exist_ok=True)
    return app.load(write_scenario(tmp_path, raw))


def run(tmp_path: Path, raw: dict[str, Any], strategy: str = "pd_round_robin", **params: Any):
    resolved = resolve(tmp_path, raw, strategy, **params)
    return simulate(resolved, resolved.strategies[0], 0, workload_for(resolved, 0))


def test_requests_go_prefill_then_decode_and_all_complete(tmp_path: Path) -> None:
    result = run(tmp_path, pd_raw())
    req = result.requests
    assert (req["status"] == COMPLETED).all()
    assert set(np.unique(req["prefill_node"])) == {0}
    assert set(np.unique(req["node"])) == {1, 2}
    moved = req["output_tokens"] > 1
    assert (req["transfer_bytes"][moved] == req["prompt_tokens"][moved] * KV_BYTES).all()
    assert (req["generated_tokens"] == req["output_tokens"]).all()
    block = result.summary["disaggregation"]
    assert block["transfers"] == int(moved.sum())
    assert block["transfer_GB"] == pytest.approx(req["transfer_bytes"].sum() / 1e9)
    # TTFT ends at the prefill node's first token, before the KV moves
    assert (req["first_token_s"] < req["finish_s"]).all()


def test_transfer_time_is_latency_plus_bytes_over_bandwidth(tmp_path: Path) -> None:
    """One request at a time (no port contention): the textbook transfer time."""
    raw = pd_raw(rate_rps=0.2, layerwise=False, bandwidth_GBps=2.0, latency_s=0.003)
    req = run(tmp_path, raw).requests
    moved = np.isfinite(req["transfer_s"])
    assert moved.sum() >= 2
    want = 0.003 + req["prompt_tokens"][moved] * KV_BYTES / 2e9
    np.testing.assert_allclose(req["transfer_s"][moved], want, rtol=1e-9)
    assert (req["transfer_queue_s"][moved] == 0).all()


def test_transfer_tp_and_layerwise_overlap(tmp_path: Path) -> None:
    """Bytes from the profile's shape (per GPU x TP); the overlap starts the transfer with
    the last chunk: faster than without it, never faster than its last layer."""
    def raw(layerwise: bool) -> dict[str, Any]:
        r = pd_raw(rate_rps=0.2, layerwise=layerwise, bandwidth_GBps=1.0, latency_s=0.0)
        del r["cluster"]["transfer"]["kv_bytes_per_token"]
        for group in r["cluster"]["node_groups"]:
            group["cost_model"] = {"name": "profile", "params": {"profile": "h100/llama-3-8b"}}
            del group["kv_capacity_tokens"]
        return r
    plain = run(tmp_path / "a", raw(False)).requests
    over = run(tmp_path / "b", raw(True)).requests
    moved = np.isfinite(plain["transfer_s"])
    n_bytes = plain["prompt_tokens"][moved] * KV_BYTES
    assert (plain["transfer_bytes"][moved] == n_bytes).all()
    np.testing.assert_allclose(plain["transfer_s"][moved], n_bytes / 1e9, rtol=1e-9)
    assert (over["transfer_s"][moved] < plain["transfer_s"][moved]).all()
    assert (over["transfer_s"][moved] >= n_bytes / 1e9 / 32 - 1e-12).all()  # 32 layers


def test_busy_link_queues_fifo(tmp_path: Path) -> None:
    """A slow link with many hand-offs: transfers wait for the port, none is lost."""
    raw = pd_raw(rate_rps=20.0, layerwise=False, bandwidth_GBps=0.5, link="tcp")
    req = run(tmp_path, raw).requests
    assert (req["status"] == COMPLETED).all()
    moved = np.isfinite(req["transfer_s"])
    assert (req["transfer_queue_s"][moved] > 0).any()
    lower = 500e-6 + req["prompt_tokens"][moved] * KV_BYTES / 0.5e9
    assert (req["transfer_s"][moved] >= lower - 1e-9).all()


def test_decode_admission_waits_never_loses(tmp_path: Path) -> None:
    """Decode nodes with room for few requests: transferred requests wait in their queue."""
    raw = pd_raw(rate_rps=20.0)
    raw["cluster"]["node_groups"][1]["kv_capacity_tokens"] = 2000
    raw["workload"]["output_tokens"]["params"] = {"low_tokens": 50, "high_tokens": 200}
    req = run(tmp_path, raw).requests
    assert (req["status"] == COMPLETED).all()
    assert (req["generated_tokens"] == req["output_tokens"]).all()


def test_one_place_at_a_time(tmp_path: Path) -> None:
    """Stepping the clock: each request is in at most one of prefill, transfer, decode;
    in none once recorded; and every request is recorded at the end."""
    raw = pd_raw(prefill=2, decode=2, rate_rps=15.0, link="tcp", bandwidth_GBps=1.0)
    raw["cluster"]["node_groups"][1]["kv_capacity_tokens"] = 3000
    resolved = resolve(tmp_path, raw, "dynamo_disagg", max_local_prefill_tokens=200)
    workload = workload_for(resolved, 0)
    sc = resolved.scenario
    env = simpy.Environment()
    table = RequestTable(workload)
    cluster = Cluster(env, resolved.node_specs, table, Recorder(4, (0.0, sc.duration_s)),
                      True)
    router = _router(resolved, resolved.strategies[0], env, cluster, table, 7)
    assert resolved.disagg is not None
    disagg = Disaggregation(env, cluster, table, resolved.disagg, router)
    router.start()
    seen_transfer = False
    t = 0.0
    while not router.drained.triggered and t < 300:
        t += 0.05
        env.run(until=t)
        seen_transfer |= bool(disagg.in_transfer)
        for rid in range(table.n):
            places = disagg.where(rid)
            assert len(places) <= 1, (rid, places)
            if not math.isnan(table.finish_s[rid]):
                assert not places
    assert seen_transfer
    assert router.drained.triggered
    assert all(s == COMPLETED for s in table.status)


def test_fast_forward_equals_stepping_with_transfers(tmp_path: Path) -> None:
    raw = pd_raw(prefill=1, decode=2, rate_rps=12.0, link="tcp", bandwidth_GBps=2.0)
    fast = run(tmp_path / "f", raw, "sglang_pd").requests
    raw["cluster"]["fast_forward"] = False
    slow = run(tmp_path / "s", raw, "sglang_pd").requests
    for key in ("node", "prefill_node", "status", "generated_tokens", "transfer_bytes"):
        np.testing.assert_array_equal(fast[key], slow[key])
    for key in ("first_token_s", "finish_s", "transfer_s"):
        np.testing.assert_allclose(fast[key], slow[key], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("strategy", ["pd_round_robin", "pd_least_loaded", "dynamo_disagg",
                                      "llm_d_pd", "sglang_pd", "round_robin", "least_loaded"])
def test_every_router_serves_a_pd_cluster(tmp_path: Path, strategy: str) -> None:
    raw = pd_raw(prefill=2, decode=2, rate_rps=10.0)
    req = run(tmp_path, raw, strategy).requests
    assert (req["status"] == COMPLETED).all()
    remote = req["prefill_node"] >= 0
    assert set(np.unique(req["prefill_node"][remote])) <= {0, 1}
    assert set(np.unique(req["node"])) <= {2, 3}


def test_dynamo_prefills_short_prompts_locally(tmp_path: Path) -> None:
    raw = pd_raw(prefill=1, decode=2, rate_rps=4.0)
    req = run(tmp_path, raw, "dynamo_disagg", max_local_prefill_tokens=250).requests
    local = req["prefill_node"] < 0
    assert local.any() and (~local).any()
    assert (req["prompt_tokens"][local] <= 250).all()
    assert (req["transfer_bytes"][local] == 0).all()
    assert (req["status"] == COMPLETED).all()


def test_pools_with_different_limits_and_profiles(tmp_path: Path) -> None:
    raw = pd_raw()
    raw["cluster"]["node_groups"][0]["batcher"] = {
        "name": "continuous", "params": {"max_num_seqs": 8, "max_num_batched_tokens": 4096}}
    raw["cluster"]["node_groups"][1]["batcher"] = {
        "name": "continuous", "params": {"max_num_seqs": 128, "max_num_batched_tokens": 256}}
    raw["cluster"]["node_groups"][1]["cost_model"]["params"]["step_s"] = 0.02
    req = run(tmp_path, raw).requests
    assert (req["status"] == COMPLETED).all()


@pytest.mark.parametrize(("change", "needles"), [
    (lambda r: r["cluster"]["node_groups"][0].update(role="decode"),
     ("cluster", "node_groups.0.role", "prefill")),
    (lambda r: r["cluster"]["transfer"].update(link="carrier-pigeon"),
     ("cluster.transfer.link",)),
    (lambda r: r["cluster"]["transfer"].update(bandwidth_GBps=-1),
     ("cluster.transfer.bandwidth_GBps",)),
    (lambda r: r["cluster"]["transfer"].update(
        links=[{"prefill_group": "x", "decode_group": "d"}]),
     ("transfer.links.0.prefill_group",)),
    (lambda r: r["cluster"]["transfer"].pop("kv_bytes_per_token"),
     ("cluster.transfer.kv_bytes_per_token",)),
])
def test_bad_input_is_one_line_naming_the_field(tmp_path: Path, change, needles) -> None:
    raw = pd_raw()
    change(raw)
    path = write_scenario(tmp_path, raw)
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "o")])
    expect_error(result, *needles)


def test_roles_absent_keep_the_old_columns(tmp_path: Path) -> None:
    raw = scenario_dict(duration_s=5.0, warmup_s=0.0)
    resolved = app.load(write_scenario(tmp_path, raw))
    assert resolved.disagg is None
    result = simulate(resolved, resolved.strategies[0], 0, workload_for(resolved, 0))
    assert "transfer_s" not in result.requests
    assert "disaggregation" not in result.summary


def test_batcher_hand_off_and_transferred_admission() -> None:
    """Unit level: a prefill batcher hands off at the first token; a decode batcher admits
    the transferred request only when its blocks fit, computes one token, then decodes."""
    table, pre = make([40, 40], [5, 5], blocks=100, bs=4)
    pre.prefill_only = True
    pre.enqueue(0, 0.0)
    pre.enqueue(1, 0.0)
    _, done = step(pre, 1.0)
    pre.check_invariants()
    assert pre.is_idle() and pre.kv.used_blocks == 0
    # the hand-offs are the outcomes the step recorded: status completed, one token
    assert list(table.generated_tokens) == [1, 1] and sorted(done) == [0, 1]
    _, dec = make([40, 40], [5, 5], blocks=12, bs=4)  # room for one 41-token request only
    dec.table = table
    for rid in (0, 1):
        handoff = Outcome(rid, 0, COMPLETED, 0.0, 1.0, 1.0, 1, 0, 0, 0, 40)
        assert dec.enqueue_transferred(rid, 2.0, handoff) is None
    plan = dec.plan(2.0)
    assert plan is not None and plan.chunks == [(0, 1, 40)]  # request 1 waits for blocks
    dec.apply(plan, 1, 2.0)
    dec.check_invariants()
    assert list(dec.waiting) == [1]
    finished: list[int] = []
    now = 2.0
    while len(finished) < 2 and now < 100:
        now += 1.0
        _, got = step(dec, now)
        finished += got
        dec.check_invariants()
    assert finished == [0, 1]
    assert list(table.generated_tokens) == [5, 5]
    assert list(table.first_token_s) == [1.0, 1.0]  # the prefill node's first token


def test_link_bandwidth_scales_with_the_smaller_tp_and_ports_are_fifo() -> None:
    """``schedule`` in isolation: bytes x (per GPU x TP), bandwidth x min(TP_p, TP_d), a
    per-pair link override, and FIFO reservations on the sender's and receiver's ports."""
    from types import SimpleNamespace

    from sim.model.transfer import DisaggConfig, LinkParams
    from sim.policy.base import NodeInfo

    def info(i: int, group: str, role: str) -> NodeInfo:
        return NodeInfo(i, group, "p", 8, 64, 100, 16, role=role)
    infos = (info(0, "p", "prefill"), info(1, "d", "decode"), info(2, "d2", "decode"))
    config = DisaggConfig(kv_bytes_per_token=(1000, 1000, 1000), tensor_parallel=(4, 2, 8),
                          num_layers=(10, 10, 10),
                          links={("p", "d"): LinkParams(1e6, 0.01),
                                 ("p", "d2"): LinkParams(4e6, 0.0)})
    dis = Disaggregation.__new__(Disaggregation)
    dis.config = config
    dis.cluster = SimpleNamespace(infos=infos)
    dis._egress_free = [0.0] * 3
    dis._ingress_free = [0.0] * 3
    # 1000 tokens x 1000 B = 1e6 B over 1e6 B/s x min(4, 2) = 0.5 s, + 10 ms
    done, queued, n_bytes = dis.schedule(0, 1, 1000, ready_s=1.0, prefill_end_s=1.0)
    assert (done, queued, n_bytes) == (pytest.approx(1.51), 0.0, 1_000_000)
    # the sender's port is busy until 1.5 s: the next transfer waits 0.4 s (FIFO), then
    # 1e6 B over 4e6 x min(4, 8) = 1/16 s
    done, queued, _ = dis.schedule(0, 2, 1000, ready_s=1.1, prefill_end_s=1.1)
    assert queued == pytest.approx(0.4)
    assert done == pytest.approx(1.5 + 1 / 16)


def test_per_pool_pair_link_overrides_the_default(tmp_path: Path) -> None:
    raw = pd_raw(rate_rps=0.2, layerwise=False, link="tcp",
                 links=[{"prefill_group": "p", "decode_group": "d", "link": "nvlink",
                         "bandwidth_GBps": 1.0}])
    resolved = resolve(tmp_path, raw)
    assert resolved.disagg is not None
    assert resolved.disagg.links[("p", "d")].bandwidth_Bps == 1e9
    assert resolved.disagg.links[("p", "d")].latency_s == 10e-6  # nvlink's
    req = run(tmp_path / "r", raw).requests
    moved = np.isfinite(req["transfer_s"])
    np.testing.assert_allclose(req["transfer_s"][moved],
                               10e-6 + req["prompt_tokens"][moved] * KV_BYTES / 1e9, rtol=1e-9)


@pytest.mark.parametrize("pair, alone", [("dynamo_disagg", "dynamo_kv"),
                                         ("llm_d_pd", "llm_d")])
def test_pair_router_without_roles_routes_like_its_decode_strategy(pair: str,
                                                                   alone: str) -> None:
    """In a cluster without roles a P/D router is its decode strategy, hooks included: it
    spreads the requests as evenly as that strategy on its own and gets the same TTFT tail
    (its ties draw from another random stream, so not request for request). The KV router
    was once never told of its own dispatches there and herded onto the cached nodes."""
    repo = Path(__file__).resolve().parents[1]
    overrides = ["cluster.node_groups.0.role=mixed", "cluster.node_groups.1.role=mixed",
                 "duration_s=30", "warmup_s=2"]
    spread, ttft_p99 = {}, {}
    for name in (pair, alone):
        resolved = app.load(repo / "scenarios" / "disagg_long.yaml", overrides,
                            strategies=(name,))
        result = simulate(resolved, resolved.strategies[0], 0, workload_for(resolved, 0))
        counts = np.bincount(result.requests["node"], minlength=8)
        spread[name] = counts.std() / counts.mean()
        ttft_p99[name] = result.summary["latency_s"]["ttft"]["p99"]
    assert spread[pair] < 0.1 and spread[alone] < 0.1
    assert ttft_p99[pair] < 1.5 * ttft_p99[alone] + 0.05
