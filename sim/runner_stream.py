"""A run in bounded memory: requests streamed in, records streamed out (issue 18).

``simulate_streamed`` runs the same model as ``sim.runner.simulate`` over a
``StreamedRequestTable``: the router pulls chunks of requests from an ``ArrivalSource`` as the
simulated time reaches them, and every ``RELEASE_CHECK_S`` simulated seconds the pages of
requests that are all final are released. A released page is shifted by the API latency
(``ApiLatencyStream``, the same figures as the whole-run pass), written to
``requests.parquet`` as a row group (``RequestsWriter``), and folded into exact streaming
accumulators and latency sketches (``RequestStats``) and the herding figures
(``HerdingStream``). The run log is folded as it goes (``fold_rows``). What stays resident is
the requests in flight, at most a chunk and a page or two of requests, and fixed-size sums:
the memory of a run does not grow with its number of requests.

What differs from a whole run: per-request records are the same bit for bit for the same
requests (tested); the summary's counts, rates, SLO attainment and means are the same up to
float summation order, its latency percentiles come from sketches (within ``alpha``, 0.5 %, of
the exact value of the same rank; the summary's ``sketch`` block says so), and
``nodes.parquet`` (the raw node series) is empty, as with ``fold_rows``.

Faults and autoscaling stream too: their ``elasticity`` block comes from ``AvailabilityStats``
fed page by page with the failures known at each release (exact: a page's requests have all
left, so no later failure can overlap them), and a page is kept while a node still holds one
of its requests (a hung engine keeps requests whose clients gave up until it restarts). Not
supported (refused with a message): disaggregated prefill/decode, whose hand-off keeps
per-request lists.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from pathlib import Path

import numpy as np
import simpy

from sim.build import ResolvedScenario, StrategyChoice
from sim.metrics.availability import AvailabilityStats
from sim.metrics.herding import HerdingStream
from sim.metrics.streaming import RequestStats
from sim.metrics.summary import summarize_streamed, timeline
from sim.model.cluster import Cluster
from sim.model.elasticity import Elasticity
from sim.model.paged import PAGE_BITS
from sim.model.requests_stream import StreamedRequestTable
from sim.model.router import Router
from sim.results import RequestsWriter
from sim.runner import (
    FOLD_CHECK_S,
    Progress,
    RunResult,
    _build,
    _events_scheduled,
    _fold_every,
    _folder,
    _run_data,
    _run_to_end,
    _ticker,
    api_shift,
)
from sim.workload.stream import ArrivalSource, accounting_total

#: how often (simulated seconds) a streamed run releases the pages whose requests are final
RELEASE_CHECK_S = FOLD_CHECK_S
#: run-log rows a streamed run holds before folding them (about 20 MB of records; each fold
#: costs a little over the nodes, so not much fewer)
FOLD_ROWS = 200_000
#: the order of the columns of ``requests.parquet`` (``sim.runner.request_columns``)
COLUMNS = ("request_id", "arrival_s", "node", "status", "prompt_tokens", "output_tokens",
           "max_output_tokens", "generated_tokens", "cached_tokens", "recomputed_tokens",
           "preemptions", "first_scheduled_s", "first_token_s", "finish_s", "client_wait_s",
           "session_id", "prefix_group")


class StreamingError(ValueError):
    """The scenario uses a mechanism a streamed run does not support."""


def check_streamable_run(resolved: ResolvedScenario) -> None:
    """Raise ``StreamingError`` naming the scenario key a streamed run cannot take."""
    if resolved.disagg is not None:
        raise StreamingError("cluster node groups with roles (disaggregated prefill/decode) "
                             "keep per-request hand-off lists; run them whole")


def simulate_streamed(resolved: ResolvedScenario, choice: StrategyChoice, replication: int,
                      source: ArrivalSource, *, requests_path: Path | None = None,
                      fold_rows: int = FOLD_ROWS, page_bits: int = PAGE_BITS,
                      progress: Progress | None = None) -> RunResult:
    """Simulate one strategy over the requests ``source`` gives, in bounded memory.

    ``requests_path``: where to write ``requests.parquet`` as the run goes (nothing is written
    without it). ``page_bits``: ``1 << page_bits`` requests per released page. The result's
    ``requests`` is empty; its summary, timeline and ``cpu_s`` are as ``simulate``'s (see the
    module docstring for what differs).

    Raises:
        StreamingError: the scenario uses disaggregated prefill/decode.
    """
    check_streamable_run(resolved)
    sc = resolved.scenario
    table = StreamedRequestTable(source, page_bits)
    run = _build(resolved, choice, replication, table)
    env, router = run.env, run.router
    folder = _folder(resolved)
    elastic = run.elastic
    sink = RecordSink(resolved, requests_path, elastic)
    horizon = sc.duration_s + sc.drain_timeout_s
    if progress is not None:
        env.process(_ticker(env, router, horizon, progress))
    env.process(_fold_every(env, run.recorder, folder, fold_rows))
    env.process(_release_every(env, table, _live(router, run.cluster, elastic), sink))
    try:
        wall, cpu = _run_to_end(run, table, horizon, progress)
        sink.end_s = env.now
        # every arrival lies before the horizon, so nothing should be left to load; if some
        # is, it stays unfinished, as in a whole run
        while table.pull():
            pass
        for page in table.release_final(everything=True):
            sink.add(page)
    finally:
        sink.close()
    data = _run_data(resolved, run.cluster, {}, run.recorder, env.now, router, folder)
    summary = {**summarize_streamed(data, sink.stats, sink.herd.figures()),
               "input": accounting_total(table.accounting)}
    if elastic is not None and sink.availability is not None:
        summary["elasticity"] = elastic.summary(sc, sink.availability, env.now)
    return RunResult(label=choice.label, strategy=choice.spec.name, replication=replication,
                     seed=run.seed, summary=summary, requests={}, node_states=data.states,
                     timeline=timeline(data, sc.metrics.bucket_s), wall_s=wall,
                     events=_events_scheduled(env), cpu_s=cpu)


def _release_every(env: simpy.Environment, table: StreamedRequestTable,
                   live: Callable[[int, int], bool],
                   sink: RecordSink) -> Generator[simpy.Event, None, None]:
    """Release the final pages every ``RELEASE_CHECK_S`` (reads the table, the router and the
    nodes only; the model's state and order of events are untouched)."""
    while True:
        yield env.timeout(RELEASE_CHECK_S)
        for page in table.release_final(live):
            sink.add(page)


def _live(router: Router, cluster: Cluster, elastic: object) -> Callable[[int, int], bool]:
    """Whether some request of ``[first, end)`` is still held: by a live hedge or retry
    attempt, or, with faults, by a node (a hung engine keeps requests whose clients gave up,
    already recorded, until it restarts)."""
    if elastic is None:
        return router.has_live_attempts
    batchers = [node.batcher for node in cluster.nodes]

    def live(first: int, end: int) -> bool:
        return router.has_live_attempts(first, end) or any(
            b.reqs and min(b.reqs) < end for b in batchers)
    return live


class RecordSink:
    """Where a streamed run's released pages go: API latency, Parquet, summary sums."""

    def __init__(self, resolved: ResolvedScenario, requests_path: Path | None,
                 elastic: Elasticity | None = None):
        sc = resolved.scenario
        specs = resolved.node_specs
        self.elastic = elastic
        #: the availability figures of a run with faults or autoscaling
        self.availability = None if elastic is None else AvailabilityStats(
            sc.slo.model_dump(), (sc.warmup_s, sc.duration_s), sc.metrics.monitor_interval_s,
            sc.duration_s + sc.drain_timeout_s)
        #: the run's end, once it is over (open outages end there)
        self.end_s = math.inf
        self.specs = specs
        self.api = ApiLatencyStream(len(specs))
        self.stats = RequestStats((sc.warmup_s, sc.duration_s), sc.slo.model_dump())
        self.herd = HerdingStream(len(specs))
        self.window_s = (sc.warmup_s, sc.duration_s)
        self.writer = None if requests_path is None else RequestsWriter(requests_path)
        self.rows = 0

    def add(self, page: dict[str, np.ndarray]) -> None:
        """Fold one released page (columns of ``StreamedRequestTable``)."""
        node, arrival = page["node"], page["arrival_s"]
        shift = api_shift(node, page["prompt_tokens"],
                          self.api.active(node, arrival, page["finish_s"]), self.specs)
        if shift.any():
            for key in ("first_token_s", "finish_s"):
                page[key] = page[key] + shift
        cols = {name: page[name] for name in COLUMNS}
        self.stats.add(cols)
        if self.availability is not None and self.elastic is not None:
            self.availability.add(cols, self.elastic.failure_records(), self.end_s)
        a, b = self.window_s
        measured = (arrival >= a) & (arrival < b)
        self.herd.add(arrival[measured], node[measured])
        if self.writer is not None:
            self.writer.write(cols)
        self.rows += node.size

    def close(self) -> None:
        """Finish ``requests.parquet``."""
        if self.writer is not None:
            self.writer.close()


class ApiLatencyStream:
    """``sim.runner.active_per_node`` over pages given in id (arrival) order.

    For each node it carries the count of its earlier requests, and the finish times of
    those that had not finished by its latest arrival so far (all others are counted), so
    each request's count equals the whole-run one: requests arriving later cannot have
    finished before it arrived. (Exact for distinct arrival times; a tie between the last
    arrival of one page and the first of the next on the same node may count one request
    differently.)
    """

    def __init__(self, n_nodes: int):
        self.n_nodes = n_nodes
        self._seen = np.zeros(n_nodes, dtype=np.int64)
        self._done = np.zeros(n_nodes, dtype=np.int64)
        self._open: list[np.ndarray] = [np.zeros(0)] * n_nodes

    def active(self, node: np.ndarray, arrival_s: np.ndarray,
               finish_s: np.ndarray) -> np.ndarray:
        """Requests each request's node held when it arrived (0 for requests on none)."""
        out = np.zeros(node.size, dtype=np.int64)
        order = np.argsort(node, kind="stable")
        bounds = np.searchsorted(node[order], np.arange(self.n_nodes + 1))
        for i in np.flatnonzero(np.diff(bounds)):
            rows = order[bounds[i]:bounds[i + 1]]
            a = arrival_s[rows]
            ends = np.where(np.isnan(finish_s[rows]), np.inf, finish_s[rows])
            # this page's requests, then the earlier pages' (all arrived before; those
            # finished by each arrival left)
            arrived = np.searchsorted(a, a, side="left")
            finished = np.searchsorted(np.sort(ends), a, side="right")
            earlier = self._seen[i] - self._done[i] - np.searchsorted(self._open[i], a,
                                                                        side="right")
            out[rows] = np.maximum(arrived - finished + earlier, 0)
            carried = np.sort(np.concatenate([self._open[i], ends]))
            gone = int(np.searchsorted(carried, a[-1], side="right"))
            self._done[i] += gone
            self._open[i] = carried[gone:]
            self._seen[i] += rows.size
        return out
