"""Scorers for composed strategies (``sim.policy.compose``): one number in [0, 1] per node.

A scorer rates each candidate node of one routing decision. A *benefit* scorer
(``higher_is_better = True``: free KV, a prefix hit) adds ``weight * score`` to a node's total;
a *cost* scorer (``higher_is_better = False``: a load fraction) subtracts it, which ranks nodes
exactly as adding ``weight * (1 - score)`` would. The picker then takes the highest total.

Each scorer declares the signals it reads (``signals``, a subset of ``SIGNALS``), so a user can
see what a composed router depends on and how stale it is: router counters are always fresh,
node telemetry is ``view.telemetry_age_s`` old, the cache index is the router's own guess.

Scorers never draw random numbers and never touch nodes; a stateful one (a prefix index, a
session table) updates itself in ``on_pick``, after the strategy has chosen. Register a new one
with ``@scorers.register("name")``; third-party packages use the entry-point group
``simlb.scorer``.
"""

from __future__ import annotations

import abc
import math
from collections import OrderedDict
from typing import ClassVar

from pydantic import Field

from sim.outcome import Outcome
from sim.policy.base import ClusterView, RequestInfo
from sim.policy.radix import CacheKnowledge, PrefixIndex, reported_matches
from sim.registry import Registry
from sim.spec import NoParams, StrictModel

#: what a scorer or filter may read, with its freshness
SIGNALS: dict[str, str] = {
    "request": "the request itself (prompt tokens, max output tokens, session, prefix group)",
    "counters": "router-local counters (requests and tokens in flight): always fresh",
    "telemetry": "node reports (queued, running, KV blocks in use, recent latency): "
                 "telemetry_age_s old",
    "nodes": "static node facts (max_num_seqs, KV size, capacity): exact",
    "cache_index": "the router's own prefix index, filled with its past picks",
    "kv_events": "the nodes' KV events (router.kv_events_delay_s behind)",
    "history": "what this router decided before (sessions)",
}


class Scorer(abc.ABC):
    """Rates candidate nodes in [0, 1]; see the module docstring."""

    Params: ClassVar[type[StrictModel]] = NoParams
    signals: ClassVar[frozenset[str]] = frozenset()
    higher_is_better: ClassVar[bool] = True
    registered_name: ClassVar[str] = ""

    def __init__(self, params: StrictModel, owner: str = "composed") -> None:
        self.params = params
        #: the strategy this scorer serves (named in errors)
        self.owner = owner

    @abc.abstractmethod
    def score(self, request: RequestInfo, view: ClusterView, candidates: list[int]) -> list[float]:
        """One score in [0, 1] per candidate, in the order of ``candidates`` (never empty)."""

    def on_pick(self, request: RequestInfo, view: ClusterView, node: int) -> None:  # noqa: B027
        """Called after the strategy chose ``node`` for ``request`` (stateful scorers)."""

    def on_finish(self, outcome: Outcome) -> None:  # noqa: B027
        """Called when a request this strategy routed leaves its node."""

    def on_node_down(self, node_id: int) -> None:  # noqa: B027
        """Called when a node fails or leaves (stateful scorers forget what it held)."""


scorers: Registry[type[Scorer]] = Registry("scorer")


@scorers.register("queue")
class QueueScorer(Scorer):
    """Shorter reported waiting queue, min-max normalised: ``(Qmax - Q_i) / (Qmax - Qmin)``
    over the candidates, 1 for all when they are equal (llm-d ``queue-scorer``)."""

    signals = frozenset({"telemetry"})

    def score(self, request: RequestInfo, view: ClusterView, candidates: list[int]) -> list[float]:
        queued = view.telemetry.queued
        q_min = min(queued[i] for i in candidates)
        q_max = max(queued[i] for i in candidates)
        if q_max == q_min:
            return [1.0] * len(candidates)
        return [(q_max - queued[i]) / (q_max - q_min) for i in candidates]


