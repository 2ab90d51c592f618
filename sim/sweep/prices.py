"""Hourly GPU prices (``--price h100=2.5``) and what a resolved cluster costs per hour.

A node's GPU type is the first part of its profile name (``h100/llama-3.1-8b-aic`` -> ``h100``;
a cost model without a profile has the group's name) and its GPU count the profile's
tensor-parallel degree. A price may name a GPU type or a node group; a group's own name wins.
A node group may also carry ``usd_per_gpu_hour`` in the scenario (``--price`` overrides it).
Assumes a node's price is its GPU count times the GPU's hourly price (no host or network cost).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sim.build import ResolvedScenario
from sim.sweep import SweepError


def parse_prices(specs: Sequence[str]) -> dict[str, float]:
    """``NAME=USD_PER_GPU_HOUR`` options as a dict.

    Raises:
        SweepError: no ``=``, an empty name, a price that is not a finite number >= 0.
    """
    prices: dict[str, float] = {}
    for spec in specs:
        name, eq, text = spec.partition("=")
        name = name.strip().lower()
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not eq or not name or not math.isfinite(value) or value < 0:
            raise SweepError(f"expected GPU=USD_PER_GPU_HOUR (e.g. h100=2.5) with a price "
                             f">= 0, got {spec!r}", field="--price")
        prices[name] = value
    return prices


def gpu_of(spec: Any) -> tuple[str, int]:
    """(GPU type, GPUs per node) of a ``NodeSpec``."""
    profile = getattr(spec.cost, "profile", None)
    if profile is None:
        return spec.group.lower(), 1
    gpu = str(profile.name).split("/")[0].lower()
    tp = int(getattr(getattr(profile, "hardware", None), "tensor_parallel", 1) or 1)
    return gpu, tp


def gpus(resolved: ResolvedScenario) -> dict[str, int]:
    """GPUs per type over the whole cluster."""
    out: dict[str, int] = {}
    for spec in resolved.node_specs:
        gpu, n = gpu_of(spec)
        out[gpu] = out.get(gpu, 0) + n
    return out


def with_scenario_prices(resolved: ResolvedScenario,
                         prices: dict[str, float]) -> dict[str, float]:
    """``prices`` plus each node group's own ``usd_per_gpu_hour`` (by group name); a
    ``--price`` for the group wins."""
    own = {g.name.lower(): float(g.usd_per_gpu_hour)
           for g in resolved.scenario.cluster.node_groups if g.usd_per_gpu_hour is not None}
    return own | prices


def hourly_cost(resolved: ResolvedScenario, prices: dict[str, float]) -> float:
    """USD per hour of the cluster; NaN without prices (``--price`` or the scenario's).

    Raises:
        SweepError: prices are given but a node has none (naming its group and GPU type).
    """
    prices = with_scenario_prices(resolved, prices)
    if not prices:
        return math.nan
    total = 0.0
    for spec in resolved.node_specs:
        gpu, n = gpu_of(spec)
        price = prices.get(spec.group.lower(), prices.get(gpu))
        if price is None:
            raise SweepError(f"no price for node group {spec.group!r} (GPU type {gpu!r}); "
                             f"expected --price {gpu}=USD_PER_GPU_HOUR", field="--price")
        total += n * price
    return total
