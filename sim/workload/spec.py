"""The ``workload`` block of a scenario and the function that turns it into request columns.

``WorkloadSpec`` names the components (``{name, params}`` each); ``check_workload_spec`` resolves
them against their registries so a typo or a bad value fails while the scenario loads, with the
field path in the message; ``build_workload`` draws the requests.

Each component draws from its own named stream, ``sim.rng.stream(seed, "workload", <part>)``
with ``<part>`` one of ``arrivals``, ``prompt_tokens``, ``output_tokens``, ``prefixes`` and
``sessions``, so changing one component never changes the numbers another draws. Segment keys:
prefix group ``g`` has key ``g``; session keys start after the last group.
"""

from __future__ import annotations

from pathlib import Path

import dataclasses
import logging
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from pydantic import Field

from sim.errors import ScenarioError
from sim.registry import Registry
from sim.rng import stream
from sim.spec import ComponentSpec, StrictModel, build_params
from sim.workload.arrivals import ArrivalProcess, arrivals
from sim.workload.base import Workload
from sim.workload.lengths import LengthDistribution, lengths
from sim.workload.prefixes import SharedPrefix, prefix_segments, prefixes, take_requests
from sim.workload.sessions import MultiTurn, sessions

logger = logging.getLogger(__name__)

T = TypeVar("T")


class WorkloadSpec(StrictModel):
    """A synthetic workload: arrivals, token lengths, optional shared prefixes and sessions.

    Attributes:
        arrivals: the arrival process (``arrivals`` registry); with ``sessions`` it gives the
            session start times.
        prompt_tokens: length of each request's own new content (``lengths`` registry); a
            group prefix and, in sessions, the conversation so far come on top of it.
        output_tokens: the true output length (``lengths`` registry).
        max_output_tokens: the cap the router sees (the API's ``max_tokens``); defaults to the
            output distribution's upper bound and is required when that is unbounded. It must
            not be below a known upper bound. With an unbounded output distribution, outputs
            above the cap are cut to it (as an API stops at ``max_tokens``); the count is
            logged and written into the workload's ``source``.
        prefixes: shared prompt prefixes (``prefixes`` registry), or none.
        sessions: multi-turn sessions (``sessions`` registry), or none.
    """

    arrivals: ComponentSpec
    prompt_tokens: ComponentSpec
    output_tokens: ComponentSpec
    max_output_tokens: int | None = Field(default=None, ge=1)
    prefixes: ComponentSpec | None = None
    sessions: ComponentSpec | None = None


@dataclass(frozen=True, slots=True)
class _Parts:
    """The built components of a ``WorkloadSpec``."""

    arrivals: ArrivalProcess
    prompt: LengthDistribution
    output: LengthDistribution
    max_output_tokens: int
    prefixes: SharedPrefix | None
    sessions: MultiTurn | None


def _build(registry: Registry[type[T]], spec: ComponentSpec, path: str) -> T:
    cls, params = build_params(registry, spec, path)
    component: T = cls(params)
    return component


def _resolve(spec: WorkloadSpec, path: str) -> _Parts:
    """Build every component of ``spec``; raise ``ScenarioError`` naming the path."""
    output = _build(lengths, spec.output_tokens, f"{path}.output_tokens")
    session = None
    if spec.sessions is not None:
        cls, params = build_params(sessions, spec.sessions, f"{path}.sessions")
        session = cls(params, path=f"{path}.sessions")
    return _Parts(
        arrivals=_build(arrivals, spec.arrivals, f"{path}.arrivals"),
        prompt=_build(lengths, spec.prompt_tokens, f"{path}.prompt_tokens"),
        output=output,
        max_output_tokens=_output_cap(spec, output, path),
        prefixes=None if spec.prefixes is None
        else _build(prefixes, spec.prefixes, f"{path}.prefixes"),
        sessions=session,
    )


def _output_cap(spec: WorkloadSpec, output: LengthDistribution, path: str) -> int:
    """Return the effective ``max_output_tokens``, checked against the output distribution."""
    bound = output.upper_bound()
    field = f"{path}.max_output_tokens"
    if spec.max_output_tokens is None:
        if bound is None:
            raise ScenarioError(f"required: output_tokens '{spec.output_tokens.name}' is "
                                "unbounded, so give the cap the router sees", field=field)
        return bound
    if bound is not None and spec.max_output_tokens < bound:
        raise ScenarioError(f"{spec.max_output_tokens} is below the upper bound {bound} of "
                            f"output_tokens '{spec.output_tokens.name}'; raise it to at least "
                            f"{bound} or lower the output distribution's maximum", field=field)
    return spec.max_output_tokens


def check_workload_spec(spec: WorkloadSpec, path: str = "workload", *,
                        base_dir: Path | None = None) -> None:
    """Resolve every component and check cross-field consistency.

    Raises:
        ScenarioError: unknown component name (with close matches), invalid parameters, or an
            inconsistent ``max_output_tokens``; the message names the field path, for example
            ``workload.prompt_tokens.params.sigma``.
    """
    _resolve(spec, path)


