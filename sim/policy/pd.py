"""Routers of disaggregated clusters: a (prefill, decode) pair per request.

In a cluster whose node groups have roles (``prefill``, ``decode``), the router asks a
strategy's ``choose_pair(request, view)`` for a prefill node and a decode node (``None`` as the
prefill node: prefill locally on the decode node). A strategy without ``choose_pair`` is asked
``choose`` twice, once per pool (the view restricted to that pool): so ``round_robin`` is a
per-pool round robin and ``least_loaded`` a per-pool least-loaded pick there.

``pd_pair`` composes two ordinary strategies, one per pool, and the conditional rule of the
production routers (prefill locally when the prompt's part not cached on the chosen decode node
is short); the production routers below are ``pd_pair`` with their sources' defaults. See
docs/disaggregation.md for each router's description and sources.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field, field_validator

from sim.outcome import Outcome
from sim.policy.base import (
    ClusterView,
    RequestInfo,
    Strategy,
    StrategyParams,
    argmin_random_tie,
    build_inner,
    check_inner,
    strategies,
)
from sim.policy.radix import PrefixIndex
from sim.spec import ComponentSpec


def pool_view(view: ClusterView, role: str) -> ClusterView:
    """``view`` with only the accepting nodes of ``role`` accepting."""
    return view._replace(accepting=tuple(a and n.role == role
                                         for a, n in zip(view.accepting, view.nodes,
                                                         strict=True)))


def _spec(name: str, **params: Any) -> ComponentSpec:
    return ComponentSpec(name=name, params=params)


class _PairParams(StrategyParams):
    prefill: ComponentSpec = Field(default_factory=lambda: _spec("least_loaded"),
                                   description="strategy picking the prefill node, within "
                                               "the prefill pool")
    decode: ComponentSpec = Field(default_factory=lambda: _spec("least_loaded"),
                                  description="strategy picking the decode node, within the "
                                              "decode pool")
    max_local_prefill_tokens: int = Field(
        -1, ge=-1, description="prefill on the decode node when the prompt tokens not cached "
                               "there are at most this many; -1: always disaggregate")
    max_prefill_queue: int | None = Field(
        None, ge=0, description="prefill locally too while this many requests or more wait "
                                "for a prefill node (Dynamo's max_prefill_queue_size); null: "
                                "no such rule")

    @field_validator("prefill", "decode", mode="before")
    @classmethod
    def _inner(cls, spec: Any) -> ComponentSpec:
        return check_inner(spec, "params.prefill/decode")


@strategies.register("pd_pair")
class PdPair(Strategy):
    """One strategy per pool, decode node first, then the conditional local-prefill rule.

    1. ``decode`` picks the decode node ``d`` within the decode pool;
    2. the request prefills on ``d`` itself when ``prompt - cached_d <= max_local_prefill_tokens``
       (``cached_d``: prompt tokens in ``d``'s prefix cache as this router's index of the
       requests it prefilled there knows, or as ``d``'s KV events report with
       ``router.kv_events_delay_s``), or when ``max_prefill_queue`` is set and at least that
       many requests wait in the prefill nodes' queues (the sampled telemetry, summed over the
       prefill pool: Dynamo's prefill queue size);
    3. otherwise ``prefill`` picks the prefill node within the prefill pool.

    In a cluster without roles it is its ``decode`` strategy. The inner strategies see their
    own picks' dispatch, first-token and finish hooks (the prefill strategy a finish on its
    prefill node).
    """

    Params = _PairParams
    params: _PairParams

    def __init__(self, params: StrategyParams, rng: np.random.Generator) -> None:
        super().__init__(params, rng)
        p = self.params
        self.prefill = build_inner(p.prefill, rng, "params.prefill")
        self.decode = build_inner(p.decode, rng, "params.decode")
        self._index: PrefixIndex | None = None
        self._prefill_of: dict[int, int] = {}
        self._decode_of: dict[int, int] = {}
        self.counts = {"local_prefills": 0, "remote_prefills": 0}

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        return self.decode.choose(request, view)

    def choose_pair(self, request: RequestInfo, view: ClusterView) -> tuple[int | None, int]:
        """The (prefill node or None, decode node) pair of a request."""
        decode = self.decode.choose(request, pool_view(view, "decode"))
        now = view.now_s
        if self.prefill_locally(request, view, decode):
            self.counts["local_prefills"] += 1
            self.decode.on_dispatch(request, decode, now)
            return None, decode
        prefill = self.prefill.choose(request, pool_view(view, "prefill"))
        self.counts["remote_prefills"] += 1
        self._prefill_of[request.request_id] = prefill
        self._decode_of[request.request_id] = decode
        self.prefill.on_dispatch(request, prefill, now)
        self.decode.on_dispatch(request, decode, now)
        return prefill, decode

    def prefill_locally(self, request: RequestInfo, view: ClusterView, decode: int) -> bool:
        """The conditional rule (step 2 of the class docstring)."""
        p = self.params
        if p.max_prefill_queue is not None:
            queued = view.telemetry.queued
            queue = sum(queued[i] for i, n in enumerate(view.nodes) if n.role == "prefill")
            if queue >= p.max_prefill_queue:
                return True
        if p.max_local_prefill_tokens < 0:
            return False
        block = view.nodes[decode].block_size_tokens
        ids = view.prompt_block_ids(request.request_id, block)
        if view.cached_prefix_blocks is not None:
            cached = view.cached_prefix_blocks(decode, request.request_id)
        else:
            if self._index is None:
                self._index = PrefixIndex(view.n_nodes, [n.kv_total_blocks for n in view.nodes])
            cached = self._index.match(ids)[decode]
        uncached = request.prompt_tokens - cached * block
        if uncached > p.max_local_prefill_tokens:
            return False
        if self._index is not None:
            self._index.insert(decode, ids, view.now_s)
        return True

    # hooks: each inner strategy sees its own node
    def on_dispatch(self, request: RequestInfo, node_id: int, now_s: float) -> None:
        """In a cluster without roles the router reports the node ``choose`` picked: the
        decode strategy accounts for it (a disaggregated dispatch goes through
        ``choose_pair``, which charges both strategies itself; the router does not call this
        then)."""
        self.decode.on_dispatch(request, node_id, now_s)

    def on_first_token(self, request_id: int, node_id: int, now_s: float) -> None:
        # a disaggregated request's first token comes from its prefill node: the decode
        # strategy sees it on its own node (the prompt no longer waits for it there)
        self.decode.on_first_token(request_id, self._decode_of.pop(request_id, node_id), now_s)
        if request_id in self._prefill_of:
            self.prefill.on_first_token(request_id, node_id, now_s)

    def on_finish(self, outcome: Outcome) -> None:
        self.decode.on_finish(outcome)
        self._decode_of.pop(outcome.request_id, None)
        prefill = self._prefill_of.pop(outcome.request_id, None)
        if prefill is not None:
            self.prefill.on_finish(outcome._replace(node_id=prefill))

    def stats(self) -> dict[str, float]:
        return {**self.counts, **self.prefill.stats(), **self.decode.stats()}


class _DynamoParams(_PairParams):
    prefill: ComponentSpec = Field(default_factory=lambda: _spec("pd_least_queue"),
                                   description="prefill pick: the prefill queue is pulled by "
                                               "the first free prefill worker (least queued)")
    decode: ComponentSpec = Field(default_factory=lambda: _spec("dynamo_kv"),
                                  description="decode pick: Dynamo's KV router")
    max_local_prefill_tokens: int = Field(1000, ge=-1, description="Dynamo's "
                                          "max_local_prefill_length (default 1000)")
    max_prefill_queue: int | None = Field(2, ge=0, description="Dynamo's "
                                          "max_prefill_queue_size (examples: 2)")


@strategies.register("dynamo_disagg")
class DynamoDisagg(PdPair):
    """NVIDIA Dynamo's disaggregated router (conditional disaggregation).

    The KV router picks the decode worker; the decode worker prefills locally unless the
    prompt minus its prefix hit exceeds ``max_local_prefill_length`` (1000) and the prefill
    queue holds fewer than ``max_prefill_queue_size`` (2) requests; a remote prefill goes to the
    shared prefill queue, pulled by the first free prefill worker (here: the least queued
    prefill node). See docs/disaggregation.md.
    """

    Params = _DynamoParams


class _LlmDParams(_PairParams):
    prefill: ComponentSpec = Field(
        default_factory=lambda: _spec("llm_d", prefix_weight=2.0, queue_weight=1.0,
                                      kv_cache_weight=0.0),
        description="prefill profile: prefix-cache-scorer 2 + queue-scorer 1")
    decode: ComponentSpec = Field(
        default_factory=lambda: _spec("llm_d", prefix_weight=0.0, queue_weight=1.0,
                                      kv_cache_weight=1.0),
        description="decode profile: load-aware (queue-scorer 1 + kv-cache-utilization 1)")
    max_local_prefill_tokens: int = Field(
        -1, ge=-1, description="pd-profile-handler threshold less one (threshold 0, the guides' "
                               "value: always disaggregate)")


@strategies.register("llm_d_pd")
class LlmDPd(PdPair):
    """llm-d's P/D scheduling (``pd-profile-handler``): the decode profile picks the decode
    pod, the handler keeps the request there when its uncached prompt is below ``threshold``,
    else the prefill profile (prefix-aware) picks the prefill pod. See docs/disaggregation.md.
    """

    Params = _LlmDParams


class _SglangParams(_PairParams):
    prefill: ComponentSpec = Field(default_factory=lambda: _spec("sglang_cache_aware"),
                                   description="--prefill-policy (router default: cache_aware)")
    decode: ComponentSpec = Field(default_factory=lambda: _spec("power_of_two"),
                                  description="--decode-policy (power_of_two, as SGLang "
                                              "recommends for decode servers)")


@strategies.register("sglang_pd")
class SglangPd(PdPair):
    """SGLang's PD router (sgl-model-gateway ``pd_router``): one policy per pool, every
    request disaggregated (prefill and decode chosen together; the KV moves by bootstrap
    rendezvous). See docs/disaggregation.md."""

    Params = _SglangParams


class _RRParams(_PairParams):
    prefill: ComponentSpec = Field(default_factory=lambda: _spec("round_robin"))
    decode: ComponentSpec = Field(default_factory=lambda: _spec("round_robin"))


@strategies.register("pd_round_robin")
class PdRoundRobin(PdPair):
    """Round robin in each pool, every request disaggregated (a baseline)."""

    Params = _RRParams


@strategies.register("pd_least_loaded")
class PdLeastLoaded(PdPair):
    """Fewest in-flight requests (router counters) in each pool, every request
    disaggregated (a baseline)."""


@strategies.register("pd_least_queue")
class LeastQueue(Strategy):
    """Fewest requests waiting (dispatched, not yet running: router counters less the sampled
    running count), ties random: a pull queue's first free worker, approximately."""

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        tel = view.telemetry
        queued = [view.inflight_requests[i] - tel.running[i] for i in range(view.n_nodes)]
        return argmin_random_tie(queued, view.accepting_ids(), self.draws)
