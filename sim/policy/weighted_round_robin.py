"""Smooth weighted round robin by node capacity (nginx's algorithm)."""

from __future__ import annotations

from pydantic import Field, field_validator

from sim.errors import ScenarioError
from sim.policy.base import ClusterView, NodeInfo, RequestInfo, Strategy, StrategyParams, strategies


@strategies.register("weighted_round_robin")
class WeightedRoundRobin(Strategy):
    """Cycle through the nodes in proportion to their weights, interleaved smoothly.

    Smooth weighted round robin (nginx ``ngx_http_upstream_get_peer``, 2012): every node keeps
    a current value ``c_i`` (initially 0); each pick adds ``w_i`` to ``c_i`` of every accepting
    node, picks the largest ``c_i`` (ties: lowest id) and subtracts the accepting nodes' total
    weight from it. With integer weights every window of ``sum(w)`` consecutive picks gives
    node ``i`` exactly ``w_i`` of them, and the picks of a node are spread evenly (weights
    5, 1, 1 give ``a a b a c a a``), so a 1 %-weight node is picked once per 100.

    Weights are ``weights`` (one per node, in node id order) or, by default, each node's
    profile decode throughput ``NodeInfo.decode_tokens_per_s`` (equal weights if no node has
    one). Non-accepting nodes are skipped and keep their ``c_i``; when the accepting sets are
    disjoint (nodes serving different models) each set is an exact smooth WRR of its own.

    The seed document built a 100-slot list with ``int(weight * 100)`` slots per node, which
    drops weights below 1 % and rounds the rest (and sends a node's slots back to back); this
    strategy has neither flaw.
    """

    reads_telemetry = False

    class Params(StrategyParams):
        weights: list[float] | None = Field(
            None, description="one weight per node (node id order), >= 0 and not all 0; "
                              "null: each node's profile decode tokens/s")

        @field_validator("weights")
        @classmethod
        def _check_weights(cls, weights: list[float] | None) -> list[float] | None:
            if weights is None:
                return None
            if not weights or any(w < 0 for w in weights) or not any(w > 0 for w in weights):
                raise ValueError(f"expected weights >= 0, not all 0, got {weights}")
            return weights

    params: Params

    def __init__(self, params, rng) -> None:  # type: ignore[no-untyped-def]
        super().__init__(params, rng)
        self._weights: list[float] = []
        self._current: list[float] = []

    @classmethod
    def check_cluster(cls, params: StrategyParams, nodes: tuple[NodeInfo, ...]) -> None:
        """One weight per node."""
        weights = params.weights  # type: ignore[attr-defined]
        if weights is not None and len(weights) != len(nodes):
            raise ValueError(f"weights has {len(weights)} entries; expected one per node "
                             f"({len(nodes)} nodes)")

    def _setup(self, view: ClusterView) -> None:
        weights = self.params.weights
        if weights is None:
            weights = [info.decode_tokens_per_s for info in view.nodes]
            if not any(w > 0 for w in weights):
                weights = [1.0] * view.n_nodes
        elif len(weights) != view.n_nodes:
            raise ScenarioError(f"strategy 'weighted_round_robin': params.weights has "
                                f"{len(weights)} entries; expected one per node "
                                f"({view.n_nodes} nodes)")
        self._weights = list(weights)
        self._current = [0.0] * view.n_nodes

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        if not self._weights:
            self._setup(view)
        weights, current = self._weights, self._current
        ids = [i for i in view.accepting_ids() if weights[i] > 0]
        if not ids:  # only zero-weight nodes accept this request: plain round robin over them
            ids = view.accepting_ids()
            weights = [1.0] * view.n_nodes
        total = 0.0
        best = ids[0]
        for i in ids:
            current[i] += weights[i]
            total += weights[i]
            if current[i] > current[best]:
                best = i
        current[best] -= total
        return best
