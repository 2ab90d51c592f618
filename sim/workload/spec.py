"""The ``workload`` block of a scenario and the function that turns it into request columns.

``WorkloadSpec`` is either synthetic, naming the components (``{name, params}`` each), or a
``trace`` block replaying a request trace (``sim.workload.traces``), never both.
``check_workload_spec`` resolves the components against their registries (or checks the trace
file's header and first records) so a typo or a bad value fails while the scenario loads, with
the field path in the message; ``build_workload`` draws (or replays) the requests.

Each component draws from its own named stream, ``sim.rng.stream(seed, "workload", <part>)``
with ``<part>`` one of ``arrivals``, ``prompt_tokens``, ``output_tokens``, ``prefixes``,
``prefix_lengths`` (per-group prefix lengths of ``grouped_prefix``) and ``sessions`` (a
replayed trace: ``trace``, for its jitter only), so changing one component never changes the
numbers another draws. Segment keys: prefix group ``g`` has key ``g``; session keys start
after the last group.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
from pydantic import Field, model_validator

from sim.errors import ScenarioError
from sim.registry import Registry
from sim.rng import stream
from sim.spec import ComponentSpec, StrictModel, build_params
from sim.workload.arrivals import ArrivalProcess, arrivals
from sim.workload.base import Workload
from sim.workload.lengths import LengthDistribution, lengths
from sim.workload.prefixes import prefix_segments, prefixes, take_requests
from sim.workload.replay import NodeLimits, fit_context, node_limits
from sim.workload.sessions import MultiTurn, sessions
from sim.workload.traces import TraceSpec, check_trace, read_trace

if TYPE_CHECKING:
    from sim.build import ResolvedScenario

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The fields of a synthetic workload; a trace block excludes all of them.
SYNTHETIC_FIELDS = ("arrivals", "prompt_tokens", "output_tokens", "max_output_tokens",
                    "prefixes", "sessions", "models")


class WorkloadSpec(StrictModel):
    """A synthetic workload (arrivals, token lengths, optional shared prefixes and sessions),
    or a replayed ``trace``.

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
        models: for multi-model clusters, the model each request asks for, drawn with these
            relative weights (per session when there are sessions) on the stream
            ``(seed, "workload", "models")``; stored as ``Workload.extra["model"]``. A trace
            brings its own model column instead (``trace.model_map``).
        sheddable_fraction: the fraction of requests marked sheddable (admission control may
            drop them), drawn on ``(seed, "workload", "sheddable")``; also for traces.
        trace: a request trace to replay (``sim.workload.traces.TraceSpec``) instead of the
            synthetic fields above.
    """

    arrivals: ComponentSpec | None = None
    prompt_tokens: ComponentSpec | None = None
    output_tokens: ComponentSpec | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    prefixes: ComponentSpec | None = None
    sessions: ComponentSpec | None = None
    models: dict[str, float] | None = Field(
        default=None, description="model name -> relative weight of the requests asking for "
                                  "it (multi-model clusters); null: requests name no model")
    sheddable_fraction: float = Field(
        default=0.0, ge=0, le=1, description="fraction of requests admission control may drop")
    trace: TraceSpec | None = None

    @model_validator(mode="after")
    def _model_weights(self) -> WorkloadSpec:
        if self.models is not None:
            if not self.models:
                raise ValueError("models: expected at least one model name")
            for name, weight in self.models.items():
                if not name or not math.isfinite(weight) or weight <= 0:
                    raise ValueError(f"models: expected non-empty names with weights > 0, "
                                     f"got {name!r}: {weight}")
        return self

    @model_validator(mode="after")
    def _synthetic_or_trace(self) -> WorkloadSpec:
        given = [name for name in SYNTHETIC_FIELDS if getattr(self, name) is not None]
        if self.trace is not None and given:
            raise ValueError(f"give either a trace block or the synthetic components, not "
                             f"both (found trace and {', '.join(given)}); the trace has its "
                             f"own max_output_tokens")
        missing = [n for n in ("arrivals", "prompt_tokens", "output_tokens")
                   if getattr(self, n) is None]
        if self.trace is None and missing:
            raise ValueError(f"missing {', '.join(missing)} (or give a trace block instead "
                             f"of the synthetic components)")
        return self


class PrefixModel(Protocol):
    """What the workload builder needs of a ``prefixes`` component.

    A model may also define ``group_tokens(rng) -> int64 array`` (one prefix length per group,
    drawn on the stream ``(seed, "workload", "prefix_lengths")``); without it every group's
    prefix is ``params.prefix_tokens`` long.
    """

    @property
    def key_count(self) -> int:
        """Number of segment keys the groups use (keys ``0 .. key_count - 1``)."""

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Return the int64 group of each of ``n`` items, ``-1`` for none."""


