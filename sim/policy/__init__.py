"""Routing strategies and admission components.

Importing this package imports every module in it, so each built-in strategy registers itself
with its decorator; a new strategy is one new module here and needs no change elsewhere.
"""

import importlib
import pkgutil

from sim.policy.admission import Admission, admissions
from sim.policy.base import ClusterView, RequestInfo, Strategy, strategies

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Admission", "ClusterView", "RequestInfo", "Strategy", "admissions", "strategies"]
