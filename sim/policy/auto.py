"""The seed document's selection guide as a strategy: pick the strategy by cluster and request."""

from __future__ import annotations

from pydantic import Field, field_validator

from sim.errors import ScenarioError
from sim.outcome import Outcome
from sim.policy.base import (
    ClusterView,
    RequestInfo,
    Strategy,
    StrategyParams,
    build_inner,
    check_inner,
    strategies,
)
from sim.policy.cache_locality import CacheLocality
from sim.spec import ComponentSpec

#: what ``multi_model`` falls back to when no strategy of that name is registered
FALLBACK = ComponentSpec(name="least_loaded")


def _spec(name: str) -> ComponentSpec:
    return ComponentSpec(name=name)


@strategies.register("auto")
class Auto(Strategy):
    """Route each request with the strategy the seed document's selection guide recommends.

    Rules, first match wins:

    1. **multi-model**: the nodes serve two or more models (``NodeInfo.model``) -> the
       ``multi_model`` spec (default ``multi_model``, looked up by name at first use; if no
       strategy of that name is registered, ``least_loaded``);
    2. **long prompt**: ``prompt_tokens > long_prompt_tokens`` (4096) -> ``long_prompt``
       (default ``cache_locality``): a long prompt's prefill is what a cache hit saves;
    3. **cluster size** ``n`` (all nodes, fixed at first use):
       ``n <= small_max_nodes`` (4) -> ``small`` (default ``least_loaded``: the guide says
       round robin or least loaded; least loaded is never worse on uneven requests);
       ``n <= medium_max_nodes`` (32) -> ``medium`` (default ``token_aware``, whose charge is
       corrected at each request's first token: the guide's "token-aware with dynamic
       adjustment"); above -> ``large``: "predictive with locality": a request whose prompt
       starts with a shareable prefix of at least ``cache_locality``'s key length goes to the
       ``long_prompt`` strategy, any other to ``large`` (default ``predictive``).

    The guide says 1-4 and 8-32 nodes and nothing for 5-7; they go to ``medium`` here: from 5
    nodes on, request-count balancing misjudges mixed request sizes more often than it does
    over a handful of nodes, and token counting costs nothing more.

    Every inner strategy the cluster can use is built at first use and sees every request's
    ``on_dispatch``, ``on_first_token`` and ``on_finish`` (not only those it routed), so the
    ledgers of ``token_aware`` and ``predictive`` count all the load on each node.
    ``stats()``: ``chose_<name>`` per inner strategy (requests it routed), plus the inner
    strategies' own counters prefixed with ``<name>.``. The optional capabilities of an inner
    strategy (hedging, retries, rebalancing) are not forwarded: ``auto`` only routes.
    """

    class Params(StrategyParams):
        small: ComponentSpec = Field(_spec("least_loaded"),
                                     description="strategy for clusters of up to "
                                                 "small_max_nodes nodes")
        medium: ComponentSpec = Field(_spec("token_aware"),
                                      description="strategy for up to medium_max_nodes nodes")
        large: ComponentSpec = Field(_spec("predictive"),
                                     description="strategy for larger clusters (requests "
                                                 "without a shared prefix)")
        long_prompt: ComponentSpec = Field(_spec("cache_locality"),
                                           description="strategy for long prompts (and, on "
                                                       "large clusters, shared prefixes)")
        multi_model: ComponentSpec = Field(_spec("multi_model"),
                                           description="strategy when nodes serve several "
                                                       "models (least_loaded if unregistered)")
        small_max_nodes: int = Field(4, ge=0, description="largest 'small' cluster, nodes")
        medium_max_nodes: int = Field(32, ge=0, description="largest 'medium' cluster, nodes")
        long_prompt_tokens: int = Field(4096, ge=0, description="prompts longer than this go "
                                                                "to long_prompt, tokens")

        @field_validator("small", "medium", "large", "long_prompt", "multi_model",
                         mode="before")
        @classmethod
        def _check_inner(cls, spec: ComponentSpec | dict) -> ComponentSpec:
            try:
                return check_inner(spec, "spec")
            except ScenarioError as exc:  # as ValueError, pydantic prefixes the field path
                raise ValueError(str(exc)) from None

    params: Params

    def __init__(self, params, rng) -> None:  # type: ignore[no-untyped-def]
        super().__init__(params, rng)
        #: role -> strategy; built at first use
        self._inner: dict[str, Strategy] = {}
        self._names: dict[str, str] = {}
        self._regime = ""
        self.chosen: dict[str, int] = {}

    def _build(self, role: str, spec: ComponentSpec) -> None:
        if spec.name not in strategies:
            spec = FALLBACK
        self._inner[role] = build_inner(spec, self.rng, f"auto.{role}")
        self._names[role] = spec.name

    def _setup(self, view: ClusterView) -> None:
        p = self.params
        models = {info.model for info in view.nodes} - {""}
        n = view.n_nodes
        if len(models) > 1:
            self._regime = "multi_model"
        elif n <= p.small_max_nodes:
            self._regime = "small"
        elif n <= p.medium_max_nodes:
            self._regime = "medium"
        else:
            self._regime = "large"
        self._build(self._regime, getattr(p, self._regime))
        if self._regime != "multi_model":
            self._build("long_prompt", p.long_prompt)

    def route(self, request: RequestInfo, view: ClusterView) -> str:
        """The role of the inner strategy that routes ``request``."""
        if not self._regime:
            self._setup(view)
        regime = self._regime
        if regime == "multi_model":
            return regime
        if request.prompt_tokens > self.params.long_prompt_tokens:
            return "long_prompt"
        if regime == "large":
            locality = self._inner["long_prompt"]
            if (isinstance(locality, CacheLocality)
                    and locality.prefix_key(request, view) is not None):
                return "long_prompt"
        return regime

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        role = self.route(request, view)
        name = self._names[role]
        self.chosen[name] = self.chosen.get(name, 0) + 1
        return self._inner[role].choose(request, view)

    def on_dispatch(self, request: RequestInfo, node_id: int, now_s: float) -> None:
        """Tell every inner strategy (their ledgers count all the load)."""
        for inner in self._inner.values():
            inner.on_dispatch(request, node_id, now_s)

    def on_first_token(self, request_id: int, node_id: int, now_s: float) -> None:
        """Tell every inner strategy."""
        for inner in self._inner.values():
            inner.on_first_token(request_id, node_id, now_s)

    def on_node_down(self, node_id: int) -> None:
        """Tell every inner strategy."""
        for inner in self._inner.values():
            inner.on_node_down(node_id)

    def on_finish(self, outcome: Outcome) -> None:
        """Tell every inner strategy."""
        for inner in self._inner.values():
            inner.on_finish(outcome)

    def stats(self) -> dict[str, float]:
        """Requests routed per inner strategy, and the inner strategies' own counters."""
        out: dict[str, float] = {f"chose_{name}": count for name, count in self.chosen.items()}
        for role, inner in self._inner.items():
            for key, value in inner.stats().items():
                name = f"{self._names[role]}.{key}"
                out[name] = out.get(name, 0) + value
        return out