@scorers.register("kv_cache_utilization")
class KvFreeScorer(Scorer):
    """Free share of the reported KV cache, ``1 - min(1, used / total)`` (llm-d
    ``kv-cache-utilization-scorer``)."""

    signals = frozenset({"telemetry", "nodes"})

    def score(self, request: RequestInfo, view: ClusterView, candidates: list[int]) -> list[float]:
        return [1.0 - min(1.0, view.kv_utilization(i)) for i in candidates]


@scorers.register("prefix_cache")
class PrefixCacheScorer(Scorer):
    """Matched share of the request's first ``max_prefix_blocks`` prompt blocks per node
    (llm-d ``prefix-cache-scorer``).

    ``approximate``: the router's own LRU index of the blocks it sent to each node (capacity
    ``lru_capacity_blocks``, default the node's KV blocks), filled after each pick;
    ``precise``: the nodes' KV events (needs ``router.kv_events_delay_s``).
    """

    class Params(StrictModel):
        cache_knowledge: CacheKnowledge = Field(
            "approximate", description="approximate: the router's own LRU index; precise: "
                                       "the nodes' KV events (needs router.kv_events_delay_s)")
        max_prefix_blocks: int = Field(256, ge=1, description="prompt blocks matched at most")
        lru_capacity_blocks: int | None = Field(
            None, ge=1, description="index capacity per node, blocks; null: the node's KV "
                                    "blocks")

    params: Params
    #: the cache index (approximate) or the KV events (precise), as ``cache_knowledge`` says
    signals = frozenset({"request", "cache_index", "kv_events"})

    def __init__(self, params: StrictModel, owner: str = "composed") -> None:
        super().__init__(params, owner)
        self.index: PrefixIndex | None = None
        self._ids_of: tuple[int, list[int]] = (-1, [])  # the last request's block ids

    def score(self, request: RequestInfo, view: ClusterView, candidates: list[int]) -> list[float]:
        p = self.params
        block = view.nodes[0].block_size_tokens
        total = min(request.prompt_tokens // block, p.max_prefix_blocks)
        if total == 0:
            return [0.0] * len(candidates)
        if p.cache_knowledge == "precise":
            matched = reported_matches(view, request, self.owner)
        else:
            self._ids_of = (request.request_id, self._ids(request, view))
            matched = self._index(view).match(self._ids_of[1])
        return [min(matched[i], total) / total for i in candidates]

    def on_pick(self, request: RequestInfo, view: ClusterView, node: int) -> None:
        if self.params.cache_knowledge == "approximate":
            self._index(view).insert(node, self._ids(request, view), view.now_s)

    def on_node_down(self, node_id: int) -> None:
        """Forget the node's entries in the prefix index, as ``llm_d`` does."""
        if self.index is not None:
            self.index.drop_tenant(node_id)

    def _ids(self, request: RequestInfo, view: ClusterView) -> list[int]:
        if self._ids_of[0] == request.request_id:
            return self._ids_of[1]
        ids = view.prompt_block_ids(request.request_id, view.nodes[0].block_size_tokens)
        return ids[: self.params.max_prefix_blocks]

    def _index(self, view: ClusterView) -> PrefixIndex:
        if self.index is None:
            cap = self.params.lru_capacity_blocks
            self.index = PrefixIndex(
                view.n_nodes, [cap or node.kv_total_blocks for node in view.nodes])
        return self.index


@scorers.register("session_affinity")
class SessionAffinityScorer(Scorer):
    """1 for the node that served the request's session last, 0 elsewhere (llm-d
    ``session-affinity-scorer``); remembers the ``max_sessions`` most recent sessions."""

    class Params(StrictModel):
        max_sessions: int = Field(100_000, ge=1, description="sessions remembered (LRU)")

    params: Params
    signals = frozenset({"request", "history"})

    def __init__(self, params: StrictModel, owner: str = "composed") -> None:
        super().__init__(params, owner)
        self._sessions: OrderedDict[int, int] = OrderedDict()

    def score(self, request: RequestInfo, view: ClusterView, candidates: list[int]) -> list[float]:
        last = self._sessions.get(request.session_id, -1)
        return [1.0 if i == last else 0.0 for i in candidates]

    def on_pick(self, request: RequestInfo, view: ClusterView, node: int) -> None:
        if request.session_id >= 0:
            self._sessions[request.session_id] = node
            self._sessions.move_to_end(request.session_id)
            if len(self._sessions) > self.params.max_sessions:
                self._sessions.popitem(last=False)


@scorers.register("running_fraction")
class RunningFraction(Scorer):
    """Cost: reported running requests over the node's batch limit, ``min(1, running /
    max_num_seqs)``."""

    signals = frozenset({"telemetry", "nodes"})
    higher_is_better = False

    def score(self, request: RequestInfo, view: ClusterView, candidates: list[int]) -> list[float]:
        running, nodes = view.telemetry.running, view.nodes
        return [min(1.0, running[i] / nodes[i].max_num_seqs) for i in candidates]


@scorers.register("kv_usage")
class KvUsage(Scorer):
    """Cost: reported share of the node's KV blocks in use, ``used / total``."""

    signals = frozenset({"telemetry", "nodes"})
    higher_is_better = False

    def score(self, request: RequestInfo, view: ClusterView, candidates: list[int]) -> list[float]:
        used, nodes = view.telemetry.kv_used_blocks, view.nodes
        return [used[i] / nodes[i].kv_total_blocks for i in candidates]


@scorers.register("queue_fraction")
class QueueFraction(Scorer):
    """Cost: reported waiting requests against a full queue, ``min(1, queued /
    queue_scale)``."""

    class Params(StrictModel):
        queue_scale: float = Field(10.0, gt=0, description="waiting requests that count as a "
                                                           "full queue")

    params: Params
    signals = frozenset({"telemetry"})
    higher_is_better = False

    def score(self, request: RequestInfo, view: ClusterView, candidates: list[int]) -> list[float]:
        queued, scale = view.telemetry.queued, self.params.queue_scale
        return [min(1.0, queued[i] / scale) for i in candidates]


@scorers.register("recent_latency")
class RecentLatency(Scorer):
    """Cost: the node's recent end-to-end latency (EWMA) over the slowest candidate's; 0 for a
    node with no completion yet, and for all when none has one."""

    signals = frozenset({"telemetry"})
    higher_is_better = False

    def score(self, request: RequestInfo, view: ClusterView, candidates: list[int]) -> list[float]:
        latency = view.telemetry.recent_e2e_s or (math.nan,) * view.n_nodes
        slowest = max((latency[i] for i in candidates if latency[i] == latency[i]), default=0.0)
        return [latency[i] / slowest if slowest > 0 and latency[i] == latency[i] else 0.0
                for i in candidates]


@scorers.register("inflight")
class Inflight(Scorer):
    """Cost: requests this router has in flight on the node over the most on any candidate
    (0 for all when none has any); router counters, so never stale."""

    signals = frozenset({"counters"})
    higher_is_better = False

    def score(self, request: RequestInfo, view: ClusterView, candidates: list[int]) -> list[float]:
        return _over_max([view.inflight_requests[i] for i in candidates])


@scorers.register("inflight_tokens")
class InflightTokens(Scorer):
    """Cost: prompt + max output tokens this router has in flight on the node over the most
    on any candidate (0 for all when none has any)."""

    signals = frozenset({"counters"})
    higher_is_better = False

    def score(self, request: RequestInfo, view: ClusterView, candidates: list[int]) -> list[float]:
        return _over_max([view.inflight_tokens[i] for i in candidates])


def _over_max(values: list[int]) -> list[float]:
    top = max(values)
    return [v / top for v in values] if top > 0 else [0.0] * len(values)
