"""Scenario files: a strict schema, command-line overrides, and one-line errors.

A scenario is YAML validated by the pydantic models below (unknown keys rejected, units in key
names, ``schema_version`` required). Every pluggable part is ``{name, params}``; the params are
checked against the named class while loading, so a typo fails before anything runs with the
field path in the message. ``--set a.b.c=value`` overrides edit the raw YAML tree before
validation (values parsed as YAML scalars, list items addressed by index), so they get the same
checks. The loaded ``Scenario`` is frozen; its ``model_dump`` is what each run directory stores
as ``scenario.resolved.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, model_validator

from sim.errors import ScenarioError
from sim.spec import ComponentSpec, StrictModel, format_validation_error
from sim.workload.spec import WorkloadSpec

SCHEMA_VERSION = 1
GRADE_SENSES = ("batch_occupancy", "kv_occupancy", "busy", "token_share", "mfu")


class Model(StrictModel):
    """Scenario models: frozen, strict about unknown keys, no NaN or infinity."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class NodeGroupSpec(Model):
    """``count`` identical nodes (each one model replica, possibly on several GPUs)."""

    name: str = Field("default", pattern=r"^[A-Za-z0-9_.-]+$")
    count: int = Field(ge=1)
    cost_model: ComponentSpec = Field(
        description="{name: profile, params: {profile: h100/llama-3-8b}} or a test double")
    kv_capacity_tokens: int | None = Field(
        None, ge=1, description="KV cache size of the node; default: from the profile")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="recompute the profile's KV capacity for this setting")
    block_size_tokens: int = Field(16, ge=1, le=1024)
    prefix_caching: bool = True
    max_model_len_tokens: int | None = Field(None, ge=2)
    batcher: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="continuous"))


class ClusterSpec(Model):
    """The nodes, in groups."""

    node_groups: list[NodeGroupSpec] = Field(min_length=1)
    fast_forward: bool = Field(
        True, description="compute runs of identical decode iterations in closed form")


class StrategySpec(ComponentSpec):
    """A strategy to compare, with an optional label (default: its name)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    label: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")

    @property
    def display(self) -> str:
        """The label used in tables and result paths."""
        return self.label or self.name


class RouterSpec(Model):
    """The strategies to compare and what the router observes."""

    strategies: list[StrategySpec] = Field(min_length=1)
    telemetry_interval_s: float = Field(
        0.1, ge=0, description="node telemetry refresh period; 0 = fresh for every decision")

    @model_validator(mode="after")
    def _unique_labels(self) -> RouterSpec:
        labels = [s.display for s in self.strategies]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"strategy labels must be unique; give a 'label' to: {dupes}")
        return self


class SloSpec(Model):
    """Per-request service-level objectives; goodput counts requests meeting all of them."""

    ttft_s: float | None = Field(None, gt=0)
    tpot_s: float | None = Field(None, gt=0)
    e2e_s: float | None = Field(None, gt=0)


class MetricsSpec(Model):
    """Measurement settings."""

    bucket_s: float = Field(1.0, gt=0, description="width of the over-time series buckets")
    grade_on: Literal["batch_occupancy", "kv_occupancy", "busy", "token_share", "mfu"] = Field(
        "batch_occupancy", description="which utilisation sense the balance grade uses")


class Scenario(Model):
    """A whole scenario file."""

    schema_version: Literal[1]
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    seed: int = Field(0, ge=0)
    replications: int = Field(1, ge=1)
    duration_s: float = Field(gt=0, description="arrivals are generated in [0, duration_s)")
    warmup_s: float = Field(0.0, ge=0, description="requests arriving earlier are not measured")
    drain_timeout_s: float = Field(
        600.0, ge=0, description="how long past duration_s to let requests finish")
    cluster: ClusterSpec
    router: RouterSpec
    workload: WorkloadSpec
    slo: SloSpec = Field(default_factory=SloSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)

    @model_validator(mode="after")
    def _warmup_inside(self) -> Scenario:
        if self.warmup_s >= self.duration_s:
            raise ValueError(f"warmup_s ({self.warmup_s}) must be below duration_s "
                             f"({self.duration_s})")
        return self

    @property
    def n_nodes(self) -> int:
        """Total nodes over all groups."""
        return sum(g.count for g in self.cluster.node_groups)


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.0.c=value`` assignment to the raw scenario tree, in place."""
    if "=" not in assignment:
        raise ScenarioError(f"--set expects key.path=value, got {assignment!r}")
    path, _, text = assignment.partition("=")
    keys = [k for k in path.strip().split(".") if k]
    if not keys:
        raise ScenarioError(f"--set has an empty key path in {assignment!r}")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node: Any = raw
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        where = ".".join(keys[: i + 1])
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ScenarioError(f"--set {path}: {where} is not an index of a "
                                    f"{len(node)}-item list")
            key_i = int(key)
            if last:
                node[key_i] = value
            else:
                node = node[key_i]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, {})
        else:
            raise ScenarioError(f"--set {path}: {'.'.join(keys[:i])} is a value, not a mapping")


def read_raw(path: Path) -> dict[str, Any]:
    """Read a scenario file's YAML tree, with one-line errors."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError("file not found", source=source) from None
    except OSError as exc:
        raise ScenarioError(f"cannot read: {exc.strerror}", source=source) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ScenarioError(f"{where}{problem}", source=source) from None
    if not isinstance(raw, dict):
        raise ScenarioError("expected a YAML mapping at the top level", source=source)
    return raw


def parse_scenario(raw: dict[str, Any], source: str) -> Scenario:
    """Validate a raw tree against the schema (components are checked by ``sim.build``)."""
    version = raw.get("schema_version")
    if version is not None and version != SCHEMA_VERSION:
        raise ScenarioError(f"unsupported schema_version {version!r}; this simlb reads "
                            f"version {SCHEMA_VERSION}", source=source, field="schema_version")
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        raise ScenarioError(format_validation_error(exc), source=source) from None
