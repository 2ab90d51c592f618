"""A router built in YAML from filters, weighted scorers and a picker (llm-d / GIE style).

::

    router:
      strategies:
        - name: composed
          label: my_router
          params:
            filters: [{name: kv_below, params: {max_utilization: 0.9}}]
            scorers:
              - {name: queue, weight: 2}
              - {name: kv_cache_utilization, weight: 2}
              - {name: prefix_cache, weight: 3}
            picker: {name: max_score}

One decision: the accepting nodes, narrowed by each filter in turn (a filter that would leave
none is skipped); each scorer rates the remaining nodes in [0, 1] and its weighted score is
added to a node's total (subtracted for a cost scorer, see ``sim.policy.scorers``); the picker
chooses from the totals; stateful scorers then learn the pick. A scorer of weight 0 is not run.
``preset: llm_d`` or ``preset: dynamic`` stands for the scorers of those strategies with their
default parameters (``preset_params`` maps any of their parameter sets), and the tests show
that a preset picks the same node as the strategy for every request of a seeded run.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from sim.errors import ScenarioError
from sim.outcome import Outcome
from sim.policy.base import ClusterView, RequestInfo, Strategy, StrategyParams, strategies
from sim.policy.dynamic import Dynamic
from sim.policy.llm_d import LlmD
from sim.policy.pickers import Filter, Picker, filters, pickers
from sim.policy.scorers import Scorer, scorers
from sim.registry import Registry
from sim.spec import ComponentSpec, StrictModel, build_params

Preset = Literal["llm_d", "dynamic"]


class WeightedSpec(ComponentSpec):
    """A scorer with its weight."""

    weight: float = Field(1.0, ge=0, description="multiplies the scorer's [0, 1] score")


def preset_params(preset: Preset, params: StrictModel | None = None) -> dict[str, Any]:
    """The composed parameters (``filters``, ``scorers``, ``picker``) that reproduce strategy
    ``preset`` with its parameters ``params`` (default: its defaults)."""
    if preset == "llm_d":
        p = params if isinstance(params, LlmD.Params) else LlmD.Params()
        prefix = {"cache_knowledge": p.cache_knowledge, "max_prefix_blocks": p.max_prefix_blocks,
                  "lru_capacity_blocks": p.lru_capacity_blocks}
        chosen = [("queue", p.queue_weight, {}),
                  ("kv_cache_utilization", p.kv_cache_weight, {}),
                  ("prefix_cache", p.prefix_weight, prefix),
                  ("session_affinity", p.session_weight, {"max_sessions": p.max_sessions})]
    else:
        d = params if isinstance(params, Dynamic.Params) else Dynamic.Params()
        chosen = [("running_fraction", d.utilization_weight, {}),
                  ("kv_usage", d.kv_weight, {}),
                  ("queue_fraction", d.queue_weight, {"queue_scale": d.queue_scale}),
                  ("recent_latency", d.latency_weight, {})]
    return {"filters": [],
            "scorers": [{"name": n, "weight": w, "params": kw} for n, w, kw in chosen],
            "picker": {"name": "max_score"}}


def _check(registry: Registry[Any], spec: ComponentSpec, path: str) -> None:
    try:
        build_params(registry, spec, path)
    except ScenarioError as exc:  # as ValueError, pydantic adds the strategy's path
        raise ValueError(str(exc)) from None


@strategies.register("composed")
class Composed(Strategy):
    """Filters, weighted scorers and a picker named in the scenario (llm-d style); the
    ``llm_d`` and ``dynamic`` strategies are presets of it.

    Default: no filter, no scorer, ``max_score`` picker, which is uniform random. See
    ``sim.policy.compose`` for the rule and docs/composing.md for the parts.
    """

    class Params(StrategyParams):
        preset: Preset | None = Field(
            None, description="llm_d or dynamic: those strategies' scorers with their default "
                              "parameters (then no filters, scorers or picker)")
        filters: list[ComponentSpec] = Field(
            default_factory=list, description="filters applied in order, each {name, params}")
        scorers: list[WeightedSpec] = Field(
            default_factory=list, description="scorers, each {name, weight, params}")
        picker: ComponentSpec = Field(
            default_factory=lambda: ComponentSpec(name="max_score"),
            description="the picker, {name, params}")

        @model_validator(mode="after")
        def _parts_exist(self) -> Composed.Params:
            if self.preset is not None and (self.filters or self.scorers
                                            or self.picker.name != "max_score"):
                raise ValueError("a preset names the filters, scorers and picker itself; give "
                                 "either preset or them")
            for i, spec in enumerate(self.filters):
                _check(filters, spec, f"filters.{i}")
            for i, scorer in enumerate(self.scorers):
                _check(scorers, ComponentSpec(name=scorer.name, params=scorer.params),
                       f"scorers.{i}")
            _check(pickers, self.picker, "picker")
            return self

        def expanded(self) -> Composed.Params:
            """These parameters with a preset replaced by what it stands for."""
            if self.preset is None:
                return self
            return type(self).model_validate(preset_params(self.preset))

    params: Params

    def __init__(self, params: StrategyParams, rng: np.random.Generator) -> None:
        super().__init__(params, rng)
        p = self.params.expanded()
        owner = self.registered_name or "composed"
        self.filters: list[Filter] = [_build(filters, s, f"filters.{i}")
                                      for i, s in enumerate(p.filters)]
        self.scorers: list[tuple[Scorer, float]] = []
        for i, spec in enumerate(p.scorers):
            if spec.weight > 0:
                cls, sp = build_params(scorers, ComponentSpec(name=spec.name,
                                                              params=spec.params), f"scorers.{i}")
                self.scorers.append((cls(sp, owner), spec.weight))
        picker_cls, picker_params = build_params(pickers, p.picker, "picker")
        self.picker: Picker = picker_cls(picker_params, self.draws)

    def signals(self) -> frozenset[str]:
        """Every signal the filters and scorers read (see ``sim.policy.scorers.SIGNALS``)."""
        found: set[str] = set()
        parts: list[Filter | Scorer] = [*self.filters, *(s for s, _ in self.scorers)]
        for part in parts:
            found |= part.signals
        return frozenset(found)

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        candidates = view.accepting_ids()
        for f in self.filters:
            kept = f.keep(request, view, candidates)
            if kept:
                candidates = kept
        totals = [0.0] * len(candidates)
        for scorer, weight in self.scorers:
            scores = scorer.score(request, view, candidates)
            if scorer.higher_is_better:
                totals = [t + weight * s for t, s in zip(totals, scores, strict=True)]
            else:
                totals = [t - weight * s for t, s in zip(totals, scores, strict=True)]
        node = self.picker.pick(totals, candidates)
        for scorer, _ in self.scorers:
            scorer.on_pick(request, view, node)
        return node

    def on_finish(self, outcome: Outcome) -> None:
        for scorer, _ in self.scorers:
            scorer.on_finish(outcome)

    def on_node_down(self, node_id: int) -> None:
        """A node failed or left: stateful scorers forget it (as ``llm_d`` does)."""
        for scorer, _ in self.scorers:
            scorer.on_node_down(node_id)


def _build(registry: Registry[Any], spec: ComponentSpec, path: str) -> Any:
    cls, params = build_params(registry, spec, path)
    return cls(params)
