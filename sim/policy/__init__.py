"""Routing strategies. Importing this package registers the built-in ones."""

from sim.policy import (  # noqa: F401  (imported for their registrations)
    jsq,
    least_loaded,
    power_of_two,
    round_robin,
    token_aware,
    uniform_random,
)
from sim.policy.base import ClusterView, RequestInfo, Strategy, strategies

__all__ = ["ClusterView", "RequestInfo", "Strategy", "strategies"]
