"""Disaggregated prefill and decode: the KV-cache transfer between the pools.

A cluster whose node groups have roles (``prefill``, ``decode``) serves a request in three
places, one at a time (``Disaggregation.where`` checks it):

1. **prefill**: the router dispatches it to a prefill node (the strategy's pick); that node
   runs the prompt like any engine (chunked, with its own prefix cache) and emits the first
   token, which ends the TTFT. The request then leaves the node (``ContinuousBatcher
   ._hand_off``: its blocks are freed, shareable prompt blocks stay cached there);
2. **in transfer**: the prompt's KV cache (``prompt_tokens x kv_bytes_per_token`` bytes) moves
   over the link of the pool pair: one SimPy event per request, at the time it arrives;
3. **decode**: the decode node the strategy picked at dispatch queues it
   (``ContinuousBatcher.enqueue_transferred``) and admits it FCFS when the prompt's blocks fit
   (KV admission: a request that does not fit waits in that queue, never dropped); its first
   iteration computes the first token's KV (one token at context ``prompt``) and samples the
   second token, then it decodes as usual (and is preempted and recomputed there if need be).

A strategy may also keep a request on its decode node for the whole of it (``prefill``
None: Dynamo's local prefill of short or well cached prompts); it is then served there as in
an aggregated cluster.

**Link timing.** A link has a bandwidth (bytes/s per GPU pair) and a fixed latency per
transfer (handshake and completion notice). A transfer between a prefill node of TP ``a`` and
a decode node of TP ``b`` uses ``min(a, b)`` GPU pairs in parallel (each GPU has its own NIC or
NVLink port), so its bandwidth is ``bandwidth x min(a, b)``. Each node has one egress and one
ingress port (all its GPUs' links together): transfers are served first come first served at
both ends (a per-node FIFO reserved when the transfer is issued, in hand-off order: it starts
when the data is ready and both the sender's egress and the receiver's ingress are free, and
holds both for ``bytes / bandwidth``). It ends ``latency`` after its last byte left. Without
contention::

    transfer_s = latency + bytes / bandwidth                      (layerwise: false)

**Layer-by-layer overlap** (``layerwise: true``): the engine sends each layer's KV as soon as
the prefill's last forward pass computed it, so the transfer is modelled as beginning when the
prefill's last chunk starts (its iteration start) instead of at the first token, and cannot end
before the last layer is out: its last byte leaves at
``max(start + bytes / bandwidth, first_token + bytes / (bandwidth x layers))``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import simpy

from sim.errors import SimulationError
from sim.model.cluster import Cluster
from sim.model.requests import COMPLETED, UNFINISHED, Outcome, RequestTable
from sim.policy.base import ClusterView, RequestInfo, Strategy

#: link presets: (bandwidth in GB/s per GPU pair and direction, latency in s per transfer)
LINK_PRESETS: dict[str, tuple[float, float]] = {
    # NVLink 4 (H100 SXM): 900 GB/s bidirectional per GPU -> 450 GB/s one way
    "nvlink": (450.0, 10e-6),
    # InfiniBand NDR / RoCE with GPUDirect RDMA: one 400 Gb/s NIC per GPU -> 50 GB/s
    "infiniband": (50.0, 50e-6),
    "rdma": (50.0, 50e-6),
    # TCP over 100 GbE (NIXL's TCP backend, Mooncake's TCP transport): ~80 % of line rate
    "tcp": (10.0, 500e-6),
}


@dataclass(frozen=True)
class LinkParams:
    """One pool pair's link: bytes/s per GPU pair, latency per transfer, overlap."""

    bandwidth_Bps: float
    latency_s: float
    layerwise: bool = False


@dataclass(frozen=True)
class DisaggConfig:
    """What the engine needs to serve a cluster with roles (resolved from the scenario)."""

    #: per node: KV bytes of one token for the whole model (all GPUs: per GPU x TP)
    kv_bytes_per_token: tuple[int, ...]
    #: per node: tensor-parallel GPUs
    tensor_parallel: tuple[int, ...]
    #: per node: layers (for the layer-by-layer overlap)
    num_layers: tuple[int, ...]
    #: (prefill group, decode group) -> link
    links: dict[tuple[str, str], LinkParams] = field(default_factory=dict)


