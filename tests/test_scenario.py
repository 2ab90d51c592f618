"""Scenario loading: every kind of bad input gives one line naming file, field and expectation.

The error cases run ``simlb validate`` through click's test runner, so they check what a user
sees: exit code 2 and a single stderr line, never a traceback.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from pydantic import ValidationError

from sim import app
from sim.cli import main
from sim.errors import ScenarioError
from sim.policy.power_of_two import PowerOfTwo
from sim.scenario import apply_override, read_raw
from sim.spec import format_validation_error

from conftest import REPO, expect_error, scenario_dict, write_scenario

DELETE = object()  # marks a key to remove in ``changed``
PROFILE = REPO / "profiles" / "a100" / "llama-3-8b.json"


def changed(*edits: tuple[str, Any]) -> dict[str, Any]:
    """``scenario_dict()`` with ``(dotted.path, value)`` edits applied (``DELETE`` removes)."""
    raw = scenario_dict()
    for path, value in edits:
        *parents, last = path.split(".")
        node: Any = raw
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is DELETE:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return raw


def validate(*paths: Path) -> Result:
    """Run ``simlb validate`` on ``paths``."""
    return CliRunner().invoke(main, ["validate", *map(str, paths)])




def profile_node(profile: str, **batcher: int) -> dict[str, Any]:
    """A node group on the ``profile`` cost model, with optional batcher parameters."""
    return {"count": 1, "cost_model": {"name": "profile", "params": {"profile": profile}},
            "batcher": {"name": "continuous", "params": batcher}}


def test_shipped_scenarios_validate() -> None:
    """Every file in scenarios/ passes ``simlb validate``."""
    result = validate(*sorted((REPO / "scenarios").glob("*.yaml")))
    assert result.exit_code == 0, result.output
    assert result.stdout.count(": ok (") == len(list((REPO / "scenarios").glob("*.yaml")))


def test_missing_file(tmp_path: Path) -> None:
    """A missing scenario file is named, with what was expected."""
    path = tmp_path / "nope.yaml"
    expect_error(validate(path), str(path), "file not found", "expected a scenario YAML file")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    """A directory is refused as a scenario file."""
    expect_error(validate(tmp_path), str(tmp_path), "is a directory", "expected a scenario")


def test_binary_file(tmp_path: Path) -> None:
    """A file that is not UTF-8 text gives a one-line error, not a decode traceback."""
    path = tmp_path / "s.yaml"
    path.write_bytes(b"\xff\xfe\x00binary")
    expect_error(validate(path), str(path), "not UTF-8", "expected a YAML file")


def test_malformed_yaml_names_line_and_column(tmp_path: Path) -> None:
    """A YAML syntax error names the line and column."""
    path = tmp_path / "s.yaml"
    path.write_text("schema_version: 1\nname: [a, b\nseed: 3\n", encoding="utf-8")
    expect_error(validate(path), str(path), "line 3, column 5", "invalid YAML", "expected")


def test_duplicate_key_is_refused(tmp_path: Path) -> None:
    """A key given twice (PyYAML would keep the last silently) names both lines."""
    path = tmp_path / "s.yaml"
    text = (REPO / "scenarios" / "smoke.yaml").read_text(encoding="utf-8")
    lines = text.count("\n")
    path.write_text(text + "seed: 99\n", encoding="utf-8")
    expect_error(validate(path), str(path), f"line {lines + 1}, column 1",
                 "duplicate key 'seed' (first given on line", "expected each key once")


def test_nested_duplicate_key_is_refused_but_merge_keys_may_be_overridden(
        tmp_path: Path) -> None:
    """Duplicates inside a nested mapping are refused; ``<<: *anchor`` entries are not
    duplicates."""
    path = tmp_path / "s.yaml"
    path.write_text("schema_version: 1\nslo: {ttft_s: 1, ttft_s: 2}\n", encoding="utf-8")
    expect_error(validate(path), str(path), "line 2, column 18", "duplicate key 'ttft_s'")
    from sim.scenario import read_raw
    path.write_text("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n", encoding="utf-8")
    assert read_raw(path)["other"] == {"x": 1, "y": 3}


@pytest.mark.parametrize(("text", "got"), [("- 1\n- 2\n", "got a list"),
                                           ("just text\n", "got a str"),
                                           ("", "got an empty file")])
def test_top_level_not_a_mapping(tmp_path: Path, text: str, got: str) -> None:
    """The top level must be a mapping."""
    path = tmp_path / "s.yaml"
    path.write_text(text, encoding="utf-8")
    expect_error(validate(path), str(path), "expected a YAML mapping", got)


@pytest.mark.parametrize(("edits", "needles"), [
    ([("schema_version", DELETE)], ["schema_version: missing", "expected 'schema_version: 1'"]),
    ([("schema_version", 2)], ["schema_version: expected 1", "got 2"]),
    ([("schema_version", "1")], ["schema_version: expected 1", "got '1'"]),
    ([("colour", "red")], ["colour: unknown key", "expected one of: schema_version, name"]),
    ([("router.strategies.0", {"name": "power_of_two", "params": {"laod": "queue"}})],
     ["router.strategies.0.params.laod: unknown key; did you mean 'load'?",
      "expected one of: load"]),
    ([("router.strategies.0.params", {"laod": 1})],
     ["router.strategies.0.params.laod: unknown key", "takes no parameters"]),
    ([("cluster.node_groups.0.cuont", 2)],
     ["cluster.node_groups.0.cuont: unknown key; did you mean 'count'?"]),
    ([("workload.prefixes", {"name": "shared_prefix", "parms": {}})],
     ["workload.prefixes.parms: unknown key; did you mean 'params'?"]),
    ([("router.strategies.0.name", "round_robn")],
     ["router.strategies.0.name: unknown strategy 'round_robn'", "did you mean 'round_robin'",
      "known: "]),
    ([("workload.arrivals.name", "poison")],
     ["workload.arrivals.name: unknown arrivals 'poison'", "did you mean 'poisson'"]),
    ([("workload.prompt_tokens.name", "unifrm")],
     ["workload.prompt_tokens.name: unknown lengths 'unifrm'", "did you mean 'uniform'"]),
    ([("workload.output_tokens.name", "lognorm")],
     ["workload.output_tokens.name: unknown lengths 'lognorm'", "did you mean 'lognormal'"]),
    ([("cluster.node_groups.0.batcher", {"name": "continous"})],
     ["cluster.node_groups.0.batcher.name: unknown batcher 'continous'",
      "did you mean 'continuous'"]),
    ([("cluster.node_groups.0.cost_model.name", "linera")],
     ["cluster.node_groups.0.cost_model.name: unknown cost_model 'linera'",
      "did you mean 'linear'"]),
], ids=["no-schema-version", "schema-version-2", "schema-version-str", "unknown-top-key",
        "unknown-param-suggests", "unknown-param-none-taken", "unknown-group-key",
        "unknown-component-key", "unknown-strategy", "unknown-arrivals", "unknown-prompt-length",
        "unknown-output-length", "unknown-batcher", "unknown-cost-model"])
def test_schema_and_name_errors(tmp_path: Path, edits: list[tuple[str, Any]],
                                needles: list[str]) -> None:
    """Schema violations and unknown names name the file, the field and what is expected."""
    path = write_scenario(tmp_path, changed(*edits))
    expect_error(validate(path), f"{path}: ", *needles)


@pytest.mark.parametrize(("edits", "needles"), [
    ([("cluster.node_groups.0.count", -1)],
     ["cluster.node_groups.0.count: Input should be greater than or equal to 1 (got -1)"]),
    ([("workload.arrivals.params.rate_rps", -2.0)],
     ["workload.arrivals.params.rate_rps: Input should be greater than 0 (got -2.0)"]),
    ([("duration_s", float("nan"))], ["duration_s: Input should be a finite number (got nan)"]),
    ([("workload.arrivals.params.rate_rps", float("nan"))],
     ["workload.arrivals.params.rate_rps: Input should be a finite number (got nan)"]),
    ([("router.telemetry_interval_s", float("inf"))],
     ["router.telemetry_interval_s: Input should be a finite number (got inf)"]),
    ([("workload.arrivals.params.rate_rps", float("inf"))],
     ["workload.arrivals.params.rate_rps: Input should be a finite number (got inf)"]),
    ([("cluster.node_groups.0.cost_model.params.step_s", float("-inf"))],
     ["cluster.node_groups.0.cost_model.params.step_s: Input should be a finite number"]),
    ([("duration_s", "long")], ["duration_s: Input should be a valid number", "(got 'long')"]),
    ([("cluster.node_groups.0.count", "two")],
     ["cluster.node_groups.0.count: Input should be a valid integer", "(got 'two')"]),
    ([("workload.prompt_tokens.params.low_tokens", [1, 2])],
     ["workload.prompt_tokens.params.low_tokens: Input should be a valid integer",
      "(got [1, 2])"]),
    ([("warmup_s", 60.0)], ["warmup_s: expected less than duration_s (60), got 60"]),
    ([("warmup_s", 90.0)], ["warmup_s: expected less than duration_s (60), got 90"]),
    ([("router.strategies", [{"name": "random"}, {"name": "jsq"}, {"name": "random"}])],
     ["router.strategies: items 0 and 2 are both labelled 'random'",
      "expected unique labels"]),
    ([("name", "..")], ["name: String should match pattern", "(got '..')"]),
    ([("workload.prompt_tokens.params.high_tokens", 10)],
     ["workload.prompt_tokens.params.high_tokens: high_tokens must be >= low_tokens (50)"]),
    ([("cluster.node_groups.0.kv_capacity_tokens", 8)],
     ["cluster.node_groups.0.kv_capacity_tokens: expected at least one block (16 tokens",
      "got 8"]),
    ([("cluster.node_groups.0.kv_capacity_tokens", DELETE)],
     ["cluster.node_groups.0.kv_capacity_tokens: required with cost model 'linear'"]),
    ([("cluster.node_groups.0.batcher",
       {"name": "continuous", "params": {"max_num_seqs": 64, "max_num_batched_tokens": 32}})],
     ["cluster.node_groups.0.batcher.params.max_num_batched_tokens: expected at least "
      "max_num_seqs (64)", "got 32"]),
], ids=["negative-int", "negative-float", "nan-top", "nan-param", "inf-top", "inf-param",
        "minus-inf-cost", "string-for-float", "string-for-int", "list-for-int",
        "warmup-equal", "warmup-above", "duplicate-labels", "dot-name", "param-cross-check",
        "kv-below-one-block", "kv-missing", "batched-below-seqs"])
def test_value_errors(tmp_path: Path, edits: list[tuple[str, Any]], needles: list[str]) -> None:
    """Out-of-range, non-finite, mistyped and inconsistent values name field and expectation."""
    path = write_scenario(tmp_path, changed(*edits))
    expect_error(validate(path), f"{path}: ", *needles)


def test_nan_written_as_yaml_dot_nan(tmp_path: Path) -> None:
    """YAML's own ``.nan`` and ``.inf`` spellings are refused."""
    path = tmp_path / "s.yaml"
    text = yaml.safe_dump(scenario_dict(), sort_keys=False)
    path.write_text(text.replace("rate_rps: 8.0", "rate_rps: .nan"), encoding="utf-8")
    expect_error(validate(path), "workload.arrivals.params.rate_rps", "finite number")
    path.write_text(text.replace("duration_s: 60.0", "duration_s: .inf"), encoding="utf-8")
    expect_error(validate(path), "duration_s: Input should be a finite number (got inf)")


