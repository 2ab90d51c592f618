"""Lowest reported KV-cache usage (AIBrix ``least-kv-cache``; llm-d's KV-utilisation signal)."""

from __future__ import annotations

from sim.policy.base import ClusterView, RequestInfo, Strategy, argmin_random_tie, strategies


@strategies.register("least_kv")
class LeastKv(Strategy):
    """Send to the node reporting the smallest fraction of its KV blocks in use.

    AIBrix ``least-kv-cache`` / ``least-gpu-cache`` (``pkg/plugins/gateway/algorithms/
    least_kv_cache.go``). The signal is
    node telemetry (``kv_used_blocks / kv_total_blocks``), so it is ``telemetry_age_s`` old:
    between two refreshes every request sees the same "emptiest" node, the herding that
    Mitzenmacher (2000) describes (§6.5; ``scenarios/stale_telemetry.yaml`` shows it). KV usage
    also trails the queue: a waiting request holds no blocks yet. Ties are random (``rng``).
    """

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        used = view.telemetry.kv_used_blocks
        usage = [used[i] / max(1, node.kv_total_blocks) for i, node in enumerate(view.nodes)]
        return argmin_random_tie(usage, view.accepting_ids(), self.draws)
