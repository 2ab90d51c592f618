"""Filters and pickers for composed strategies (``sim.policy.compose``).

A *filter* narrows the candidate nodes of one decision before scoring (GIE's ``Filter``): it
returns a subset of the candidates, in order. When a filter would leave no candidate, the
composed strategy keeps the candidates it had before that filter, so a request is never lost
to routing (the Gateway API extension fails the request instead).

A *picker* turns the candidates' weighted totals into one node (GIE's ``Picker``). It may draw
random numbers, only from the ``UniformDraws`` the strategy hands it (the strategy's seeded
stream). Register new ones with ``@filters.register`` / ``@pickers.register``; third-party
packages use the entry-point groups ``simlb.filter`` and ``simlb.picker``.
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar, Literal

from pydantic import Field

from sim.policy.base import ClusterView, RequestInfo, argmin_random_tie
from sim.registry import Registry
from sim.rng import UniformDraws
from sim.spec import NoParams, StrictModel


class Filter(abc.ABC):
    """Keeps the candidate nodes that pass a test; declares the signals it reads."""

    Params: ClassVar[type[StrictModel]] = NoParams
    signals: ClassVar[frozenset[str]] = frozenset()
    registered_name: ClassVar[str] = ""

    def __init__(self, params: StrictModel) -> None:
        self.params = params

    @abc.abstractmethod
    def keep(self, request: RequestInfo, view: ClusterView, candidates: list[int]) -> list[int]:
        """The candidates that pass, in the order given (possibly none)."""


class Picker(abc.ABC):
    """Chooses one candidate from their totals (higher is better)."""

    Params: ClassVar[type[StrictModel]] = NoParams
    registered_name: ClassVar[str] = ""

    def __init__(self, params: StrictModel, draws: UniformDraws) -> None:
        self.params = params
        self.draws = draws

    @abc.abstractmethod
    def pick(self, totals: list[float], candidates: list[int]) -> int:
        """One of ``candidates`` (never empty); ``totals[j]`` belongs to ``candidates[j]``."""


filters: Registry[type[Filter]] = Registry("filter")
pickers: Registry[type[Picker]] = Registry("picker")


@filters.register("queue_below")
class QueueBelow(Filter):
    """Nodes whose reported waiting queue is at most ``max_queued`` (GIE ``low-queue-filter``)."""

    class Params(StrictModel):
        max_queued: int = Field(128, ge=0, description="most waiting requests a node may report")

    params: Params
    signals = frozenset({"telemetry"})

    def keep(self, request: RequestInfo, view: ClusterView, candidates: list[int]) -> list[int]:
        queued, limit = view.telemetry.queued, self.params.max_queued
        return [i for i in candidates if queued[i] <= limit]


@filters.register("kv_below")
class KvBelow(Filter):
    """Nodes whose reported KV usage is at most ``max_utilization``."""

    class Params(StrictModel):
        max_utilization: float = Field(0.8, gt=0, le=1, description="highest reported share "
                                                                    "of KV blocks in use")

    params: Params
    signals = frozenset({"telemetry", "nodes"})

    def keep(self, request: RequestInfo, view: ClusterView, candidates: list[int]) -> list[int]:
        limit = self.params.max_utilization
        return [i for i in candidates if view.kv_utilization(i) <= limit]


@filters.register("inflight_below")
class InflightBelow(Filter):
    """Nodes with at most ``max_requests`` requests in flight from this router (counters)."""

    class Params(StrictModel):
        max_requests: int = Field(64, ge=0, description="most requests in flight per node")

    params: Params
    signals = frozenset({"counters"})

    def keep(self, request: RequestInfo, view: ClusterView, candidates: list[int]) -> list[int]:
        inflight, limit = view.inflight_requests, self.params.max_requests
        return [i for i in candidates if inflight[i] <= limit]


@pickers.register("max_score")
class MaxScore(Picker):
    """The highest total; ties broken at random (default) or by the lowest node id (GIE
    ``max-score-picker``)."""

    class Params(StrictModel):
        tie_break: Literal["random", "lowest_id"] = Field(
            "random", description="random: uniform among the tied nodes; lowest_id: the first")

    params: Params

    def pick(self, totals: list[float], candidates: list[int]) -> int:
        if self.params.tie_break == "lowest_id":
            return candidates[totals.index(max(totals))]
        negated = [-t for t in totals]  # the same tie rule and draws as argmin_random_tie
        return candidates[argmin_random_tie(negated, list(range(len(totals))), self.draws)]


@pickers.register("random")
class RandomPick(Picker):
    """Uniform among the candidates, ignoring the totals (GIE ``random-picker``)."""

    def pick(self, totals: list[float], candidates: list[int]) -> int:
        return candidates[self.draws.index(len(candidates))]


@pickers.register("softmax")
class Softmax(Picker):
    """Random, with probability proportional to ``exp((total - best) / temperature)``: a low
    temperature approaches ``max_score``, a high one ``random`` (Dynamo's KV router picks by a
    softmax over its costs the same way)."""

    class Params(StrictModel):
        temperature: float = Field(0.1, gt=0, description="spread of the choice, in units of "
                                                          "the total")

    params: Params

    def pick(self, totals: list[float], candidates: list[int]) -> int:
        best, t = max(totals), self.params.temperature
        weights = [math.exp((x - best) / t) for x in totals]
        return candidates[self.draws.weighted_index(weights)]