def test_missing_profile(tmp_path: Path) -> None:
    """A profile that does not exist names the scenario field and lists the shipped ones."""
    path = write_scenario(tmp_path, changed(
        ("cluster.node_groups", [profile_node("nope/none")])))
    expect_error(validate(path), str(path), "cluster.node_groups.0.cost_model.params.profile",
                 "nope/none", "no profile file", "shipped profiles: ", "a100/llama-3-8b")


def test_corrupt_profile_json(tmp_path: Path) -> None:
    """A profile that is not JSON names the scenario, the field, the profile file and where."""
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "simlb.profile/v1",\n  oops}', encoding="utf-8")
    path = write_scenario(tmp_path, changed(("cluster.node_groups", [profile_node(str(bad))])))
    expect_error(validate(path), f"{path}: cluster.node_groups.0.cost_model.params.profile: "
                 f"{bad}: invalid JSON", "line 2 column 3")


def test_profile_with_wrong_schema_id(tmp_path: Path) -> None:
    """A profile of another schema is refused, naming both files and the profile's field."""
    data = json.loads(PROFILE.read_text(encoding="utf-8"))
    data["schema"] = "simlb.profile/v9"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data), encoding="utf-8")
    path = write_scenario(tmp_path, changed(
        ("cluster.node_groups", [profile_node("other.json")])))  # relative to the scenario
    expect_error(validate(path), f"{path}: cluster.node_groups.0.cost_model.params.profile: "
                 f"{other}: schema: expected 'simlb.profile/v1', got 'simlb.profile/v9'")


