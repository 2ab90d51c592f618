"""The strategy interface: what a routing strategy may see, and the one method it implements.

A strategy is a decision over an immutable snapshot: ``choose(request, view) -> node id``. It
never touches nodes and never records metrics. What it may read:

* the request (``RequestInfo``): prompt tokens, ``max_output_tokens``, session, prefix group,
  arrival time; exact. Never the true output length.
* router-local counters (``ClusterView.inflight_requests``, ``inflight_tokens``: prompt + max
  output of the requests this router dispatched that have not ended): always fresh.
* node telemetry (``ClusterView.telemetry``: queued, running, KV blocks in use): refreshed every
  ``telemetry_interval_s``, with its age in ``telemetry_age_s``.
* static node facts (``ClusterView.nodes``: group, profile, limits, KV size): exact.
* not available: future arrivals, node internals.

Randomness comes only from the injected ``numpy.random.Generator`` (``self.rng``; for draws made
once per decision, ``self.draws`` hands out its numbers a block at a time, since a numpy call
per request costs more than the decision). Parameters are a pydantic model (``Params``)
validated when the scenario loads. Register a strategy with
``@strategies.register("name")`` (or, from another package, the entry-point group
``simlb.strategies``); the contract test in ``tests/`` then covers it, and
``sim.testing.check_strategy`` runs the same contract on any class.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from operator import eq
from typing import ClassVar, NamedTuple

import numpy as np

from sim.errors import SimulationError
from sim.outcome import Outcome
from sim.registry import Registry
from sim.rng import UniformDraws
from sim.spec import ComponentSpec, StrictModel, build_params


class RequestInfo(NamedTuple):
    """A request as the router sees it at arrival."""

    request_id: int
    arrival_s: float
    prompt_tokens: int
    max_output_tokens: int
    session_id: int  # -1: none
    prefix_group: int  # -1: none
    model: str = ""  # "": any node
    sheddable: bool = False  # may be dropped by admission control


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """Static facts about a node, known to the router from the deployment."""

    node_id: int
    group: str
    profile: str
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_total_blocks: int
    block_size_tokens: int
    model: str = ""
    #: decode tokens per second at batch min(64, max_num_seqs) with 1024-token contexts,
    #: from the node's cost model (a capacity figure for weighting)
    decode_tokens_per_s: float = 0.0
    #: prefill tokens per second for one 2048-token prompt, from the cost model
    prefill_tokens_per_s: float = 0.0
    #: ``prefill``, ``decode`` or ``mixed`` (disaggregated serving; docs/disaggregation.md)
    role: str = "mixed"


@dataclass(frozen=True, slots=True)
class Telemetry:
    """Signals the nodes reported at ``taken_at_s`` (one entry per node)."""

    taken_at_s: float
    queued: tuple[int, ...]
    running: tuple[int, ...]
    kv_used_blocks: tuple[int, ...]
    #: prompt (and recompute) tokens of the waiting requests
    queued_tokens: tuple[int, ...] = ()
    #: exponentially weighted mean TTFT and end-to-end latency of recent completions (NaN
    #: before the first); weight 0.1 per completion
    recent_ttft_s: tuple[float, ...] = ()
    recent_e2e_s: tuple[float, ...] = ()


class ClusterView(NamedTuple):
    """Immutable snapshot handed to ``Strategy.choose``; per-node tuples indexed by node id.

    (A named tuple rather than a frozen dataclass: one is built per routing decision, and a
    tuple is several times cheaper to create.)
    """

    now_s: float
    nodes: tuple[NodeInfo, ...]
    accepting: tuple[bool, ...]
    inflight_requests: tuple[int, ...]
    inflight_tokens: tuple[int, ...]
    telemetry: Telemetry
    #: ``prompt_block_ids(request_id, block_size[, max_blocks])``: ids of the request's
    #: shareable full prompt blocks (chained: equal ids mean equal prefixes), the first
    #: ``max_blocks`` at most
    prompt_block_ids: Callable[..., list[int]]
    #: router-local tokens (prompt + max output) dispatched to each node since the telemetry
    #: sample was taken (what SGLang's ``least_load`` adds to the polled queue)
    dispatched_tokens_since_sample: tuple[int, ...] = ()
    #: ``cached_prefix_blocks(node_id, request_id)``: prompt blocks of the request in the
    #: node's prefix cache as the node's KV events told the router (``router.kv_events``);
    #: None when the scenario does not publish KV events
    cached_prefix_blocks: Callable[[int, int], int] | None = None

    @property
    def n_nodes(self) -> int:
        """Number of nodes in the cluster."""
        return len(self.nodes)

    @property
    def telemetry_age_s(self) -> float:
        """How old the node-reported signals are."""
        return self.now_s - self.telemetry.taken_at_s

    def accepting_ids(self) -> list[int]:
        """Ids of the nodes that take new requests, ascending."""
        accepting = self.accepting
        if all(accepting):  # the usual case, at C speed (O(nodes) per decision matters at scale)
            return list(range(len(accepting)))
        return [i for i, ok in enumerate(accepting) if ok]

    def kv_utilization(self, node_id: int) -> float:
        """Reported fraction of the node's KV blocks in use, in [0, 1]."""
        return self.telemetry.kv_used_blocks[node_id] / self.nodes[node_id].kv_total_blocks

    def queue_length(self, node_id: int) -> int:
        """Reported requests waiting or running on the node."""
        return self.telemetry.queued[node_id] + self.telemetry.running[node_id]


