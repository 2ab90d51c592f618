"""Fuzzing the command line (issue 13): random scenario documents and random bytes as traces
given to ``simlb validate`` and ``simlb run`` end with exit code 0 or 2, one line on error,
no traceback, no directory left behind and bounded memory."""

from __future__ import annotations

import copy
import gzip
import json
import resource
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.cli import main

from conftest import scenario_dict

#: small limits, so that no document the fuzzer writes can run for long
LIMITS = {"max_requests": 3000, "max_nodes": 8, "max_timeline_rows": 200_000,
          "max_monitor_samples": 200_000, "max_arrival_draws": 200_000, "max_runs": 3}
FUZZ = settings(max_examples=40, deadline=timedelta(seconds=30), derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
#: the peak memory (resident set) allowed to the whole test process
MAX_RSS_BYTES = 3 << 30

PATHS = ("name", "schema_version", "seed", "replications", "duration_s", "warmup_s",
         "drain_timeout_s", "cluster.node_groups.0.count",
         "cluster.node_groups.0.kv_capacity_tokens", "cluster.node_groups.0.block_size_tokens",
         "cluster.node_groups.0.max_model_len_tokens", "cluster.node_groups.0.name",
         "cluster.fast_forward", "cluster.slowdowns", "router.telemetry_interval_s",
         "router.replicas", "router.strategies.0.name", "router.strategies.0.label",
         "router.strategies", "workload.arrivals.name", "workload.arrivals.params.rate_rps",
         "workload.arrivals.params", "workload.prompt_tokens.params.low_tokens",
         "workload.prompt_tokens.params.high_tokens", "workload.output_tokens.params.high_tokens",
         "workload.max_output_tokens", "metrics.bucket_s", "metrics.monitor_interval_s",
         "metrics.grade_on", "slo.ttft_s", "slo", "workload", "cluster")

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.integers(-(10**40), 10**40),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(
        [0, 1, 2, 1e-300, 1e-9, 1e9, 1e308, -1, 0.5, "", "report", ".hidden", "a/b", "\x00",
         "round_robin", "poisson", "gamma", "mmpp2", "piecewise", "1e30"]),
    st.text(max_size=12))
#: numbers a user might write, from tiny to huge (most mutations keep the document valid)
NUMBERS = st.one_of(
    st.integers(0, 64), st.integers(1, 10**6),
    st.floats(-30, 30).map(lambda e: float(f"{10.0 ** e:.3g}")),
    st.sampled_from([0.0, 0.001, 0.5, 1.0, 2.0, 1e-300, 1e308, 10**30]))
GARBAGE = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6)


def _base() -> dict[str, Any]:
    raw = scenario_dict(duration_s=4.0, warmup_s=1.0, limits=dict(LIMITS))
    raw["router"]["strategies"] = [{"name": "round_robin"}, {"name": "least_loaded"}]
    return raw


def _assign(raw: dict[str, Any], path: str, value: Any) -> None:
    """Set ``path`` (dotted, list items by index) in ``raw`` when it can be reached."""
    node: Any = raw
    keys = path.split(".")
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                return
            index = int(key)
            if last:
                node[index] = value
            node = node[index]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            elif not isinstance(node.get(key), dict | list):
                node[key] = {}
            node = node[key]
        else:
            return


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    """A scenario file: a valid small scenario with a few fields replaced by random values,
    or random text, or random bytes."""
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "text", "bytes"]))
    if kind == "text":
        return draw(st.text(max_size=300)).encode("utf-8", "surrogatepass")
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    raw = _base()
    for _ in range(draw(st.integers(0, 3))):
        value = draw(st.one_of(NUMBERS, NUMBERS, NUMBERS, GARBAGE))
        _assign(raw, draw(st.sampled_from(PATHS)), value)
    raw["limits"] = dict(LIMITS)  # the fuzzer may not lift them
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True).encode("utf-8")


HEADERS = {"azure": "TIMESTAMP,ContextTokens,GeneratedTokens",
           "vidur": "arrived_at,num_prefill_tokens,num_decode_tokens",
           "burstgpt": "Timestamp,Model,Request tokens,Response tokens", "csv": "t,p,o"}