def test_engine_limits_beyond_the_profile(tmp_path: Path) -> None:
    """Engine limits beyond the profile's refusal limit name the limit and the profile."""
    node = profile_node("a100/llama-3-8b", max_num_seqs=64, max_num_batched_tokens=200_000)
    path = write_scenario(tmp_path, changed(("cluster.node_groups", [node])))
    expect_error(validate(path), str(path),
                 "cluster.node_groups.0.batcher.params.max_num_batched_tokens: ",
                 "beyond the 131072-token limit", f"(profile {PROFILE})")
    node = profile_node("a100/llama-3-8b", max_num_seqs=8192, max_num_batched_tokens=16384)
    path = write_scenario(tmp_path, changed(("cluster.node_groups", [node])))
    expect_error(validate(path), "cluster.node_groups.0.batcher.params.max_num_seqs: ",
                 "4096-sequence limit")


def test_memory_utilization_leaving_no_kv(tmp_path: Path) -> None:
    """A GPU memory share too small for the weights leaves no KV block: an impossible node."""
    node = profile_node("a100/llama-3-8b") | {"gpu_memory_utilization": 0.05}
    path = write_scenario(tmp_path, changed(("cluster.node_groups", [node])))
    expect_error(validate(path), "cluster.node_groups.0.gpu_memory_utilization: leaves a KV "
                 "cache of 0 tokens", "less than one block", "expected room")