class Disaggregation:
    """Carries requests from the prefill pool to the decode pool (see the module docstring).

    Per-request records (``columns``): the prefill node (-1: prefilled on its decode node),
    the transfer's bytes, its time from the first token to the KV on the decode node
    (``transfer_s``, less than the link time when the overlap hides part of it) and the part
    of it spent waiting for busy ports (``transfer_queue_s``).
    """

    def __init__(self, env: simpy.Environment, cluster: Cluster, table: RequestTable,
                 config: DisaggConfig, router: Any) -> None:
        self.env = env
        self.cluster = cluster
        self.table = table
        self.config = config
        self.router = router
        infos = cluster.infos
        self.prefill_pool = tuple(i.role == "prefill" for i in infos)
        self.decode_pool = tuple(i.role == "decode" for i in infos)
        n = len(infos)
        self._egress_free = [0.0] * n
        self._ingress_free = [0.0] * n
        #: request id -> its decode node, while it is in prefill or in transfer
        self.decode_of: dict[int, int] = {}
        #: requests in transfer now: id -> their hand-off outcome on the prefill node
        self.in_transfer: dict[int, Outcome] = {}
        nan = math.nan
        self.prefill_node = [-1] * table.n
        self.transfer_bytes = [0] * table.n
        self.transfer_s = [nan] * table.n
        self.transfer_queue_s = [nan] * table.n
        self.transfers = 0
        self.local_prefills = 0
        for node_id, is_prefill in enumerate(self.prefill_pool):
            if is_prefill:
                cluster.nodes[node_id].on_done = self._prefill_done
        router.disagg = self

    # -- routing ----------------------------------------------------------------------------

    def pool_view(self, view: ClusterView, pool: tuple[bool, ...]) -> ClusterView:
        """``view`` with only the nodes of ``pool`` accepting."""
        return view._replace(accepting=tuple(a and b for a, b in zip(view.accepting, pool,
                                                                     strict=True)))

    def dispatch(self, replica: Any, info: RequestInfo, view: ClusterView) -> None:
        """Route a request: the strategy picks a (prefill, decode) pair, or a decode node
        alone (local prefill); the request goes to its prefill node first."""
        strategy: Strategy = replica.strategy
        choose_pair: Callable[..., tuple[int | None, int]] | None = getattr(
            strategy, "choose_pair", None)
        if choose_pair is not None:
            prefill, decode = choose_pair(info, view)
        else:  # any strategy: its own pick within each pool
            decode = strategy.choose(info, self.pool_view(view, self.decode_pool))
            prefill = strategy.choose(info, self.pool_view(view, self.prefill_pool))
        self._check(strategy, decode, view, self.decode_pool, "decode")
        rid = info.request_id
        now = view.now_s
        if prefill is None:
            self.local_prefills += 1
            if replica.watches_dispatch:
                strategy.on_dispatch(info, decode, now)
            replica.send(rid, decode)
            return
        self._check(strategy, prefill, view, self.prefill_pool, "prefill")
        if replica.watches_dispatch and choose_pair is None:
            strategy.on_dispatch(info, prefill, now)
            strategy.on_dispatch(info, decode, now)
        # the decode node's router counters include the request from dispatch on
        tokens = self.router.request_tokens[rid]
        replica.inflight_requests[decode] += 1
        replica.inflight_tokens[decode] += tokens
        self.decode_of[rid] = decode
        self.prefill_node[rid] = prefill
        replica.send(rid, prefill)

    @staticmethod
    def _check(strategy: Strategy, node: object, view: ClusterView, pool: tuple[bool, ...],
               what: str) -> None:
        if not (type(node) is int and 0 <= node < len(pool) and pool[node]
                and view.accepting[node]):
            raise SimulationError(f"strategy '{strategy.registered_name}' chose {node!r} as "
                                  f"the {what} node, not an accepting {what} node id")

    # -- the hand-off -----------------------------------------------------------------------

    def _prefill_done(self, outcome: Outcome) -> None:
        """A request left its prefill node: hand it off, or pass its record on (it finished
        with its first token, or was rejected there)."""
        rid = outcome.request_id
        router = self.router
        decode = self.decode_of.pop(rid, None)
        if decode is None:  # not a disaggregated request (cannot happen: prefill pool only)
            router.on_done(outcome)
            return
        replica = router._replica_of(rid)
        if (outcome.status != COMPLETED
                or outcome.generated_tokens >= self.table.output_tokens[rid]):
            replica.release(rid, decode)
            router.on_done(outcome)
            return
        prefill = outcome.node_id
        replica.release(rid, prefill)
        now = self.env.now
        start_ready = (self.cluster.nodes[prefill].iteration_start_s
                       if self._link(prefill, decode).layerwise else now)
        done, queued, n_bytes = self.schedule(prefill, decode, self.table.prompt_tokens[rid],
                                              start_ready, now)
        self.transfers += 1
        self.transfer_bytes[rid] = n_bytes
        self.transfer_s[rid] = done - now
        self.transfer_queue_s[rid] = queued
        self.in_transfer[rid] = outcome
        self.env.timeout(done - now).callbacks.append(
            lambda _e: self._arrive(rid, decode, outcome))

    def _arrive(self, rid: int, decode: int, handoff: Outcome) -> None:
        del self.in_transfer[rid]
        self.router.table.node[rid] = decode
        self.cluster.nodes[decode].receive(rid, handoff)

    def _link(self, prefill: int, decode: int) -> LinkParams:
        infos = self.cluster.infos
        return self.config.links[(infos[prefill].group, infos[decode].group)]

    def schedule(self, prefill: int, decode: int, tokens: int, ready_s: float,
                 prefill_end_s: float) -> tuple[float, float, int]:
        """Reserve the ports for one transfer of ``tokens`` tokens' KV whose data is ready at
        ``ready_s`` (the prefill's end, or its last chunk's start with the overlap); return
        (arrival time, time waited for busy ports, bytes)."""
        cfg = self.config
        link = self._link(prefill, decode)
        n_bytes = tokens * cfg.kv_bytes_per_token[prefill]
        bandwidth = link.bandwidth_Bps * min(cfg.tensor_parallel[prefill],
                                             cfg.tensor_parallel[decode])
        start = max(ready_s, self._egress_free[prefill], self._ingress_free[decode])
        busy_until = start + n_bytes / bandwidth
        # the ports carry the bytes for bytes / bandwidth; with the overlap the last layer's
        # KV cannot leave before the prefill's last pass computed it
        self._egress_free[prefill] = busy_until
        self._ingress_free[decode] = busy_until
        last_byte = busy_until
        if link.layerwise:
            last_byte = max(last_byte, prefill_end_s
                            + n_bytes / (bandwidth * cfg.num_layers[prefill]))
        return last_byte + link.latency_s, start - ready_s, n_bytes

    # -- observation ------------------------------------------------------------------------

    def where(self, rid: int) -> list[str]:
        """Every place request ``rid`` is in now (for the conservation check: at most one)."""
        places = []
        for node, info in zip(self.cluster.nodes, self.cluster.infos, strict=True):
            if node.batcher.holds(rid):
                places.append(f"{info.role}:{info.node_id}")
        if rid in self.in_transfer:
            places.append("transfer")
        return places

    def columns(self) -> dict[str, Any]:
        """Per-request transfer records (lists, one entry per request)."""
        return {"prefill_node": self.prefill_node, "transfer_bytes": self.transfer_bytes,
                "transfer_s": self.transfer_s, "transfer_queue_s": self.transfer_queue_s}

    def book_in_transfer(self, now: float) -> list[Outcome]:
        """Records of the requests still in transfer at the end of the run (unfinished)."""
        return [o._replace(status=UNFINISHED, finish_s=math.nan)
                for o in self.in_transfer.values()]