def build_workload(spec: WorkloadSpec, duration_s: float, seed: int, *,
                   base_dir: Path | None = None) -> Workload:
    """Draw the requests arriving in ``[0, duration_s)`` for root seed ``seed``.

    Returns:
        A validated ``Workload`` sorted by arrival time (stable, segments permuted with the
        requests), with ``expected_rate_rps`` the analytic long-run request rate.

    Raises:
        ScenarioError: as ``check_workload_spec``.
        ValueError: ``duration_s`` negative or not finite, or ``seed`` negative.
    """
    parts = _resolve(spec, "workload")
    starts_s = parts.arrivals.sample(stream(seed, "workload", "arrivals"), duration_s)
    if parts.sessions is None:
        workload = _single_turn(parts, starts_s, seed)
    else:
        workload = _multi_turn(parts, parts.sessions, starts_s, duration_s, seed)
    rate = parts.arrivals.mean_rate_rps
    if parts.sessions is not None:
        rate = parts.sessions.request_rate_rps(rate)
    names = [f"{k}={c.name}" for k, c in (("arrivals", spec.arrivals),
             ("prompt", spec.prompt_tokens), ("output", spec.output_tokens),
             ("prefixes", spec.prefixes), ("sessions", spec.sessions)) if c is not None]
    source = f"synthetic({', '.join(names)}; seed={seed}){workload.source}"
    workload = _sort_by_arrival(dataclasses.replace(workload, expected_rate_rps=rate,
                                                    source=source))
    workload.validate()
    return workload


def _outputs(parts: _Parts, n: int, seed: int) -> tuple[np.ndarray, str]:
    """Draw ``n`` output lengths; cut any above the cap and say so."""
    out = parts.output.sample(stream(seed, "workload", "output_tokens"), n)
    over = int(np.count_nonzero(out > parts.max_output_tokens))
    if not over:
        return out, ""
    logger.warning("%d of %d outputs cut to max_output_tokens=%d", over, n,
                   parts.max_output_tokens)
    note = f"; {over} outputs cut to max_output_tokens={parts.max_output_tokens}"
    return np.minimum(out, parts.max_output_tokens), note


def _groups(parts: _Parts, n: int, seed: int) -> tuple[np.ndarray, int, int]:
    """Return the prefix group of ``n`` items, the prefix length and the keys the groups use."""
    if parts.prefixes is None:
        return np.full(n, -1, dtype=np.int64), 0, 0
    group = parts.prefixes.sample(stream(seed, "workload", "prefixes"), n)
    return group, parts.prefixes.params.prefix_tokens, parts.prefixes.key_count


def _single_turn(parts: _Parts, arrival_s: np.ndarray, seed: int) -> Workload:
    """One request per arrival: optional group prefix, then unique content."""
    n = arrival_s.shape[0]
    own = parts.prompt.sample(stream(seed, "workload", "prompt_tokens"), n)
    out, note = _outputs(parts, n, seed)
    group, prefix_tokens, _ = _groups(parts, n, seed)
    seg_ptr, seg_key, seg_len = prefix_segments(group, own, prefix_tokens)
    return Workload(
        arrival_s=arrival_s, prompt_tokens=own + np.where(group >= 0, prefix_tokens, 0),
        output_tokens=out, max_output_tokens=np.full(n, parts.max_output_tokens, np.int64),
        session_id=np.full(n, -1, dtype=np.int64), prefix_group=group, seg_ptr=seg_ptr,
        seg_key=seg_key, seg_len=seg_len, output_key=np.full(n, -1, dtype=np.int64),
        expected_rate_rps=float("nan"), source=note)


def _multi_turn(parts: _Parts, session_model: MultiTurn, starts_s: np.ndarray,
                duration_s: float, seed: int) -> Workload:
    """Sessions from the start times; a prefix group is drawn per session."""
    session, turn, arrival_s = session_model.turn_times(
        stream(seed, "workload", "sessions"), starts_s, duration_s)
    n = arrival_s.shape[0]
    message = parts.prompt.sample(stream(seed, "workload", "prompt_tokens"), n)
    out, note = _outputs(parts, n, seed)
    group, prefix_tokens, first_key = _groups(parts, starts_s.shape[0], seed)
    segs = session_model.segments(session, turn, message, out, group, prefix_tokens, first_key)
    return Workload(
        arrival_s=arrival_s, prompt_tokens=segs.prompt_tokens, output_tokens=out,
        max_output_tokens=np.full(n, parts.max_output_tokens, np.int64), session_id=session,
        prefix_group=group[session], seg_ptr=segs.seg_ptr, seg_key=segs.seg_key,
        seg_len=segs.seg_len, output_key=segs.output_key, expected_rate_rps=float("nan"),
        source=note)


def _sort_by_arrival(w: Workload) -> Workload:
    """Return ``w`` stably sorted by arrival time, the segment CSR permuted consistently."""
    order = np.argsort(w.arrival_s, kind="stable")
    if np.array_equal(order, np.arange(order.shape[0])):
        return w
    seg_ptr, index = take_requests(w.seg_ptr, order)
    columns = {name: getattr(w, name)[order] for name in (
        "arrival_s", "prompt_tokens", "output_tokens", "max_output_tokens", "session_id",
        "prefix_group", "output_key")}
    return dataclasses.replace(w, seg_ptr=seg_ptr, seg_key=w.seg_key[index],
                               seg_len=w.seg_len[index], **columns)