def test_validate_reports_every_file(tmp_path: Path) -> None:
    """With several files, the good ones are reported ok and the bad one fails the command."""
    good = write_scenario(tmp_path, scenario_dict(), "good.yaml")
    bad = write_scenario(tmp_path, changed(("seed", -3)), "bad.yaml")
    other = write_scenario(tmp_path, scenario_dict(name="other"), "other.yaml")
    result = validate(good, bad, other)
    expect_error(result, f"{bad}: seed: Input should be greater than or equal to 0 (got -3)")
    assert f"{good}: ok (2 nodes, 1 strategies, 60 s)" in result.stdout
    assert f"{other}: ok" in result.stdout
    assert str(bad) not in result.stdout


def test_read_raw_returns_the_tree(tmp_path: Path) -> None:
    """A valid file reads back as the tree that was written."""
    raw = scenario_dict()
    assert read_raw(write_scenario(tmp_path, raw)) == raw


@pytest.mark.parametrize(("assignment", "path", "value"), [
    ("seed=11", ["seed"], 11),
    ("duration_s=2.5", ["duration_s"], 2.5),
    ("cluster.fast_forward=false", ["cluster", "fast_forward"], False),
    ("cluster.node_groups.0.count=4", ["cluster", "node_groups", 0, "count"], 4),
    ("name=a=b", ["name"], "a=b"),
    ("description=x: [y", ["description"], "x: [y"),
    ("workload.prefixes={name: shared_prefix}", ["workload", "prefixes"],
     {"name": "shared_prefix"}),
    ("slo.ttft_s=0.5", ["slo", "ttft_s"], 0.5),
    ("router.strategies.0.params.load=queue", ["router", "strategies", 0, "params", "load"],
     "queue"),
])
def test_apply_override_sets_values(assignment: str, path: list[Any], value: Any) -> None:
    """Overrides parse YAML values, create missing mappings and address list items."""
    raw = scenario_dict()
    apply_override(raw, assignment)
    node: Any = raw
    for key in path:
        node = node[key]
    assert node == value


