"""Fewest outstanding estimated tokens, from the strategy's own per-request ledger."""

from __future__ import annotations

from pydantic import Field

from sim.outcome import CANCELLED, Outcome
from sim.policy.base import (
    ClusterView,
    RequestInfo,
    Strategy,
    StrategyParams,
    argmin_random_tie,
    strategies,
)


@strategies.register("token_aware")
class TokenAware(Strategy):
    """Send to the node with the fewest outstanding estimated tokens; ties random.

    Ledger (the seed document's token-aware balancer, fixed): at dispatch the request is
    charged ``prompt_tokens + max_output_tokens`` (the router cannot know the true output
    length) to its node and the charge is stored per request. With
    ``release_prompt_at_first_token`` (default on) the charge drops to ``max_output_tokens``
    when the request's first token comes: its prefill is done, so what remains is decode work
    (the estimate is corrected as soon as the router learns something). When the request
    leaves (completed, rejected or withdrawn: every ``on_finish``) exactly its remaining stored
    charge is removed, so a node's total never drifts. The seed document instead subtracted a
    freshly computed estimate it had never stored, so its totals drifted.

    Only the attempt the router committed with ``on_dispatch`` is charged; a hedge copy or a
    retry that a wrapping strategy sends is not, and the charge is removed at the first outcome
    from the charged node or at the request's first non-cancelled outcome, whichever comes
    first. A request moved by rebalancing stays charged to its first node until it ends.
    """

    reads_telemetry = False

    class Params(StrategyParams):
        release_prompt_at_first_token: bool = Field(
            True, description="at the first token, reduce a request's charge from prompt + max "
                              "output tokens to max output tokens (its prefill is done)")

    params: Params

    def __init__(self, params, rng) -> None:  # type: ignore[no-untyped-def]
        super().__init__(params, rng)
        self.outstanding_tokens: list[int] = []
        #: request id -> [node, remaining charge in tokens, prompt tokens still charged]
        self._ledger: dict[int, list[int]] = {}

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        self._grow(view.n_nodes)
        return argmin_random_tie(self.outstanding_tokens, view.accepting_ids(), self.draws)

    def on_dispatch(self, request: RequestInfo, node_id: int, now_s: float) -> None:
        """Charge the request's estimated tokens to its node."""
        self._grow(node_id + 1)
        charge = request.prompt_tokens + request.max_output_tokens
        self._ledger[request.request_id] = [node_id, charge, request.prompt_tokens]
        self.outstanding_tokens[node_id] += charge

    def on_first_token(self, request_id: int, node_id: int, now_s: float) -> None:
        """Release the prompt part of the charge: the prefill is done."""
        entry = self._ledger.get(request_id)
        if not self.params.release_prompt_at_first_token or entry is None or entry[0] != node_id:
            return
        node, _, prompt = entry
        entry[1] -= prompt
        entry[2] = 0
        self.outstanding_tokens[node] -= prompt

    def on_finish(self, outcome: Outcome) -> None:
        """Remove exactly what is still charged for the request."""
        entry = self._ledger.get(outcome.request_id)
        if entry is None or (entry[0] != outcome.node_id and outcome.status == CANCELLED):
            return
        del self._ledger[outcome.request_id]
        self.outstanding_tokens[entry[0]] -= entry[1]

    def _grow(self, n_nodes: int) -> None:
        if len(self.outstanding_tokens) < n_nodes:
            self.outstanding_tokens.extend([0] * (n_nodes - len(self.outstanding_tokens)))
