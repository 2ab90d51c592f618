"""Resolve a validated scenario into model parts: cost models, node specs and strategies.

Everything that can be wrong with a scenario beyond its schema is found here, before any
simulation starts: unknown component names, bad component parameters, missing or corrupt
profiles, a KV cache smaller than one block, engine limits a profile cannot serve.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sim.policy  # noqa: F401  (registers the built-in strategies)
from sim.errors import ProfileError, ScenarioError
from sim.model.batcher import batchers
from sim.model.cluster import NodeSpec
from sim.model.cost import cost_models
from sim.policy.base import Strategy, StrategyParams, strategies
from sim.scenario import NodeGroupSpec, Scenario, StrategySpec
from sim.spec import build_params
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


def resolve(scenario: Scenario, source: str, base_dir: Path,
            only: tuple[str, ...] = ()) -> ResolvedScenario:
    """Check and build all components; ``only`` selects strategies by label or name."""
    try:
        check_workload_spec(scenario.workload)
        nodes: list[NodeSpec] = []
        for gi, group in enumerate(scenario.cluster.node_groups):
            spec = _node_spec(group, f"cluster.node_groups.{gi}", base_dir)
            nodes.extend([spec] * group.count)
        chosen = _choose_strategies(scenario, only)
    except ScenarioError as exc:
        if exc.source is None:
            raise ScenarioError(str(exc), source=source) from None
        raise
    return ResolvedScenario(scenario, source, nodes, chosen)


def _node_spec(group: NodeGroupSpec, path: str, base_dir: Path) -> NodeSpec:
    cls, params = build_params(cost_models, group.cost_model, f"{path}.cost_model")
    try:
        cost = cls(params, base_dir=base_dir)
    except ProfileError as exc:
        raise ScenarioError(f"{path}.cost_model: {exc}") from None
    bs = group.block_size_tokens
    tokens = group.kv_capacity_tokens
    if tokens is None:
        tokens = cost.kv_capacity_tokens(group.gpu_memory_utilization, bs)
        if tokens is None:
            raise ScenarioError(f"{path}.kv_capacity_tokens: required with cost model "
                                f"'{group.cost_model.name}', which has no KV capacity of its own")
    if tokens < bs:
        raise ScenarioError(f"{path}.kv_capacity_tokens: a KV cache of {tokens} tokens is "
                            f"smaller than one block of {bs} tokens")
    bcls, bparams = build_params(batchers, group.batcher, f"{path}.batcher")
    limits = [x for x in (group.max_model_len_tokens, cost.max_model_len) if x is not None]
    config = bcls.config(bparams, min(limits) if limits else None)
    if config.max_num_batched_tokens < config.max_num_seqs:
        raise ScenarioError(f"{path}.batcher.params.max_num_batched_tokens: must be >= "
                            f"max_num_seqs ({config.max_num_seqs}), as vLLM requires")
    try:
        cost.check_limits(config.max_num_batched_tokens, config.max_num_seqs)
    except ProfileError as exc:
        raise ScenarioError(f"{path}.batcher.params: {exc}") from None
    return NodeSpec(group=group.name, profile=cost.description, cost=cost,
                    kv_total_blocks=tokens // bs, block_size=bs,
                    prefix_caching=group.prefix_caching, batcher=config)


def _choose_strategies(scenario: Scenario, only: tuple[str, ...]) -> list[StrategyChoice]:
    specs = list(scenario.router.strategies)
    if only:
        by_key = {s.display: s for s in specs} | {s.name: s for s in specs if s.label is None}
        picked = []
        for name in only:
            if name in by_key:
                picked.append(by_key[name])
            else:
                strategies.get(name)  # raises with suggestions if unknown
                picked.append(StrategySpec(name=name))
        specs = picked
    chosen = []
    for i, spec in enumerate(specs):
        cls, params = build_params(strategies, spec, f"router.strategies.{i}")
        chosen.append(StrategyChoice(spec, cls, params))  # type: ignore[arg-type]
    return chosen
