"""Admission control at the router: decide before routing whether a request is served.

An ``Admission`` component sees the request and the same ``ClusterView`` a strategy sees;
``admit`` returning False rejects the request (recorded as rejected on no node, never lost).
Components register with ``@admissions.register("name")`` and take a pydantic ``Params``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from sim.policy.base import ClusterView, RequestInfo, StrategyParams
from sim.registry import Registry


class Admission:
    """Admits everything; subclasses override ``admit``."""

    Params: ClassVar[type[StrategyParams]] = StrategyParams
    registered_name: ClassVar[str] = ""

    def __init__(self, params: StrategyParams, rng: np.random.Generator) -> None:
        self.params = params
        self.rng = rng

    def admit(self, request: RequestInfo, view: ClusterView) -> bool:
        """Whether to route the request."""
        return True


admissions: Registry[type[Admission]] = Registry("admission")
