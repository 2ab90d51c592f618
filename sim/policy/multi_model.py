"""Multi-model serving: route among the replicas of the request's model by remaining capacity."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sim.policy.base import (
    ClusterView,
    RequestInfo,
    Strategy,
    StrategyParams,
    argmin_random_tie,
    strategies,
)


@strategies.register("multi_model")
class MultiModel(Strategy):
    """Send to the replica of the request's model with the most remaining capacity.

    The router marks nodes serving another model as not accepting (a node group with no
    ``model`` serves every request), so the candidates are the accepting nodes. Remaining
    capacity is capacity minus the router's own outstanding load on the node (always fresh):

    * ``capacity: tokens`` (default): KV cache tokens (``kv_total_blocks * block_size``)
      minus the outstanding estimated tokens (prompt + max output of the requests in
      flight). KV memory is what runs out first on an LLM server, requests differ a hundredfold
      in size, and a request can start at once only where free KV holds it; the absolute
      headroom (not the fraction) is what says whether it fits, and it lets a replica with a
      larger cache (another GPU, tensor parallelism) take proportionally more.
    * ``capacity: requests``: ``max_num_seqs`` minus requests in flight (batch slots).

    Ties go to a random node among the best. A replica that finishes faster frees its load
    sooner, so speed differences show through the outstanding counts.
    """

    reads_telemetry = False

    class Params(StrategyParams):
        capacity: Literal["tokens", "requests"] = Field(
            "tokens", description="capacity measure: KV tokens minus outstanding estimated "
                                  "tokens, or batch slots minus requests in flight")

    params: Params

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        ids = view.accepting_ids()
        nodes = view.nodes
        if self.params.capacity == "tokens":
            used = view.inflight_tokens
            minus_free = [used[i] - nodes[i].kv_total_blocks * nodes[i].block_size_tokens
                          if view.accepting[i] else 0 for i in range(view.n_nodes)]
        else:
            used = view.inflight_requests
            minus_free = [used[i] - nodes[i].max_num_seqs if view.accepting[i] else 0
                          for i in range(view.n_nodes)]
        return argmin_random_tie(minus_free, ids, self.draws)
