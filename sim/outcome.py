"""Request status codes and the outcome record a node reports for each attempt.

Shared by the model (which produces outcomes), the router and strategies (which receive them)
and the measurement pass, without any of them importing the others.
"""

from __future__ import annotations

from typing import NamedTuple

#: Request status codes in ``RequestTable.status``. CANCELLED only describes an attempt (a
#: hedge copy or a retried attempt that was withdrawn); a request's final status is never it.
UNFINISHED, COMPLETED, REJECTED, FAILED, CANCELLED = 0, 1, 2, 3, 4
STATUS_NAMES = {UNFINISHED: "unfinished", COMPLETED: "completed", REJECTED: "rejected",
                FAILED: "failed", CANCELLED: "cancelled"}


class Outcome(NamedTuple):
    """What one attempt of a request did on one node, reported when it leaves the node
    (and, for attempts still in flight when a run ends, taken as a snapshot)."""

    request_id: int
    node_id: int
    status: int
    first_scheduled_s: float
    first_token_s: float
    finish_s: float
    generated_tokens: int
    cached_tokens: int
    recomputed_tokens: int
    preemptions: int
    #: prefill and decode tokens this attempt computed (the work it cost)
    computed_tokens: int