class _Unsampled:
    """``ClusterView.telemetry`` for a strategy that declares ``reads_telemetry = False``: the
    router took no sample, and reading one is an error, never a stale value."""

    __slots__ = ()

    def __getattr__(self, name: str) -> object:
        raise SimulationError(f"view.telemetry.{name} was read by a strategy whose class sets "
                              f"reads_telemetry = False; remove that line (the router then "
                              f"samples the nodes' telemetry)")


#: the telemetry of a view for which no sample was taken (``Strategy.reads_telemetry``)
UNSAMPLED = _Unsampled()


class StrategyParams(StrictModel):
    """Per-strategy parameters; unknown keys are an error."""


class Strategy(abc.ABC):
    """Chooses a node for each arriving request."""

    Params: ClassVar[type[StrategyParams]] = StrategyParams
    registered_name: ClassVar[str] = ""
    #: False for a strategy that never reads ``view.telemetry`` (nor ``queue_length``,
    #: ``kv_utilization``, ``telemetry_age_s``): the router then skips the nodes' telemetry
    #: scrape, which costs O(nodes) per sample (a quarter of a round-robin run's time at 512
    #: nodes). The decisions are the same; reading the telemetry anyway raises.
    reads_telemetry: ClassVar[bool] = True

    def __init__(self, params: StrategyParams, rng: np.random.Generator) -> None:
        self.params = params
        self.rng = rng
        #: uniform numbers from ``rng`` in blocks, for draws made once per decision
        self.draws = UniformDraws(rng)

    @abc.abstractmethod
    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        """Return the id of an accepting node of ``view``."""

    def on_dispatch(self, request: RequestInfo, node_id: int, now_s: float) -> None:  # noqa: B027
        """Called after the router commits ``request`` to ``node_id``."""

    def on_first_token(self, request_id: int, node_id: int, now_s: float) -> None:  # noqa: B027
        """Called when a request's first token comes (only for strategies that define it)."""

    def on_finish(self, outcome: Outcome) -> None:  # noqa: B027
        """Called when a request leaves its node: completed, rejected or withdrawn
        (``outcome.status``), with its timings and the tokens it generated."""

    def on_node_down(self, node_id: int) -> None:  # noqa: B027
        """Called when a node leaves the routable set (the router noticed its failure, or it
        was drained or scaled in): forget per-node cache state, as SGLang's router removes a
        worker's tenant from its tree. The node may come back later, cold."""

    @classmethod  # noqa: B027  (an optional hook)
    def check_cluster(cls, params: StrategyParams, nodes: tuple[NodeInfo, ...]) -> None:
        """Check the parameters against the cluster when the scenario loads (e.g. one weight
        per node); raise ``ValueError`` saying what was expected. Default: nothing to check."""

    # -- optional capabilities (the router uses them only if a strategy overrides them) ---

    #: period of ``rebalance`` calls in seconds; None: never called
    rebalance_interval_s: float | None = None

    def hedge_after_s(self, request: RequestInfo, view: ClusterView) -> float | None:
        """Delay after dispatch at which, if the request has not finished, the router sends a
        copy to ``choose_other``; the first copy to finish wins and the others are withdrawn.
        None: no hedge."""
        return None

    def retry_after_s(self, request: RequestInfo, view: ClusterView) -> float | None:
        """Delay after dispatch at which, if the request has not finished, the router
        withdraws it and dispatches it again to ``choose_other``. None: no retry."""
        return None

    def choose_other(self, request: RequestInfo, view: ClusterView,
                     exclude: frozenset[int]) -> int | None:
        """A node for a hedge copy or a retry, not in ``exclude`` (None: none suitable).

        Default: ``choose`` on the view with the excluded nodes not accepting.
        """
        accepting = tuple(ok and i not in exclude for i, ok in enumerate(view.accepting))
        if not any(accepting):
            return None
        return self.choose(request, view._replace(accepting=accepting))

    def rebalance(self, view: ClusterView) -> list[tuple[int, int, int]]:
        """Moves ``(from_node, to_node, n)``: the router moves up to ``n`` queued requests
        that never started from one node to the other (newest first)."""
        return []

    def stats(self) -> dict[str, float]:
        """Counters the strategy wants reported (e.g. migrations); they appear under
        ``strategy`` in ``summary.json``."""
        return {}


