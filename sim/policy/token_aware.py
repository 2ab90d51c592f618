"""Fewest outstanding estimated tokens, counted by the router."""

from __future__ import annotations

from sim.policy.base import ClusterView, RequestInfo, Strategy, argmin_random_tie, strategies


@strategies.register("token_aware")
class TokenAware(Strategy):
    """Send to the node with the fewest outstanding estimated tokens.

    The router charges each request ``prompt_tokens + max_output_tokens`` to its node at
    dispatch and removes exactly that charge when the request ends (the estimate is stored per
    request; the router cannot know the true output length in advance). Ties are random.
    """

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        return argmin_random_tie(view.inflight_tokens, view.accepting_ids(), self.rng)
