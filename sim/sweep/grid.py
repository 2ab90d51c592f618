"""Grid axes (``--grid KEY=V1,V2,...``), their cartesian product, and resolved points.

An axis is a dotted scenario key (the syntax of ``--set``) and a list of values, each parsed as
a YAML scalar or flow collection exactly as ``--set`` parses it (``4``, ``0.5``, ``true``,
``[1, 2]``, ``{name: poisson}``). Values are split at commas outside brackets and braces, so
``--grid workload.arrivals={name: poisson, params: {rate_rps: 2}},{name: gamma, ...}`` works.
A numeric range may be written ``start:stop:step`` (inclusive of ``stop`` within rounding).
Every point is validated and resolved before anything runs: a bad key or value fails the whole
sweep at once, naming the point.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import sim.limits
from sim.build import ResolvedScenario, resolve
from sim.errors import InputError
from sim.scenario import apply_override, parse_scenario, read_raw
from sim.sweep import SweepError

#: the most points one sweep may have (before strategies and replications); the parent holds
#: every point's resolved scenario, about 0.2-0.3 MB each with a profile cost model
MAX_POINTS = 5_000


@dataclass(frozen=True)
class Axis:
    """One swept key and its values, in the order given."""

    key: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Point:
    """One grid point: its index, axis values, and the scenario resolved with them."""

    index: int
    values: dict[str, Any]
    resolved: ResolvedScenario


def _split_top_level(text: str) -> list[str]:
    """Split at commas that are not inside ``[]``, ``{}`` or quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _parse_scalar(text: str, key: str) -> Any:
    if not text:
        raise SweepError("empty value in the list; expected V1,V2,...", field=f"--grid {key}")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _range(text: str, key: str) -> list[float | int] | None:
    """``start:stop:step`` as a list of numbers, or None if ``text`` is not a range."""
    parts = text.split(":")
    if len(parts) != 3:
        return None
    try:
        nums = [yaml.safe_load(p) for p in parts]
    except yaml.YAMLError:
        return None
    if not all(isinstance(n, int | float) and not isinstance(n, bool) for n in nums):
        return None
    start, stop, step = nums
    if not all(math.isfinite(float(n)) for n in nums) or step <= 0 or stop < start:
        raise SweepError(f"expected start:stop:step with step > 0 and stop >= start, got "
                         f"{text!r}", field=f"--grid {key}")
    count = math.floor((stop - start) / step + 1e-9) + 1
    if count > MAX_POINTS:
        raise SweepError(f"range {text!r} has {count} values; expected at most {MAX_POINTS}",
                         field=f"--grid {key}")
    if all(isinstance(n, int) for n in nums):
        return [start + i * step for i in range(count)]
    return [round(start + i * step, 12) for i in range(count)]


def parse_axis(spec: str) -> Axis:
    """``KEY=V1,V2,...`` (or ``KEY=start:stop:step``) as an ``Axis``.

    Raises:
        SweepError: no ``=``, an empty key or value, a bad range.
    """
    key, eq, text = spec.partition("=")
    key = key.strip()
    if not eq or not key or not all(key.split(".")):
        raise SweepError(f"expected KEY=V1,V2,... with a dotted scenario key, got {spec!r}",
                         field="--grid")
    ranged = _range(text.strip(), key)
    values = ranged if ranged is not None else [
        _parse_scalar(v, key) for v in _split_top_level(text)]
    if len(set(map(repr, values))) != len(values):
        raise SweepError(f"a value is given twice in {text!r}; expected distinct values",
                         field=f"--grid {key}")
    return Axis(key, tuple(values))


def parse_axes(specs: Sequence[str]) -> list[Axis]:
    """Parse every ``--grid`` option; a key given twice is refused."""
    axes = [parse_axis(s) for s in specs]
    keys = [a.key for a in axes]
    for key in keys:
        if keys.count(key) > 1:
            raise SweepError("key given twice; expected each swept key once", field=f"--grid {key}")
    total = math.prod(len(a.values) for a in axes) if axes else 1
    if total > MAX_POINTS:
        raise SweepError(f"the grid has {total} points; expected at most {MAX_POINTS}",
                         field="--grid")
    return axes


def expand(axes: Sequence[Axis]) -> list[dict[str, Any]]:
    """The cartesian product, last axis fastest; one empty point without axes."""
    return [dict(zip([a.key for a in axes], combo, strict=True))
            for combo in itertools.product(*(a.values for a in axes))]


def resolve_point(path: Path, base: dict[str, Any], overrides: Sequence[str],
                  values: dict[str, Any], *, strategies: Sequence[str] = (),
                  limits: bool = True) -> ResolvedScenario:
    """Apply ``overrides`` then the point's ``values`` to a copy of the raw tree, validate
    and resolve it (what ``sim.app.load`` does, from an already-read tree).

    Raises:
        InputError: naming the scenario file, the field and what was expected.
    """
    raw = copy.deepcopy(base)
    for assignment in [*overrides, *(_set(k, v) for k, v in values.items())]:
        try:
            apply_override(raw, assignment)
        except InputError as exc:
            raise type(exc)(exc.detail, source=str(path), field=exc.field) from None
    scenario = parse_scenario(raw, str(path))
    if limits:
        sim.limits.check(scenario, path)
    return resolve(scenario, str(path), path.resolve().parent, tuple(strategies))


def _set(key: str, value: Any) -> str:
    return f"{key}={yaml.safe_dump(value, default_flow_style=True, width=10**9).strip()}" \
        if not isinstance(value, str) else f"{key}={value}"


def build_points(path: Path, axes: Sequence[Axis], overrides: Sequence[str] = (), *,
                 strategies: Sequence[str] = (), replications: int | None = None,
                 seed: int | None = None, limits: bool = True) -> list[Point]:
    """Every grid point resolved; the first invalid one raises, naming the point.

    Raises:
        InputError: the scenario, an override or a point's values are invalid.
    """
    base = read_raw(path)
    if replications is not None:
        base["replications"] = replications
    if seed is not None:
        base["seed"] = seed
    points = []
    for index, values in enumerate(expand(axes)):
        try:
            resolved = resolve_point(path, base, overrides, values, strategies=strategies,
                                     limits=limits)
        except InputError as exc:
            where = ", ".join(f"{k}={v!r}" for k, v in values.items())
            raise SweepError(f"{exc} (at grid point {where})" if where else str(exc)) from None
        points.append(Point(index, values, resolved))
    return points
