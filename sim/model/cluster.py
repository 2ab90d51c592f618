"""The nodes of a simulated cluster and the telemetry they report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import simpy

from sim.metrics.recorder import Recorder
from sim.model.batcher import BatcherConfig, ContinuousBatcher
from sim.model.cost import CostModel
from sim.model.kv_cache import KVCache
from sim.model.node import GpuNode
from sim.model.requests import Outcome, RequestTable
from sim.policy.base import NodeInfo, Telemetry


@dataclass(frozen=True)
class NodeSpec:
    """Everything needed to build one node, resolved from the scenario."""

    group: str
    profile: str
    cost: CostModel
    kv_total_blocks: int
    block_size: int
    prefix_caching: bool
    batcher: BatcherConfig


class Cluster:
    """Builds the nodes and samples their telemetry."""

    def __init__(self, env: simpy.Environment, specs: list[NodeSpec], table: RequestTable,
                 recorder: Recorder, fast_forward: bool = True):
        self.env = env
        self.specs = specs
        self.on_done: Callable[[Outcome], None] = _unset_on_done
        self.nodes: list[GpuNode] = []
        for node_id, spec in enumerate(specs):
            kv = KVCache(spec.kv_total_blocks, spec.block_size, spec.prefix_caching)
            batcher = ContinuousBatcher(kv, table, spec.batcher, node_id)
            self.nodes.append(GpuNode(env, node_id, batcher, spec.cost, recorder,
                                      self._node_done, fast_forward))
        self.infos: tuple[NodeInfo, ...] = tuple(
            NodeInfo(node_id=i, group=s.group, profile=s.profile,
                     max_num_seqs=s.batcher.max_num_seqs,
                     max_num_batched_tokens=s.batcher.max_num_batched_tokens,
                     kv_total_blocks=s.kv_total_blocks, block_size_tokens=s.block_size)
            for i, s in enumerate(specs))

    def _node_done(self, outcome: Outcome) -> None:
        self.on_done(outcome)

    def sample_telemetry(self) -> Telemetry:
        """What every node reports now."""
        now = self.env.now
        return Telemetry(
            taken_at_s=now,
            queued=tuple(len(n.batcher.waiting) for n in self.nodes),
            running=tuple(len(n.batcher.running) for n in self.nodes),
            kv_used_blocks=tuple(n.kv_used_blocks(now) for n in self.nodes),
        )


def _unset_on_done(outcome: Outcome) -> None:
    raise RuntimeError("Cluster.on_done was not connected to a router")