@dataclass(frozen=True, slots=True)
class _Parts:
    """The built components of a ``WorkloadSpec``."""

    arrivals: ArrivalProcess
    prompt: LengthDistribution
    output: LengthDistribution
    max_output_tokens: int
    prefixes: PrefixModel | None
    sessions: MultiTurn | None


def _build(registry: Registry[type[T]], spec: ComponentSpec, path: str) -> T:
    cls, params = build_params(registry, spec, path)
    component: T = cls(params)
    return component


def _resolve(spec: WorkloadSpec, path: str) -> _Parts:
    """Build every component of a synthetic ``spec``; raise ``ScenarioError`` naming the path."""
    assert spec.arrivals and spec.prompt_tokens and spec.output_tokens  # the validator's job
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
    assert spec.output_tokens is not None
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

    For a trace, check that the file exists and that its header and first records parse,
    without reading the whole file.

    Args:
        spec: the workload block.
        path: its field path, for messages.
        base_dir: the scenario file's folder, which a relative trace path starts from (the
            working directory when ``None``).

    Raises:
        ScenarioError: unknown component name (with close matches), invalid parameters, an
            inconsistent ``max_output_tokens`` or a missing trace file; the message names the
            field path, for example ``workload.prompt_tokens.params.sigma``.
        TraceError: a bad trace header or record, naming the trace file, line and column.
    """
    if spec.trace is not None:
        check_trace(spec.trace, base_dir, f"{path}.trace")
        return
    _resolve(spec, path)


def build_workload(spec: WorkloadSpec, duration_s: float, seed: int, *,
                   base_dir: Path | None = None,
                   limits: NodeLimits | None = None) -> Workload:
    """Draw (or replay) the requests arriving in ``[0, duration_s)`` for root seed ``seed``.

    Args:
        spec: the workload block.
        duration_s: the scenario's duration; a replayed trace is cut (or looped) to it too.
        seed: root seed of the named streams.
        base_dir: the scenario file's folder, which a relative trace path starts from.
        limits: the nodes' models and context limits (``sim.workload.replay.node_limits``):
            requests beyond their context are counted (a trace's ``over_context: trim``
            trims them); ``None``: not counted.

    Returns:
        A validated ``Workload`` sorted by arrival time (stable, segments permuted with the
        requests), with ``expected_rate_rps`` the analytic long-run request rate (for a trace:
        the replayed mean rate, ``(n - 1) / span``).

    Raises:
        ScenarioError: as ``check_workload_spec``.
        TraceError: a bad trace record.
        ValueError: ``duration_s`` negative or not finite, or ``seed`` negative.
    """
    if spec.trace is not None:
        if not (math.isfinite(duration_s) and duration_s >= 0) or seed < 0:
            raise ValueError(f"need a finite duration_s >= 0 and a seed >= 0, got "
                             f"{duration_s}, {seed}")
        from sim.workload.replay import replay

        table = read_trace(spec.trace, base_dir)
        return _identical(spec, _request_mix(
            spec, replay(table, spec.trace, duration_s, seed, limits), seed))
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
    workload = _request_mix(spec, workload, seed)
    workload, context = fit_context(workload, "reject", limits, [])
    accounting = {"kind": "synthetic", "replayed": len(workload), **workload.accounting,
                  **context, "replications_identical": False}
    workload = dataclasses.replace(workload, accounting=accounting)
    workload.validate()
    return workload


def _identical(spec: WorkloadSpec, w: Workload) -> Workload:
    """A replay whose sheddable marks are drawn differs between replications too."""
    if not spec.sheddable_fraction or not w.accounting.get("replications_identical"):
        return w
    return dataclasses.replace(w, accounting={**w.accounting, "replications_identical": False})


def _request_mix(spec: WorkloadSpec, w: Workload, seed: int) -> Workload:
    """Mark each request's model (per session when there are sessions) and sheddability."""
    if not spec.models and not spec.sheddable_fraction:
        return w
    extra = dict(w.extra)
    n = len(w)
    if spec.models:
        names = sorted(spec.models)
        weights = np.array([spec.models[m] for m in names], dtype=float)
        rng = stream(seed, "workload", "models")
        if spec.sessions is not None and n:
            per_session = rng.choice(len(names), size=int(w.session_id.max()) + 1,
                                     p=weights / weights.sum())
            index = per_session[w.session_id]
        else:
            index = rng.choice(len(names), size=n, p=weights / weights.sum())
        extra["model"] = np.array(names)[index]
    if spec.sheddable_fraction:
        extra["sheddable"] = stream(seed, "workload", "sheddable").random(n) < \
            spec.sheddable_fraction
    return dataclasses.replace(w, extra=extra)


