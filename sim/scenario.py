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
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sim.errors import ScenarioError
from sim.faults_spec import AutoscalerSpec, FaultsSpec, HealthSpec, RetrySpec, check_elasticity
from sim.spec import ComponentSpec, StrictModel, format_validation_error
from sim.workload.spec import WorkloadSpec

SCHEMA_VERSION = 1
#: names of scenarios, groups and labels: they become folder names, so no leading dot
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"
GRADE_SENSES = ("batch_occupancy", "kv_occupancy", "busy", "token_share", "mfu")
#: the largest KV capacity or context a node may have (2^40 tokens: far beyond any GPU)
MAX_KV_TOKENS = 1 << 40
#: labels a strategy may not have: ``<out>/<scenario>/report`` is the report's folder
RESERVED_LABELS = ("report",)
#: the largest scenario file read (a scenario is a few KB; /dev/zero would never end)
MAX_FILE_BYTES = 16 << 20


def _not_bool(value: Any) -> Any:
    """Refuse ``true``/``false`` where a count is expected (pydantic would read them as 1/0)."""
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {str(value).lower()}")
    return value


#: an integer field that refuses booleans
Int = Annotated[int, BeforeValidator(_not_bool)]


class Model(StrictModel):
    """Scenario models: frozen, strict about unknown keys, no NaN or infinity."""


class NodeGroupSpec(Model):
    """``count`` identical nodes (each one model replica, possibly on several GPUs)."""

    name: str = Field("default", pattern=NAME_PATTERN,
                      description="group name shown to strategies and in node tables")
    count: Int = Field(ge=1, le=1_000_000, description="number of identical nodes in the group "
                                                      "(see also limits.max_nodes)")
    cost_model: ComponentSpec = Field(
        description="iteration cost model (cost_model registry), e.g. {name: profile, "
                    "params: {profile: h100/llama-3-8b}}")
    kv_capacity_tokens: Int | None = Field(
        None, ge=1, le=MAX_KV_TOKENS,
        description="KV cache size of one node; null: from the profile (required with a cost "
                    "model that has none)")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="fraction of GPU memory vLLM may use, to recompute the "
                                      "profile's KV capacity; null: the profile's own value")
    block_size_tokens: Int = Field(16, ge=1, le=1024, description="tokens per KV block")
    prefix_caching: bool = Field(True, description="share full prompt blocks between requests "
                                                   "(vLLM automatic prefix caching)")
    max_model_len_tokens: Int | None = Field(
        None, ge=2, le=MAX_KV_TOKENS,
        description="longest prompt + max_output_tokens a node accepts (longer requests are "
                    "rejected); the profile's context limit applies too")
    usd_per_gpu_hour: float | None = Field(
        None, ge=0, allow_inf_nan=False,
        description="hourly price of one GPU of this group (simlb sweep and capacity report "
                    "cost with it; --price overrides); null: no price")
    model: str = Field("", pattern=r"^[A-Za-z0-9_.:/-]*$",
                       description="the model the group serves; requests asking for a model "
                                   "(workload.models, a trace's model column) go only to its "
                                   "groups; empty: serves every request")
    batcher: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="continuous"),
                                   description="engine scheduler and its limits (batcher "
                                               "registry)")
    role: Literal["mixed", "prefill", "decode"] = Field(
        "mixed", description="disaggregated serving (docs/disaggregation.md): prefill nodes "
                             "run prompts and hand the KV cache to decode nodes; mixed: both "
                             "phases (the default)")


class SlowdownSpec(Model):
    """A straggler: node ``node`` runs ``factor`` times slower in ``[start_s, end_s)``."""

    node: Int = Field(ge=0, description="node id (nodes are numbered in group order from 0)")
    factor: float = Field(gt=0, description="iterations take this many times their profile "
                                            "cost (2: half speed)")
    start_s: float = Field(0.0, ge=0, description="when the slow-down starts")
    end_s: float = Field(gt=0, description="when it ends")

    @field_validator("end_s")
    @classmethod
    def _after_start(cls, end_s: float, info: ValidationInfo) -> float:
        start = info.data.get("start_s", 0.0)
        if end_s <= start:
            raise ValueError(f"expected end_s after start_s ({start}), got {end_s}")
        return end_s