JSON_KEYS = {"mooncake": ("timestamp", "input_length", "output_length", "hash_ids"),
             "jsonl": ("t", "p", "o")}
FIELDS = st.one_of(st.integers(0, 3000).map(str), st.sampled_from(
    ["0", "-1", "1e30", "nan", "", "x", "2023-11-16 18:15:00.5", "ChatGPT", "1.5", "\x00"]))


@st.composite
def _trace_text(draw: st.DrawFn, fmt: str) -> bytes:
    """A header (or JSON keys) of the format and a few rows of mostly plausible fields."""
    rows = draw(st.lists(st.lists(FIELDS, min_size=2, max_size=5), max_size=3))
    if fmt in JSON_KEYS:
        keys = JSON_KEYS[fmt]
        lines = []
        for row in rows:
            record: dict[str, Any] = {k: float(v) if v.replace(".", "", 1).isdigit() else v
                                      for k, v in zip(keys, row, strict=False)}
            if "hash_ids" in keys:
                record["hash_ids"] = [int(v) for v in row if v.isdigit()]
            lines.append(json.dumps(record))
        return "\n".join(lines).encode()
    header = HEADERS.get(fmt, "t,p,o")
    ok = [[f"{i * 0.25:g}", "ChatGPT", "120", "30"] for i in range(draw(st.integers(0, 40)))]
    if fmt == "azure":
        ok = [[f"2023-11-16 18:15:{i // 4:02d}.{(i % 4) * 25:02d}", "120", "30"]
              for i in range(len(ok))]
    elif fmt != "burstgpt":
        ok = [[r[0], r[2], r[3]] for r in ok]
    return "\n".join([header] + [",".join(r) for r in ok + rows]).encode()


@st.composite
def traces(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    """A trace of some format: rows of plausible and odd fields, or random bytes; plain,
    gzip-compressed or a truncated gzip stream."""
    fmt = draw(st.sampled_from(["azure", "mooncake", "burstgpt", "vidur", "csv", "jsonl",
                                "parquet"]))
    data = draw(st.one_of(st.binary(max_size=400), _trace_text(fmt)))
    packing = draw(st.sampled_from(["plain", "plain", "gzip", "truncated"]))
    if packing != "plain":
        data = gzip.compress(data)
        if packing == "truncated":
            data = data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    trace: dict[str, Any] = {"format": fmt, "path": "trace.bin"}
    if fmt in ("csv", "jsonl", "parquet"):
        trace["columns"] = {"arrival": "t", "prompt_tokens": "p", "output_tokens": "o"}
    return data, trace


def _invoke(*args: Any) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="simlb")


def _check(result: Result) -> None:
    """Exit 0 or 2; on error one line, never a traceback."""
    assert result.exit_code in (0, 2), (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        lines = result.stderr.splitlines()
        errors = [line for line in lines if line.startswith("simlb: error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
        assert errors[0].isprintable()


def _validate_and_run(folder: Path, scenario: Path) -> None:
    _check(_invoke("validate", scenario))
    out = folder / "out"
    result = _invoke("run", scenario, "--out", out, "-q")
    _check(result)
    leftovers = list(out.rglob(".*")) if out.exists() else []
    assert not leftovers, leftovers
    if result.exit_code == 2 and "served no request" not in result.stderr:
        assert not out.exists(), result.stderr  # refused: nothing written
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 < MAX_RSS_BYTES


@FUZZ
@given(document=documents())
def test_random_scenario_documents(tmp_path_factory: Any, document: bytes) -> None:
    """Random scenario documents: exit 0 or 2, one line, no traceback, nothing left behind."""
    folder = tmp_path_factory.mktemp("fuzz")
    scenario = folder / "s.yaml"
    scenario.write_bytes(document)
    _validate_and_run(folder, scenario)


@FUZZ
@given(trace=traces())
def test_random_bytes_as_traces(tmp_path_factory: Any, trace: tuple[bytes, dict]) -> None:
    """Random bytes as a trace of each format: exit 0 or 2, one line, no traceback."""
    data, spec = trace
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "trace.bin").write_bytes(data)
    raw = copy.deepcopy(_base())
    raw["workload"] = {"trace": spec}
    scenario = folder / "s.yaml"
    scenario.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    _validate_and_run(folder, scenario)
