"""Resolve a validated scenario into model parts: cost models, node specs and strategies.

Everything that can be wrong with a scenario beyond its schema is found here, before any
simulation starts: unknown component names, bad component parameters, missing or corrupt
profiles, a KV cache smaller than one block, engine limits a profile cannot serve.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sim.model.adaptive_batcher  # registers the adaptive batcher
import sim.model.batcher_v0  # registers the vllm_v0 batcher
import sim.policy  # noqa: F401  (registers the built-in strategies)
from sim.errors import ProfileError, ScenarioError
from sim.model.batcher import batchers
from sim.model.cluster import NodeSpec, node_info
from sim.model.cost import CostModel, cost_models
from sim.model.transfer import LINK_PRESETS, DisaggConfig, LinkParams
from sim.policy.admission import admissions
from sim.policy.base import Strategy, StrategyParams, strategies
from sim.scenario import NodeGroupSpec, Scenario, StrategySpec
from sim.spec import build_params
from sim.workload.lengths import MAX_TOKENS
from sim.workload.spec import check_workload_spec


@dataclass(frozen=True)
class StrategyChoice:
    """One strategy to run: its spec, class and validated parameters."""

    spec: StrategySpec
    cls: type[Strategy]
    params: StrategyParams

    @property
    def label(self) -> str:
        """Name used in tables and result paths."""
        return self.spec.display


@dataclass(frozen=True)
class ResolvedScenario:
    """A scenario with every component resolved and checked."""

    scenario: Scenario
    source: str
    node_specs: list[NodeSpec]
    strategies: list[StrategyChoice]
    #: the scenario file's folder: relative profile and trace paths start there
    base_dir: Path | None = None
    #: admission control component (class, params), or None
    admission: tuple[type, Any] | None = None
    #: node id -> its slow-downs ((start_s, end_s, factor), ...)
    slowdowns: dict[int, tuple[tuple[float, float, float], ...]] = field(default_factory=dict)
    #: check the scenario's size limits (``sim.limits``); False with ``--no-limits``
    enforce_limits: bool = True
    #: the KV transfer of a cluster with prefill/decode roles; None: no roles
    disagg: DisaggConfig | None = None
    #: stream the requests in and the records out (``simlb run --stream``, ``sim.runner_stream``)
    stream: bool = False

    def check_models(self, models: set[str], field: str = "workload.models") -> None:
        """Raise ``ScenarioError`` if a requested model is served by no node."""
        served = {spec.model for spec in self.node_specs}
        if "" in served:
            return
        missing = sorted(m for m in models if m and m not in served)
        if missing:
            raise ScenarioError(f"requests ask for model(s) {', '.join(missing)}, which no node "
                                f"group serves (cluster.node_groups.*.model: "
                                f"{', '.join(sorted(served))})", source=self.source, field=field)


def resolve(scenario: Scenario, source: str, base_dir: Path,
            only: tuple[str, ...] = ()) -> ResolvedScenario:
    """Check and build all components; ``only`` selects strategies by label or name.

    Raises:
        ScenarioError: naming ``source`` (the scenario file), the field path and, for profile
            problems, the profile file.
    """
    try:
        cap = scenario.workload.max_output_tokens
        if cap is not None and cap > MAX_TOKENS:
            raise ScenarioError(f"expected at most {MAX_TOKENS} tokens, got {cap}",
                                field="workload.max_output_tokens")
        check_workload_spec(scenario.workload, base_dir=base_dir)
        nodes: list[NodeSpec] = []
        for gi, group in enumerate(scenario.cluster.node_groups):
            spec = _node_spec(group, f"cluster.node_groups.{gi}", base_dir)
            nodes.extend([spec] * group.count)
        chosen = _choose_strategies(scenario, only)
        _check_against_cluster(scenario, chosen, nodes)
        admission = None
        if scenario.router.admission is not None:
            admission = build_params(admissions, scenario.router.admission, "router.admission")
        slowdowns = _slowdowns(scenario, len(nodes))
        disagg = _disagg(scenario, nodes, chosen)
    except ScenarioError as exc:
        if exc.source is None:
            raise ScenarioError(exc.detail, source=source, field=exc.field) from None
        raise
    resolved = ResolvedScenario(scenario, source, nodes, chosen, base_dir, admission, slowdowns,
                                disagg=disagg)
    models = scenario.workload.models
    if models:
        resolved.check_models(set(models))
    return resolved


def _check_against_cluster(scenario: Scenario, chosen: list[StrategyChoice],
                           nodes: list[NodeSpec]) -> None:
    """Let each strategy check its parameters against the nodes (e.g. one weight per node)."""
    infos = tuple(node_info(i, spec) for i, spec in enumerate(nodes))
    labels = [s.display for s in scenario.router.strategies]
    for choice in chosen:
        try:
            choice.cls.check_cluster(choice.params, infos)
        except ValueError as exc:
            where = (f"router.strategies.{labels.index(choice.label)}.params"
                     if choice.label in labels else "--strategy")
            raise ScenarioError(f"strategy '{choice.spec.name}': {exc}", field=where) from None


def _slowdowns(scenario: Scenario,
               n_nodes: int) -> dict[int, tuple[tuple[float, float, float], ...]]:
    out: dict[int, list[tuple[float, float, float]]] = {}
    for i, slow in enumerate(scenario.cluster.slowdowns):
        if slow.node >= n_nodes:
            raise ScenarioError(f"expected a node id below {n_nodes} (the cluster's nodes), "
                                f"got {slow.node}", field=f"cluster.slowdowns.{i}.node")
        out.setdefault(slow.node, []).append((slow.start_s, slow.end_s, slow.factor))
    return {node: tuple(items) for node, items in out.items()}


#: the engine limit a profile's ``check_limits`` refusal is about, by the profile field
_LIMIT_FIELDS = {"step_model.lin": "max_num_batched_tokens", "step_model.head": "max_num_seqs"}


def _node_spec(group: NodeGroupSpec, path: str, base_dir: Path) -> NodeSpec:
    cls, params = build_params(cost_models, group.cost_model, f"{path}.cost_model")
    try:
        cost = cls(params, base_dir=base_dir)
    except ProfileError as exc:  # the message names the profile file and its field
        raise ScenarioError(str(exc), field=f"{path}.cost_model.params.profile") from None
    bs = group.block_size_tokens
    tokens = _kv_tokens(group, cost, path)
    bcls, bparams = build_params(batchers, group.batcher, f"{path}.batcher")
    limits = [x for x in (group.max_model_len_tokens, cost.max_model_len) if x is not None]
    config = bcls.make_config(bparams, min(limits) if limits else None)
    if config.max_num_batched_tokens < config.max_num_seqs:
        raise ScenarioError(f"expected at least max_num_seqs ({config.max_num_seqs}), as vLLM "
                            f"requires, got {config.max_num_batched_tokens}",
                            field=f"{path}.batcher.params.max_num_batched_tokens")
    try:
        cost.check_limits(config.max_num_batched_tokens, config.max_num_seqs)
    except ProfileError as exc:
        limit = _LIMIT_FIELDS.get(exc.field or "", "")
        raise ScenarioError(f"{exc.detail} (profile {exc.source})",
                            field=f"{path}.batcher.params{'.' if limit else ''}{limit}") from None
    return NodeSpec(group=group.name, profile=cost.description, cost=cost,
                    kv_total_blocks=tokens // bs, block_size=bs,
                    prefix_caching=group.prefix_caching, batcher=config, model=group.model,
                    batcher_cls=bcls, role=group.role)


def _disagg(scenario: Scenario, nodes: list[NodeSpec],
            chosen: list[StrategyChoice]) -> DisaggConfig | None:
    """The KV-transfer configuration of a cluster with prefill/decode roles (None without)."""
    groups = scenario.cluster.node_groups
    if all(g.role == "mixed" for g in groups):
        return None
    if scenario.faults is not None:
        raise ScenarioError("not supported with prefill/decode roles yet (remove the faults "
                            "or the roles)", field="faults")
    if scenario.autoscaling:
        raise ScenarioError("not supported with prefill/decode roles yet",
                            field="autoscaling")
    for gi, group in enumerate(groups):
        if group.batcher.name != "continuous":
            raise ScenarioError(f"expected the continuous batcher in a group with role "
                                f"{group.role}, got '{group.batcher.name}'",
                                field=f"cluster.node_groups.{gi}.batcher.name")
    for i, choice in enumerate(chosen):
        cls = choice.cls
        if (cls.hedge_after_s is not Strategy.hedge_after_s
                or cls.retry_after_s is not Strategy.retry_after_s
                or cls.rebalance_interval_s is not None):
            raise ScenarioError(f"strategy '{choice.spec.name}' hedges, retries or rebalances, "
                                f"which a cluster with prefill/decode roles does not support",
                                field=f"router.strategies.{i}.name")
    tr = scenario.cluster.transfer
    kv_bytes, tps, layers = [], [], []
    for gi, group in enumerate(groups):
        spec = nodes[sum(g.count for g in groups[:gi])]
        profile = getattr(spec.cost, "profile", None)
        tp = profile.hardware.tensor_parallel if profile is not None else 1
        n_layers = profile.model.num_layers if profile is not None else 1
        if tr.kv_bytes_per_token is not None:
            per_token = tr.kv_bytes_per_token
        elif profile is not None:
            per_token = profile.kv_cache.kv_bytes_per_token_per_gpu * tp
        else:
            raise ScenarioError(f"required: group '{group.name}' has a cost model without a "
                                f"model shape; expected the KV bytes of one token",
                                field="cluster.transfer.kv_bytes_per_token")
        kv_bytes += [per_token] * group.count
        tps += [tp] * group.count
        layers += [n_layers] * group.count
    default_bw, default_lat = LINK_PRESETS[tr.link]
    links: dict[tuple[str, str], LinkParams] = {}
    for p in (g for g in groups if g.role == "prefill"):
        for d in (g for g in groups if g.role == "decode"):
            links[(p.name, d.name)] = LinkParams(
                (tr.bandwidth_GBps or default_bw) * 1e9,
                default_lat if tr.latency_s is None else tr.latency_s, tr.layerwise)
    for link in tr.links:
        bw, lat = LINK_PRESETS[link.link or tr.link]
        if link.link is None:
            bw, lat = tr.bandwidth_GBps or bw, lat if tr.latency_s is None else tr.latency_s
        links[(link.prefill_group, link.decode_group)] = LinkParams(
            (link.bandwidth_GBps or bw) * 1e9, lat if link.latency_s is None else link.latency_s,
            tr.layerwise)
    return DisaggConfig(tuple(kv_bytes), tuple(tps), tuple(layers), links)


def _kv_tokens(group: NodeGroupSpec, cost: CostModel, path: str) -> int:
    """The node's KV capacity in tokens, checked to hold at least one block."""
    bs = group.block_size_tokens
    tokens = group.kv_capacity_tokens
    if tokens is not None:
        if tokens < bs:
            raise ScenarioError(f"expected at least one block ({bs} tokens, block_size_tokens), "
                                f"got {tokens}", field=f"{path}.kv_capacity_tokens")
        return tokens
    tokens = cost.kv_capacity_tokens(group.gpu_memory_utilization, bs)
    if tokens is None:
        raise ScenarioError(f"required with cost model '{group.cost_model.name}', which has "
                            f"no KV capacity of its own; expected a number of tokens",
                            field=f"{path}.kv_capacity_tokens")
    if tokens < bs:
        util = group.gpu_memory_utilization
        field = "gpu_memory_utilization" if util is not None else "cost_model.params.profile"
        raise ScenarioError(f"leaves a KV cache of {tokens} tokens on {cost.description}, "
                            f"less than one block ({bs} tokens); expected room for the KV "
                            f"cache after weights and activations", field=f"{path}.{field}")
    return tokens


def _choose_strategies(scenario: Scenario, only: tuple[str, ...]) -> list[StrategyChoice]:
    """The scenario's strategies (all checked), or those ``only`` names: labels, names, or
    registered names run with default parameters; a repeated name runs once."""
    chosen = []
    for i, spec in enumerate(scenario.router.strategies):
        cls, params = build_params(strategies, spec, f"router.strategies.{i}")
        chosen.append(StrategyChoice(spec, cls, params))  # type: ignore[arg-type]
    if not only:
        return chosen
    by_key = {c.label: c for c in chosen} | {c.spec.name: c for c in chosen
                                              if c.spec.label is None}
    picked: dict[str, StrategyChoice] = {}
    for name in only:
        choice = by_key.get(name)
        if choice is None:
            spec = StrategySpec(name=name)
            try:
                cls, params = build_params(strategies, spec, "--strategy")
            except ScenarioError as exc:
                raise ScenarioError(f"{exc.detail}; expected a registered name or a label of "
                                    f"the scenario's router.strategies",
                                    field="--strategy") from None
            choice = StrategyChoice(spec, cls, params)  # type: ignore[arg-type]
        picked.setdefault(choice.label, choice)
    return list(picked.values())