class LinkSpec(Model):
    """The KV-transfer link between a prefill group and a decode group."""

    prefill_group: str = Field(pattern=NAME_PATTERN, description="a group with role prefill")
    decode_group: str = Field(pattern=NAME_PATTERN, description="a group with role decode")
    link: Literal["nvlink", "infiniband", "rdma", "tcp"] | None = Field(
        None, description="preset (bandwidth, latency); null: the transfer's default link")
    bandwidth_GBps: float | None = Field(
        None, gt=0, le=1e6, description="GB/s per GPU pair, one way; null: the preset's")
    latency_s: float | None = Field(None, ge=0, le=60, description="fixed time per transfer; "
                                                                   "null: the preset's")


class TransferSpec(Model):
    """How KV caches move from prefill to decode nodes (cluster with roles only)."""

    link: Literal["nvlink", "infiniband", "rdma", "tcp"] = Field(
        "infiniband", description="default link preset: nvlink (450 GB/s, 10 us), infiniband "
                                  "or rdma (50 GB/s, 50 us), tcp (10 GB/s, 500 us); bandwidth "
                                  "per GPU pair")
    bandwidth_GBps: float | None = Field(None, gt=0, le=1e6,
                                         description="override of the preset's bandwidth")
    latency_s: float | None = Field(None, ge=0, le=60,
                                    description="override of the preset's latency")
    layerwise: bool = Field(True, description="send each layer's KV as the prefill's last "
                                              "chunk computes it (the transfer starts with "
                                              "that chunk); false: after the first token")
    kv_bytes_per_token: Int | None = Field(
        None, ge=1, description="KV bytes of one token, whole model; null: from the prefill "
                                "group's profile (required with a cost model without one)")
    links: list[LinkSpec] = Field(default_factory=list,
                                  description="per pool pair overrides of the link")


class ClusterSpec(Model):
    """The nodes, in groups."""

    node_groups: list[NodeGroupSpec] = Field(min_length=1,
                                             description="the groups of identical nodes")
    fast_forward: bool = Field(
        True, description="compute runs of identical decode iterations in closed form (same "
                          "results, faster)")
    slowdowns: list[SlowdownSpec] = Field(
        default_factory=list, description="stragglers: nodes running slower for a while")
    transfer: TransferSpec = Field(default_factory=TransferSpec,
                                   description="KV-cache transfer from prefill to decode "
                                               "nodes (used when groups have roles)")

    @model_validator(mode="after")
    def _pools(self) -> ClusterSpec:
        roles = [g.role for g in self.node_groups]
        has_p, has_d = "prefill" in roles, "decode" in roles
        if has_p or has_d:
            if not (has_p and has_d):
                i = roles.index("decode" if has_d else "prefill")
                missing = "prefill" if has_d else "decode"
                raise ValueError(f"node_groups.{i}.role: a {roles[i]} group needs a group "
                                 f"with role {missing}")
            if "mixed" in roles:
                raise ValueError(f"node_groups.{roles.index('mixed')}.role: expected prefill "
                                 f"or decode in a cluster with roles (mixed groups beside "
                                 f"prefill/decode pools are not modelled)")
        by_name = {g.name: g.role for g in self.node_groups}
        for i, link in enumerate(self.transfer.links):
            for key, want in (("prefill_group", "prefill"), ("decode_group", "decode")):
                name = getattr(link, key)
                if by_name.get(name) != want:
                    raise ValueError(f"transfer.links.{i}.{key}: expected the name of a group "
                                     f"with role {want}, got '{name}'")
        return self