def _outputs(parts: _Parts, n: int, seed: int,
             prompt: np.ndarray) -> tuple[np.ndarray, str, dict[str, int]]:
    """Draw ``n`` output lengths (given each request's ``prompt`` length when the output
    component depends on it, ``sample_given``: the whole prompt for single turns, the new
    message in sessions); cut any above the cap and say so (and count them)."""
    rng = stream(seed, "workload", "output_tokens")
    given = getattr(parts.output, "sample_given", None)
    out = given(rng, prompt) if given is not None else parts.output.sample(rng, n)
    over = int(np.count_nonzero(out > parts.max_output_tokens))
    if not over:
        return out, "", {"capped": 0}
    logger.warning("%d of %d outputs cut to max_output_tokens=%d", over, n,
                   parts.max_output_tokens)
    note = f"; {over} outputs cut to max_output_tokens={parts.max_output_tokens}"
    return np.minimum(out, parts.max_output_tokens), note, {"capped": over}


def _groups(parts: _Parts, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Return the prefix group of ``n`` items, each one's prefix length (0 for none) and the
    number of keys the groups use."""
    if parts.prefixes is None:
        return np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.int64), 0
    model = parts.prefixes
    group = model.sample(stream(seed, "workload", "prefixes"), n)
    draw = getattr(model, "group_tokens", None)
    if draw is None:
        fixed = model.params.prefix_tokens  # type: ignore[attr-defined]
        sizes = np.full(model.key_count, fixed, dtype=np.int64)
    else:
        sizes = draw(stream(seed, "workload", "prefix_lengths"))
    return group, np.where(group >= 0, sizes[np.maximum(group, 0)], 0), model.key_count


def _single_turn(parts: _Parts, arrival_s: np.ndarray, seed: int) -> Workload:
    """One request per arrival: optional group prefix, then unique content."""
    n = arrival_s.shape[0]
    own = parts.prompt.sample(stream(seed, "workload", "prompt_tokens"), n)
    group, prefix_tokens, _ = _groups(parts, n, seed)
    out, note, capped = _outputs(parts, n, seed, own + prefix_tokens)
    seg_ptr, seg_key, seg_len = prefix_segments(group, own, prefix_tokens[group >= 0])
    return Workload(
        arrival_s=arrival_s, prompt_tokens=own + prefix_tokens,
        output_tokens=out, max_output_tokens=np.full(n, parts.max_output_tokens, np.int64),
        session_id=np.full(n, -1, dtype=np.int64), prefix_group=group, seg_ptr=seg_ptr,
        seg_key=seg_key, seg_len=seg_len, output_key=np.full(n, -1, dtype=np.int64),
        expected_rate_rps=float("nan"), source=note, accounting=capped)


def _multi_turn(parts: _Parts, session_model: MultiTurn, starts_s: np.ndarray,
                duration_s: float, seed: int) -> Workload:
    """Sessions from the start times; a prefix group is drawn per session."""
    session, turn, arrival_s = session_model.turn_times(
        stream(seed, "workload", "sessions"), starts_s, duration_s)
    n = arrival_s.shape[0]
    message = parts.prompt.sample(stream(seed, "workload", "prompt_tokens"), n)
    out, note, capped = _outputs(parts, n, seed, message)
    group, prefix_tokens, first_key = _groups(parts, starts_s.shape[0], seed)
    # per-carrier prefix lengths, in carrier order (SessionSegments assigns them in that order)
    segs = session_model.segments(session, turn, message, out, group,
                                  prefix_tokens[group >= 0], first_key)  # type: ignore[arg-type]
    return Workload(
        arrival_s=arrival_s, prompt_tokens=segs.prompt_tokens, output_tokens=out,
        max_output_tokens=np.full(n, parts.max_output_tokens, np.int64), session_id=session,
        prefix_group=group[session], seg_ptr=segs.seg_ptr, seg_key=segs.seg_key,
        seg_len=segs.seg_len, output_key=segs.output_key, expected_rate_rps=float("nan"),
        source=note, accounting=capped)


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


def expected_losses(resolved: ResolvedScenario, replication: int = 0) -> dict[str, Any]:
    """The ``input`` block a run of ``resolved`` will write (replication ``replication``):
    rows, drops by reason, outputs capped, prompts trimmed, requests beyond the context.

    Builds the workload as a run does (for a trace: reads the whole file and replays it).
    ``sim.workload.replay.loss_lines`` words the block.

    Raises:
        ScenarioError, TraceError: as building the workload does.
    """
    sc = resolved.scenario
    workload = build_workload(sc.workload, sc.duration_s, sc.seed + replication,
                              base_dir=resolved.base_dir,
                              limits=node_limits(resolved.node_specs))
    return workload.accounting
