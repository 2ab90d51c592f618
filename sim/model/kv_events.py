"""What a router learns of the nodes' prefix caches from their KV events, after a delay.

Engines such as vLLM can publish KV-cache events (blocks stored, blocks removed); NVIDIA
Dynamo's and llm-d's precise prefix-aware routers subscribe to them (ai-dynamo/dynamo
``lib/kv-router``; llm-d ``precise-prefix-cache-scorer``). Each node appends ``(time, segment
key, cached blocks)`` whenever the cached prefix of a key grows or shrinks; the router's mirror
applies the events ``delay_s`` after they happened and answers prefix-hit questions from that
view, which is exact when the delay is 0 and stale otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

from sim.model.node import GpuNode
from sim.model.requests import RequestTable


class KvEventMirror:
    """The router-side copy of every node's cached prefixes, ``delay_s`` behind."""

    def __init__(self, nodes: list[GpuNode], table: RequestTable, delay_s: float,
                 clock: Callable[[], float]):
        self.nodes = nodes
        self.table = table
        self.delay_s = delay_s
        self.clock = clock
        self._cursor = [0] * len(nodes)
        self._cached: list[dict[int, int]] = [{} for _ in nodes]
        for node in nodes:
            node.publish_kv_events()

    def _sync(self, node_id: int) -> dict[int, int]:
        horizon = self.clock() - self.delay_s
        log = self.nodes[node_id].kv_log
        cached = self._cached[node_id]
        i = self._cursor[node_id]
        while i < len(log) and log[i][0] <= horizon:
            _, key, blocks = log[i]
            if blocks:
                cached[key] = blocks
            else:
                cached.pop(key, None)
            i += 1
        self._cursor[node_id] = i
        return cached

    def cached_prefix_blocks(self, node_id: int, rid: int) -> int:
        """Leading prompt blocks of request ``rid`` the node's events say it has cached (at
        most ``prompt - 1`` tokens' worth, as a hit never covers the last token)."""
        cached = self._sync(node_id)
        node = self.nodes[node_id]
        bs = node.batcher.kv.block_size
        limit = (self.table.prompt_tokens[rid] - 1) // bs
        hit = 0
        for key, n in self.table.prompt_spans(rid, bs):
            have = cached.get(key, 0)
            if have < n:
                hit += have
                break
            hit += n
        return min(hit, limit)