class StrategySpec(ComponentSpec):
    """A strategy to compare, with an optional label (default: its name)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    label: str | None = Field(None, pattern=NAME_PATTERN,
                              description="name in tables and result paths; null: the name")

    @property
    def display(self) -> str:
        """The label used in tables and result paths."""
        return self.label or self.name


class RouterSpec(Model):
    """The strategies to compare and what the router observes."""

    strategies: list[StrategySpec] = Field(
        min_length=1, description="strategies to compare, each {name, params, label}; "
                                  "labels must be unique")
    telemetry_interval_s: float = Field(
        0.1, ge=0, description="node telemetry refresh period; 0: fresh for every decision")
    replicas: Int = Field(1, ge=1, le=64, description="router instances sharing the arrivals "
                                                      "round robin, each counting only its "
                                                      "own dispatches")
    admission: ComponentSpec | None = Field(
        None, description="admission control before routing (admission registry); null: "
                          "admit everything")
    kv_events_delay_s: float | None = Field(
        None, ge=0, description="nodes publish KV-cache events that reach the router after "
                                "this delay, for strategies with precise cache knowledge; "
                                "null: no events")
    max_in_flight: Int | None = Field(
        None, ge=1, description="the client's concurrency cap (a closed-loop load generator, "
                                "as vllm bench serve --max-concurrency): requests beyond it "
                                "wait at the client and latencies count from the send; null: "
                                "open loop")
    health: HealthSpec = Field(default_factory=HealthSpec,
                               description="how the router notices failed nodes: active health "
                                           "checks and passive ejection (used with faults or "
                                           "autoscaling)")
    retries: RetrySpec = Field(default_factory=RetrySpec,
                               description="retries of requests whose attempt failed on a "
                                           "failed node, and the stall timeout")

    @field_validator("strategies")
    @classmethod
    def _unique_labels(cls, specs: list[StrategySpec]) -> list[StrategySpec]:
        labels = [s.display for s in specs]
        for i, label in enumerate(labels):
            if label in RESERVED_LABELS:
                raise ValueError(f"item {i} is labelled '{label}', the name of the report "
                                 f"folder beside the strategies' folders; expected another "
                                 f"label (give it a 'label')")
            if label in labels[:i]:
                raise ValueError(f"items {labels.index(label)} and {i} are both labelled "
                                 f"'{label}'; expected unique labels (give each a 'label')")
        return specs


class SloSpec(Model):
    """Per-request service-level objectives; goodput counts requests meeting all of them."""

    ttft_s: float | None = Field(None, gt=0, description="time to first token limit; "
                                                        "null: none")
    tpot_s: float | None = Field(None, gt=0, description="limit on a request's mean time per "
                                                        "output token after the first")
    e2e_s: float | None = Field(None, gt=0, description="end-to-end latency limit")


class MetricsSpec(Model):
    """Measurement settings."""

    bucket_s: float = Field(1.0, gt=0, le=1e9, description="width of the over-time series "
                                                          "buckets")
    monitor_interval_s: float = Field(
        10.0, gt=0, le=1e9, description="interval of the balance series (CV, imbalance, grade over "
                                "time) in the summary")
    grade_on: Literal["batch_occupancy", "kv_occupancy", "busy", "token_share", "mfu"] = Field(
        "batch_occupancy", description="which utilisation sense the balance grade (CV over "
                                       "nodes) uses")


class LimitsSpec(Model):
    """Size limits checked when the scenario loads (``sim.limits``), per replication; the
    defaults keep a run within a few GB of memory. ``--no-limits`` skips them."""

    max_requests: int = Field(10_000_000, ge=1, description="expected requests (analytic "
                                                           "rate x duration_s)")
    max_nodes: int = Field(10_000, ge=1, description="nodes over all groups")
    max_timeline_rows: int = Field(20_000_000, ge=1, description="nodes x metrics.bucket_s "
                                   "buckets over duration_s + drain_timeout_s")
    max_monitor_samples: int = Field(20_000_000, ge=1, description="nodes x "
                                     "metrics.monitor_interval_s intervals over duration_s + "
                                     "drain_timeout_s")
    max_arrival_draws: int = Field(50_000_000, ge=1, description="arrival-process draws "
                                   "besides one per request (MMPP sojourns)")
    max_runs: int = Field(10_000, ge=1, description="simulations of one simlb run: "
                                                    "replications x strategies")


class Scenario(Model):
    """A whole scenario file."""

    schema_version: Literal[1] = Field(description="version of this file format")
    name: str = Field(pattern=NAME_PATTERN, description="results go to <out>/<name>/")
    description: str = Field("", description="free text")
    seed: Int = Field(0, ge=0, description="root seed; replication k uses seed + k")
    replications: Int = Field(1, ge=1, description="runs per strategy, with seeds "
                                                  "seed .. seed + replications - 1")
    duration_s: float = Field(gt=0, description="arrivals are generated in [0, duration_s)")
    warmup_s: float = Field(0.0, ge=0, description="requests arriving earlier are simulated "
                                                  "but not measured; below duration_s")
    drain_timeout_s: float = Field(
        600.0, ge=0, description="how long past duration_s to let requests finish; later "
                                 "ones count as unfinished")
    cluster: ClusterSpec = Field(description="the GPU nodes")
    router: RouterSpec = Field(description="the strategies to compare and the router's view")
    workload: WorkloadSpec = Field(description="the requests")
    slo: SloSpec = Field(default_factory=SloSpec, description="service-level objectives for "
                                                              "goodput")
    metrics: MetricsSpec = Field(default_factory=MetricsSpec,
                                 description="measurement settings")
    limits: LimitsSpec = Field(default_factory=LimitsSpec,
                               description="size limits refusing runs too large to hold in "
                                           "memory (--no-limits skips them)")
    faults: FaultsSpec | None = Field(None, description="node failures (crash, hang, drain), "
                                                         "scheduled or random; null: none")
    autoscaling: list[AutoscalerSpec] = Field(
        default_factory=list, description="autoscalers, one per scaled node group")

    @field_validator("warmup_s")
    @classmethod
    def _warmup_inside(cls, warmup_s: float, info: ValidationInfo) -> float:
        duration_s = info.data.get("duration_s")  # absent when it failed validation itself
        if duration_s is not None and warmup_s >= duration_s:
            raise ValueError(f"expected less than duration_s ({duration_s:g}), got {warmup_s:g}")
        return warmup_s

    @model_validator(mode="after")
    def _elasticity_fits_cluster(self) -> Scenario:
        check_elasticity(self.faults, self.autoscaling,
                         {g.name: g.count for g in self.cluster.node_groups}, self.duration_s)
        return self

    @property
    def n_nodes(self) -> int:
        """Total nodes over all groups."""
        return sum(g.count for g in self.cluster.node_groups)


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.0.c=value`` assignment to the raw scenario tree, in place.

    The value is parsed as a YAML scalar or flow collection (``4``, ``0.5``, ``true``,
    ``[1, 2]``, ``{name: poisson}``); text that is not valid YAML stays a string; ``null`` or
    nothing removes the key (its default applies). Missing mapping keys are created, so a
    typo is left for validation to report with its path.

    Raises:
        ScenarioError: no ``=``, an empty path, a path through a value, or a list index that
            is not an integer within the list (``field`` is the ``--set`` path).
    """
    path, eq, text = assignment.partition("=")
    path = path.strip()
    if not eq:
        raise ScenarioError(f"expected key.path=value, got {assignment!r}", field="--set")
    keys = path.split(".")
    if not all(keys):
        raise ScenarioError(f"expected a dotted key path like cluster.node_groups.0.count, "
                            f"got {path!r}", field="--set")
    value = _parse_value(text)
    node: Any = raw
    for i in range(len(keys)):
        step = _step(node, keys, i, path)
        if i == len(keys) - 1:
            if value is None and isinstance(node, dict):
                node.pop(step, None)  # null removes the key, so its default applies
            else:
                node[step] = value
        else:
            if isinstance(node, dict) and node.get(step) is None:
                node[step] = {}  # a missing or null mapping is created
            node = node[step]