def build_inner(spec: ComponentSpec, rng: np.random.Generator, path: str = "inner") -> Strategy:
    """Instantiate a strategy from a ``{name, params}`` spec (for strategies that wrap others).

    Raises:
        ScenarioError: unknown name or bad parameters, naming ``path``.
    """
    cls, params = build_params(strategies, spec, path)
    return cls(params, rng)  # type: ignore[arg-type]


def check_inner(spec: ComponentSpec | dict, path: str = "inner") -> ComponentSpec:
    """Validate a nested strategy spec while the outer parameters load (use it in a pydantic
    ``field_validator``, so that a typo in an inner strategy fails before the run)."""
    if isinstance(spec, dict):
        spec = ComponentSpec.model_validate(spec)
    build_params(strategies, spec, path)
    return spec


#: the strategy registry; packages outside simlb add strategies through the entry-point group
#: ``simlb.strategies`` (``simlb.strategy``, the registry's kind, is read too)
strategies: Registry[type[Strategy]] = Registry(
    "strategy", entry_point_groups=("simlb.strategies", "simlb.strategy"))


_ALL_IDS: dict[int, list[int]] = {}


def _all_ids(n: int) -> list[int]:
    """``[0, 1, ..., n - 1]`` (kept per ``n``; never handed out, only compared with)."""
    ids = _ALL_IDS.get(n)
    if ids is None:
        ids = _ALL_IDS[n] = list(range(n))
    return ids


def argmin_random_tie(values: Sequence[float], candidates: list[int],
                      draws: UniformDraws) -> int:
    """The candidate with the smallest value; ties broken uniformly with ``draws``."""
    if len(candidates) == len(values) and candidates == _all_ids(len(values)) \
            and isinstance(values, (list, tuple)):
        # every node a candidate, in id order: the same choice with min, count, index and
        # compress at C speed (NaN, which count and index match by identity, left to the
        # general path)
        best = min(values)
        if best == best:
            count = values.count(best)
            if count == 1:
                return values.index(best)
            ties = list(compress(range(len(values)), map(eq, values, repeat(best))))
            return ties[draws.index(count)]
    best = min(values[i] for i in candidates)
    ties = [i for i in candidates if values[i] == best]
    if len(ties) == 1:
        return ties[0]
    return ties[draws.index(len(ties))]
