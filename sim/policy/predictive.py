"""Earliest predicted completion: queue wait plus a service time learned from past requests."""

from __future__ import annotations

from collections import deque

from pydantic import Field

from sim.outcome import CANCELLED, COMPLETED, Outcome
from sim.policy.base import (
    ClusterView,
    RequestInfo,
    Strategy,
    StrategyParams,
    argmin_random_tie,
    strategies,
)


def length_bucket(tokens: int) -> int:
    """Power-of-two length bucket: 0 for 0, 1 for 1, 2 for 2-3, 3 for 4-7, ... (bit length)."""
    return int(tokens).bit_length()


@strategies.register("predictive")
class Predictive(Strategy):
    """Send to the node where the request is predicted to finish first; ties random.

    ``predicted_i = wait_i + service_i``, after the seed document's predictive balancer:

    * **wait**: the work this router has in flight on node ``i``, at the node's speed:
      ``pending_prompt_tokens_i / prefill_tokens_per_s_i + pending_output_tokens_i /
      decode_tokens_per_s_i`` (``NodeInfo`` capacities). A request's prompt stays pending until
      its first token; its expected output (below) until it ends (the strategy's own ledger,
      like ``token_aware``'s).
    * **service**: the mean service time (``finish_s - first_scheduled_s``: admission to last
      token, so excluding the wait above) of past completed requests in the same bucket, a
      power-of-two bucket of the prompt length and one of the output length. A new request's
      output is unknown, so it is estimated as the mean output of completed requests in its
      prompt bucket (all requests when that bucket has fewer than ``min_samples``; the
      ``max_output_tokens`` cap before any), capped at ``max_output_tokens``. Service times
      are stored at the fastest node's speed (observed time ``x speed_j``) and predicted on
      node ``i`` as ``/ speed_i``, with ``speed_i = decode_tokens_per_s_i / max_j
      decode_tokens_per_s_j`` from the profiles, so heterogeneous nodes share one history.
    * **fallback** when the bucket has fewer than ``min_samples`` samples, the token estimate
      ``prompt / prefill_tokens_per_s_i + output * batch_i / decode_tokens_per_s_i``, with
      ``batch_i = min(64, max_num_seqs)`` (the batch at which the profile decode rate is
      measured, so ``batch_i / decode_tokens_per_s_i`` is one decode iteration).

    History: the service times of the last ``history_size`` (10,000) completed requests in a
    ring buffer, with running per-bucket sums updated as samples enter and leave (O(1) per
    completion). The seed document appended without bound and, past 10,000 entries, kept the
    newest 5,000: a window jumping between 5,000 and 10,000 with an O(n) copy each time; the
    ring buffer keeps the window constant. Rejected and withdrawn attempts teach nothing.
    """

    reads_telemetry = False

    class Params(StrategyParams):
        history_size: int = Field(10_000, ge=1, le=10_000_000,
                                  description="completed requests kept for the service model")
        min_samples: int = Field(10, ge=1, description="samples a bucket needs before its mean "
                                                       "replaces the token estimate")

    params: Params

    def __init__(self, params, rng) -> None:  # type: ignore[no-untyped-def]
        super().__init__(params, rng)
        self._speed: list[float] = []
        self._prefill_rate: list[float] = []
        self._decode_rate: list[float] = []
        self._step_s: list[float] = []
        self._pending_prompt: list[float] = []
        self._pending_output: list[float] = []
        #: request id -> [node, prompt tokens still pending, expected output, prompt tokens]
        self._ledger: dict[int, list[float]] = {}
        #: (prompt bucket, output bucket, service time at reference speed, output tokens)
        self._history: deque[tuple[int, int, float, int]] = deque()
        self._service: dict[tuple[int, int], list[float]] = {}  # bucket -> [count, sum_s]
        self._output: dict[int, list[float]] = {}  # prompt bucket -> [count, sum_tokens]
        self._all_output = [0.0, 0.0]

    # -- the model --------------------------------------------------------------------------

    def _setup(self, view: ClusterView) -> None:
        nodes = view.nodes
        fastest = max(info.decode_tokens_per_s for info in nodes)
        self._speed = [info.decode_tokens_per_s / fastest if fastest > 0 else 1.0
                       for info in nodes]
        # nodes without a capacity figure (test doubles): 1 token/s, the same on every node
        self._prefill_rate = [info.prefill_tokens_per_s or 1.0 for info in nodes]
        self._decode_rate = [info.decode_tokens_per_s or 1.0 for info in nodes]
        self._step_s = [min(64, info.max_num_seqs) / info.decode_tokens_per_s
                        if info.decode_tokens_per_s > 0 else 1.0 for info in nodes]
        self._grow(view.n_nodes)

    def _grow(self, n_nodes: int) -> None:
        for column in (self._pending_prompt, self._pending_output):
            column.extend([0.0] * (n_nodes - len(column)))

    def expected_output_tokens(self, request: RequestInfo) -> float:
        """Mean output of completed requests with a prompt of the same bucket, capped."""
        count, total = self._output.get(length_bucket(request.prompt_tokens), (0.0, 0.0))
        if count < self.params.min_samples:
            count, total = self._all_output
        if count < self.params.min_samples:
            return float(request.max_output_tokens)
        return min(total / count, float(request.max_output_tokens))

    def predicted_s(self, request: RequestInfo, view: ClusterView, ids: list[int]) -> list[float]:
        """Predicted completion time (s from now) on every node (0 for nodes not in ``ids``)."""
        if not self._speed:
            self._setup(view)
        output = self.expected_output_tokens(request)
        bucket = (length_bucket(request.prompt_tokens), length_bucket(round(output)))
        count, total = self._service.get(bucket, (0.0, 0.0))
        learned = total / count if count >= self.params.min_samples else None
        prompt = request.prompt_tokens
        out = [0.0] * view.n_nodes
        for i in ids:
            rate, step = self._prefill_rate[i], self._step_s[i]
            wait = self._pending_prompt[i] / rate + self._pending_output[i] / self._decode_rate[i]
            service = (learned / self._speed[i] if learned is not None
                       else prompt / rate + output * step)
            out[i] = wait + service
        return out

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        ids = view.accepting_ids()
        return argmin_random_tie(self.predicted_s(request, view, ids), ids, self.draws)

    # -- the ledger and the learning --------------------------------------------------------

    def on_dispatch(self, request: RequestInfo, node_id: int, now_s: float) -> None:
        """Add the request's prompt and expected output to its node's pending work."""
        self._grow(node_id + 1)
        output = self.expected_output_tokens(request)
        self._ledger[request.request_id] = [node_id, request.prompt_tokens, output,
                                            request.prompt_tokens]
        self._pending_prompt[node_id] += request.prompt_tokens
        self._pending_output[node_id] += output

    def on_first_token(self, request_id: int, node_id: int, now_s: float) -> None:
        """The prompt is prefilled: it is no longer pending work."""
        entry = self._ledger.get(request_id)
        if entry is not None and entry[0] == node_id:
            self._pending_prompt[node_id] -= entry[1]
            entry[1] = 0

    def on_finish(self, outcome: Outcome) -> None:
        """Release the request's pending work; learn from a completed request."""
        entry = self._ledger.get(outcome.request_id)
        if entry is None or (entry[0] != outcome.node_id and outcome.status == CANCELLED):
            return
        del self._ledger[outcome.request_id]
        node = int(entry[0])
        self._pending_prompt[node] -= entry[1]
        self._pending_output[node] -= entry[2]
        if outcome.status == COMPLETED and self._speed:
            self._learn(outcome, int(entry[3]))

    def _learn(self, outcome: Outcome, prompt_tokens: int) -> None:
        service_s = outcome.finish_s - outcome.first_scheduled_s
        if not service_s >= 0:  # NaN: never scheduled
            return
        node = outcome.node_id
        prompt_bucket = length_bucket(prompt_tokens)
        sample = (prompt_bucket, length_bucket(outcome.generated_tokens),
                  service_s * self._speed[node], outcome.generated_tokens)
        self._add(sample, +1)
        self._history.append(sample)
        if len(self._history) > self.params.history_size:
            self._add(self._history.popleft(), -1)

    def _add(self, sample: tuple[int, int, float, int], sign: int) -> None:
        prompt_bucket, output_bucket, service_s, output = sample
        service = self._service.setdefault((prompt_bucket, output_bucket), [0.0, 0.0])
        service[0] += sign
        service[1] += sign * service_s
        out = self._output.setdefault(prompt_bucket, [0.0, 0.0])
        out[0] += sign
        out[1] += sign * output
        self._all_output[0] += sign
        self._all_output[1] += sign * output
