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
    model: str = ""
    #: the batch policy class (a ``batchers`` registry entry)
    batcher_cls: type[ContinuousBatcher] = ContinuousBatcher
    #: ``prefill``, ``decode`` or ``mixed`` (disaggregated serving, ``sim.model.transfer``)
    role: str = "mixed"


class Cluster:
    """Builds the nodes and samples their telemetry."""

    def __init__(self, env: simpy.Environment, specs: list[NodeSpec], table: RequestTable,
                 recorder: Recorder, fast_forward: bool = True,
                 slowdowns: dict[int, tuple[tuple[float, float, float], ...]] | None = None):
        self.env = env
        self.specs = specs
        self.table = table
        self.on_done: Callable[[Outcome], None] = _unset_on_done
        self.nodes: list[GpuNode] = []
        for node_id, spec in enumerate(specs):
            batcher = self._new_batcher(node_id)
            self.nodes.append(GpuNode(env, node_id, batcher, spec.cost, recorder,
                                      self._node_done, fast_forward,
                                      (slowdowns or {}).get(node_id, ())))
        self.infos: tuple[NodeInfo, ...] = tuple(node_info(i, s) for i, s in enumerate(specs))

    def _new_batcher(self, node_id: int) -> ContinuousBatcher:
        spec = self.specs[node_id]
        kv = KVCache(spec.kv_total_blocks, spec.block_size, spec.prefix_caching)
        batcher = spec.batcher_cls(kv, self.table, spec.batcher, node_id)
        if spec.role == "prefill":
            batcher.prefill_only = True
        return batcher

    def reset_node(self, node_id: int) -> None:
        """Give a node a fresh engine (a restart: empty queue, batch and KV cache, prefix
        cache included), keeping the old one's counters that the summary reads, and its
        KV-event log going with a removal of everything it had cached."""
        node = self.nodes[node_id]
        old = node.batcher
        new = self._new_batcher(node_id)
        new.kv.evictions += old.kv.evictions
        new.preemption_gaps = old.preemption_gaps
        new.preemptions = old.preemptions
        node.batcher = new
        if old.kv.events is not None:
            node._flush_kv_events(self.env.now)
            new.kv.events = []
            cached = {key for _, key, blocks in node.kv_log if blocks}
            node.kv_log.extend((self.env.now, key, 0) for key in sorted(cached))
        node._record_state(self.env.now)

    def _node_done(self, outcome: Outcome) -> None:
        self.on_done(outcome)

    def connect(self, on_done: Callable[[Outcome], None]) -> None:
        """Send every node's outcomes to ``on_done`` (the router), directly: one call per
        outcome, not two."""
        self.on_done = on_done
        for node in self.nodes:
            node.on_done = on_done

    def sample_telemetry(self) -> Telemetry:
        """What every node reports now."""
        now = self.env.now
        batchers = [n.batcher for n in self.nodes]
        return Telemetry(
            taken_at_s=now,
            queued=tuple(len(b.waiting) for b in batchers),
            running=tuple(len(b.running) for b in batchers),
            kv_used_blocks=tuple(n.kv_used_blocks(now) for n in self.nodes),
            queued_tokens=tuple(b.waiting_tokens for b in batchers),
            recent_ttft_s=tuple(b.recent_ttft_s for b in batchers),
            recent_e2e_s=tuple(b.recent_e2e_s for b in batchers),
        )


def _unset_on_done(outcome: Outcome) -> None:
    raise RuntimeError("Cluster.on_done was not connected to a router")


def node_info(node_id: int, spec: NodeSpec) -> NodeInfo:
    """What the router knows about a node, with capacity figures from its cost model."""
    batch = min(64, spec.batcher.max_num_seqs)
    decode_s = spec.cost.step_s(0, 0, 0, batch, batch * 1024)
    prefill_s = spec.cost.step_s(2048, 1, 2048 * 2049 // 2, 0, 0)
    return NodeInfo(node_id=node_id, group=spec.group, profile=spec.profile,
                    max_num_seqs=spec.batcher.max_num_seqs,
                    max_num_batched_tokens=spec.batcher.max_num_batched_tokens,
                    kv_total_blocks=spec.kv_total_blocks, block_size_tokens=spec.block_size,
                    model=spec.model,
                    decode_tokens_per_s=batch / decode_s if decode_s > 0 else 0.0,
                    prefill_tokens_per_s=2048 / prefill_s if prefill_s > 0 else 0.0,
                    role=spec.role)