def _step(node: Any, keys: list[str], i: int, path: str) -> str | int:
    """The dict key or list index ``keys[i]`` addresses in ``node``."""
    key = keys[i]
    if isinstance(node, dict):
        return key
    if isinstance(node, list):
        if key.isdigit() and int(key) < len(node):
            return int(key)
        where = ".".join(keys[: i + 1])
        valid = f"0..{len(node) - 1}" if node else "none: the list is empty"
        raise ScenarioError(f"{where}: expected a list index ({valid}), got {key!r}",
                            field=f"--set {path}")
    shown = repr(node) if len(repr(node)) <= 40 else repr(node)[:37] + "..."
    raise ScenarioError(f"{'.'.join(keys[:i])} is a value ({shown}), not a mapping or list",
                        field=f"--set {path}")


def _parse_value(text: str) -> Any:
    """``--set`` value: a YAML scalar or flow collection; plain text if it is not YAML."""
    if not text.strip():
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping.

    PyYAML keeps the last of duplicate keys silently, so a scenario with two ``router:``
    blocks would run with one of them ignored; YAML itself requires keys to be unique. Keys
    brought in by a merge key (``<<: *anchor``) may still be overridden.
    """


def _unique_key_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode,
                        deep: bool = False) -> dict[Any, Any]:
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            seen = first_line.get(key)
        except TypeError:  # an unhashable key; construct_mapping reports it
            continue
        if seen is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first given on line {seen}); expected "
                            f"each key once per mapping", key_node.start_mark)
        first_line[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                 _unique_key_mapping)


def read_raw(path: Path) -> dict[str, Any]:
    """Read a scenario file's YAML tree, with one-line errors naming the file.

    Raises:
        ScenarioError: the file is missing, unreadable, not UTF-8, not YAML (with line and
            column), has a key twice in one mapping, or is not a mapping at the top level.
    """
    source = str(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise ScenarioError(f"larger than {MAX_FILE_BYTES >> 20} MiB (or endless); "
                                f"expected a scenario YAML file", source=source)
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise ScenarioError("file not found; expected a scenario YAML file",
                            source=source) from None
    except IsADirectoryError:
        raise ScenarioError("is a directory; expected a scenario YAML file",
                            source=source) from None
    except OSError as exc:
        raise ScenarioError(f"cannot read the file ({exc.strerror})", source=source) from None
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                            f"{exc.start}); expected a YAML file", source=source) from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ScenarioError(_yaml_problem(exc), source=source) from None
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else f"a {type(raw).__name__}"
        raise ScenarioError(f"expected a YAML mapping (key: value lines) at the top level, "
                            f"got {got}", source=source)
    return raw


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """``line L, column C: problem`` for a PyYAML error (1-based, as editors count)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
    return f"{where}invalid YAML: {problem}"


def parse_scenario(raw: dict[str, Any], source: str) -> Scenario:
    """Validate a raw tree against the schema (components are checked by ``sim.build``).

    Raises:
        ScenarioError: naming ``source``, the field path and what was expected.
    """
    if "schema_version" not in raw:
        raise ScenarioError(f"missing; expected 'schema_version: {SCHEMA_VERSION}' at the top "
                            f"of the file", source=source, field="schema_version")
    version = raw["schema_version"]
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise ScenarioError(f"expected {SCHEMA_VERSION} (the version this simlb reads), got "
                            f"{version!r}", source=source, field="schema_version")
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        raise ScenarioError(format_validation_error(exc, model=Scenario),
                            source=source) from None