def test_apply_override_null_removes_the_key(tmp_path: Path) -> None:
    """``key=null`` (or ``key=``) removes the key, so the schema default applies."""
    raw = scenario_dict()
    apply_override(raw, "warmup_s=null")
    apply_override(raw, "router.telemetry_interval_s=")
    assert "warmup_s" not in raw
    assert "telemetry_interval_s" not in raw["router"]
    resolved = app.load(write_scenario(tmp_path, scenario_dict()),
                        ["warmup_s=null", "slo=null"])
    assert resolved.scenario.warmup_s == 0.0
    assert resolved.scenario.slo.ttft_s is None


@pytest.mark.parametrize(("assignment", "field", "message"), [
    ("seed", "--set", "expected key.path=value, got 'seed'"),
    ("=3", "--set", "expected a dotted key path"),
    ("cluster..count=3", "--set", "expected a dotted key path"),
    ("seed.x=1", "--set seed.x", "seed is a value (7), not a mapping or list"),
    ("cluster.node_groups.1.count=1", "--set cluster.node_groups.1.count",
     "cluster.node_groups.1: expected a list index (0..0), got '1'"),
    ("cluster.node_groups.first.count=1", "--set cluster.node_groups.first.count",
     "expected a list index (0..0), got 'first'"),
])
def test_apply_override_errors(assignment: str, field: str, message: str) -> None:
    """Bad overrides raise ScenarioError with the ``--set`` path as field, raw tree untouched."""
    raw = scenario_dict()
    before = copy.deepcopy(raw)
    with pytest.raises(ScenarioError) as info:
        apply_override(raw, assignment)
    assert info.value.field == field
    assert message in info.value.detail
    assert raw == before


def test_load_keeps_the_field_of_override_errors(tmp_path: Path) -> None:
    """``app.load`` adds the scenario file to an override error and keeps its field."""
    path = write_scenario(tmp_path, scenario_dict())
    with pytest.raises(ScenarioError) as info:
        app.load(path, ["seed.x=1"])
    assert (info.value.source, info.value.field) == (str(path), "--set seed.x")


def test_format_validation_error_counts_the_rest() -> None:
    """The first error is shown with its path, and the others are counted."""
    with pytest.raises(ValidationError) as info:
        PowerOfTwo.Params.model_validate({"laod": 1, "load": "nope", "x": 2})
    text = format_validation_error(info.value, "router.strategies.3.params", PowerOfTwo.Params)
    assert text.startswith("router.strategies.3.params.")
    assert text.endswith("[and 2 more errors]")
    assert "\n" not in text


def test_scenario_reference_is_up_to_date():
    """docs/scenarios.md lists every key and registered component as the code defines them
    (regenerate with python docs/render_scenario_tables.py)."""
    proc = subprocess.run([sys.executable, str(REPO / "docs" / "render_scenario_tables.py"),
                           "--check"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
