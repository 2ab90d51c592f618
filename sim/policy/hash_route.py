"""Stateless hashing: the same key always goes to the same node (while the node set is fixed)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sim.policy.base import ClusterView, RequestInfo, Strategy, StrategyParams, strategies

_MASK64 = (1 << 64) - 1
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15


def splitmix64(x: int) -> int:
    """The SplitMix64 output for state ``x`` (Steele, Lea and Flood 2014; Vigna's reference C).

    ``z = x + 0x9E3779B97F4A7C15``, then two xor-shift-multiply rounds and a final xor-shift,
    all modulo 2**64. A fixed, unsalted function of ``x``: the same id hashes to the same value
    in every process and on every platform (unlike Python's ``hash()`` of ``str``/``bytes``,
    which ``PYTHONHASHSEED`` salts, and of ``int``, which is the identity). ``splitmix64(0)`` is
    ``0xE220A8397B1DCDAF``, the first output of the reference generator seeded with 0.
    """
    z = (x + _GOLDEN_GAMMA) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


@strategies.register("hash")
class HashRoute(Strategy):
    """Send each request to ``accepting[splitmix64(key) mod n_accepting]``.

    The seed document's stateless hash routing, with a stable hash: SplitMix64 of the key's
    integer value (``splitmix64``), never Python's salted ``hash()``, so a run is reproducible
    across processes. The key is the request id (default: a deterministic, load-blind spread
    like ``random``), the session id (``key: session``: sticky sessions without a table) or the
    prefix group (``key: prefix_group``: every request of a shared prefix on one node); a
    request without a session or group (-1) falls back to its request id. It is plain modulo
    hashing, not a consistent-hash ring: when the set of accepting nodes changes, most keys
    move. It ignores load entirely, so a hot key overloads its node.
    """

    reads_telemetry = False

    class Params(StrategyParams):
        key: Literal["request", "session", "prefix_group"] = Field(
            "request", description="what to hash: the request id, its session id or its prefix "
                                   "group (-1 falls back to the request id)")

    params: Params

    def choose(self, request: RequestInfo, view: ClusterView) -> int:
        key = self.params.key
        value = request.request_id
        if key == "session" and request.session_id >= 0:
            value = request.session_id
        elif key == "prefix_group" and request.prefix_group >= 0:
            value = request.prefix_group
        ids = view.accepting_ids()
        return ids[splitmix64(value) % len(ids)]
