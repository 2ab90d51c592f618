"""Twins keep the prefix tree (issue 12.3): conversations whose turns extend the previous
prompt, all opening with one shared system prompt (as Mooncake's conversation trace), are
modelled as multi_turn sessions over a shared root instead of one prefix group, so random
routing finds as little reuse in the twin as in the trace."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from sim import app
from sim.workload.spec import WorkloadSpec, build_workload
from sim.workload.trace_stats import trace_stats
from sim.workload.traces import TraceSpec, trace_workload
from sim.workload.twin import fit_twin, prefix_tree, twin_warnings

REPO = Path(__file__).resolve().parents[1]


def conversation_trace(path: Path, conversations: int = 150, span_s: float = 600.0,
                       seed: int = 0) -> Path:
    """Mooncake-format conversations that all open with one 512-token system prompt (block
    0): turn k's prompt is the system prompt, every earlier message and answer, and a new
    message; its hash ids are the conversation's whole blocks plus a private partial one."""
    rng = np.random.default_rng(seed)
    rows, next_id = [], 1
    for start in np.sort(rng.uniform(0, span_s, conversations)):
        t, history, ids = float(start), 512, [0]
        for _ in range(int(rng.integers(1, 9))):
            prompt = history + int(rng.integers(200, 900))
            full = prompt // 512
            while len(ids) < full:
                ids.append(next_id)
                next_id += 1
            hashes = ids[:full] + ([next_id] if prompt % 512 else [])
            next_id += 1
            out = int(rng.integers(50, 400))
            rows.append({"timestamp": int(t * 1000), "input_length": prompt,
                         "output_length": out, "hash_ids": hashes})
            history, ids = prompt + out, ids[:full]
            t += float(rng.exponential(20.0))
    rows.sort(key=lambda r: r["timestamp"])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def conv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return conversation_trace(tmp_path_factory.mktemp("conv") / "conv.jsonl")


def _load(path: Path, **options: float) -> object:
    return trace_workload(TraceSpec(format="mooncake", path=str(path), **options), None, 0)


def test_prefix_tree_finds_the_conversations(conv: Path) -> None:
    figures = prefix_tree(_load(conv), 512).figures()  # type: ignore[arg-type]
    assert figures["chain_share"] > 0.6 and figures["root_share"] < 0.01
    assert 150 <= figures["conversations"] <= 220  # short turns may look like new ones
    assert 3.0 < figures["mean_turns"] < 4.7 and figures["max_turns"] >= 8


def test_conversation_twin_keeps_reuse_that_one_group_loses(conv: Path) -> None:
    """One prefix group (every request starts with block 0) makes random-routing reuse about
    twice the trace's, and twin_warnings says so; the conversation twin (chosen by default)
    stays within tolerance on every figure."""
    w = _load(conv)
    reference = trace_stats(w)  # type: ignore[arg-type]
    span = float(w.arrival_s[-1])  # type: ignore[attr-defined]
    chosen = fit_twin(w)  # type: ignore[arg-type]
    assert "sessions" in chosen and chosen["prefixes"]["params"]["groups"] == 1
    grouped = fit_twin(w, conversations=False)  # type: ignore[arg-type]
    assert "sessions" not in grouped
    for seed in (0, 1):
        good = trace_stats(build_workload(WorkloadSpec.model_validate(chosen), span, seed))
        assert twin_warnings(reference, good) == [], seed
        assert prefix_tree(build_workload(WorkloadSpec.model_validate(chosen), span, seed),
                           512).figures()["chain_share"] > 0.55
        bad = trace_stats(build_workload(WorkloadSpec.model_validate(grouped), span, seed))
        assert any(line.startswith("twin's prefix_reuse.random")
                   for line in twin_warnings(reference, bad))


def test_round_robin_hits_of_the_conversation_twin_match_the_replay(conv: Path,
                                                                    tmp_path: Path) -> None:
    """Simulated: round robin's cache hit rate on the conversation twin is the replay's
    (within 8 points); on the one-group twin it is far higher."""
    raw = yaml.safe_load((REPO / "scenarios" / "trace_mooncake.yaml").read_text())
    raw["router"]["strategies"] = [{"name": "round_robin"}]
    trace = {"format": "mooncake", "path": str(conv), "target_rate_rps": 5}
    w = _load(conv, target_rate_rps=5)
    raw["duration_s"] = float(w.arrival_s[-1])  # type: ignore[attr-defined]

    def hits(workload: dict[str, object], name: str) -> float:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**raw, "name": name, "workload": workload}))
        result = app.run_all(app.load(path), tmp_path / "out", keep_records=False)[0]
        return float(result.summary["cache"]["hit_rate"])

    replay = hits({"trace": trace}, "replay")
    twin = hits(fit_twin(w, conversations=True), "conversations")  # type: ignore[arg-type]
    grouped = hits(fit_twin(w, conversations=False), "grouped")  # type: ignore[arg-type]
    assert abs(twin - replay) < 0.08, (replay, twin)
    assert grouped - replay > 0.2, (replay, grouped)


def test_twins_of_the_reference_traces_choose_their_structure(shared_dir: Path) -> None:
    """Mooncake's synthetic trace has few conversations (15 % of requests continue one): a
    conversation twin would lose its prompt-output correlation (outputs are drawn given the
    new message), so the measurement keeps prefix groups, and the twin misses nothing."""
    path = shared_dir / "traces" / "synthetic_trace.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    w = _load(path)
    tree = prefix_tree(w, 512).figures()  # type: ignore[arg-type]
    assert 0.1 < tree["chain_share"] < 0.3
    block = fit_twin(w)  # type: ignore[arg-type]
    assert "sessions" not in block
    span = float(w.arrival_s[-1])  # type: ignore[attr-defined]
    twin = build_workload(WorkloadSpec.model_validate(block), span, 0)
    assert twin_warnings(trace_stats(w), trace_stats(twin)) == []  # type: ignore[arg-type]


def test_cli_names_the_tree_and_the_chosen_structure(conv: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sim.cli import main

    stats = CliRunner().invoke(main, ["trace", "stats", str(conv)])
    assert stats.exit_code == 0 and "prefix tree: conversations" in stats.output
    out = tmp_path / "twin.yaml"
    fit = CliRunner().invoke(main, ["trace", "fit", str(conv), "-o", str(out)])
    assert fit.exit_code == 0, fit.output
    assert "twin's prefixes: conversations" in fit.output
    assert "sessions" in yaml.safe_load(out.read_text())["workload"]
    off = CliRunner().invoke(main, ["trace", "fit", str(conv), "-o", str(out),
                                    "--conversations", "off"])
    assert "prefix groups" in off.output and "prefix_reuse.random" in off.stderr
