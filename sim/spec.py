"""The ``{name, params}`` shape every pluggable part of a scenario uses.

A ``ComponentSpec`` names a registered class and carries its raw parameters. ``build_params``
checks the parameters against the class's own pydantic ``Params`` model, so a typo fails while
the scenario loads, with the field path in the message (``router.strategies.0.params.laod``).
``format_validation_error`` renders a pydantic error as that one line.
"""

from __future__ import annotations

import difflib
import types
from typing import Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sim.errors import ScenarioError, UnknownNameError
from sim.registry import Registry


class StrictModel(BaseModel):
    """Base for scenario and parameter models: frozen, unknown keys, NaN and infinity rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ComponentSpec(StrictModel):
    """A registered component: its name and its parameters."""

    name: str = Field(description="a registered name (see the component lists)")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="the component's parameters, checked against it")


class NoParams(StrictModel):
    """Parameters of a component that takes none."""


P = TypeVar("P", bound=BaseModel)

_SHOW_CHARS = 60  # longest input repr quoted in a message


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOW_CHARS else text[: _SHOW_CHARS - 3] + "..."


def _model_at(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the field at ``loc`` inside ``model``, if known."""
    tp: Any = model
    for part in loc:
        tp = _strip_optional(tp)
        if isinstance(part, int) and get_origin(tp) is list:
            tp = get_args(tp)[0]
        elif isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            tp = tp.model_fields[part].annotation
        else:
            return None
    tp = _strip_optional(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _unknown_key(key: Any, holder: type[BaseModel] | None) -> str:
    if holder is None:
        return "unknown key"
    known = list(holder.model_fields)
    if not known:
        return "unknown key (this component takes no parameters)"
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown key{hint} (expected one of: {', '.join(known)})"


def format_validation_error(err: ValidationError, prefix: str = "",
                            model: type[BaseModel] | None = None) -> str:
    """Render the first pydantic error as ``path: message (got value)`` on one line.

    ``prefix`` is prepended to the error's location; ``model`` (the validated class) lets an
    unknown key be reported with the keys that are allowed there.
    """
    errors = err.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    path = ".".join(str(p) for p in (*([prefix] if prefix else []), *loc))
    kind = first["type"]
    got = first.get("input")
    if kind == "extra_forbidden":
        msg = _unknown_key(loc[-1], _model_at(model, loc[:-1]))
    else:
        msg = first["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if kind != "missing" and not isinstance(got, dict) and kind != "value_error":
            msg += f" (got {_show(got)})"
    more = len(errors) - 1
    tail = f" [and {more} more error{'s' if more > 1 else ''}]" if more else ""
    text = f"{path}: {msg}{tail}" if path else f"{msg}{tail}"
    return " ".join(text.splitlines())


def build_params(registry: Registry[Any], spec: ComponentSpec, path: str) -> tuple[type, BaseModel]:
    """Resolve ``spec.name`` in ``registry`` and validate ``spec.params`` against its ``Params``.

    Raises:
        ScenarioError: unknown name or invalid parameters; the message starts with the field
            path (``<path>.name`` or ``<path>.params.<key>``).
    """
    try:
        cls = registry.get(spec.name)
    except UnknownNameError as exc:
        raise ScenarioError(str(exc), field=f"{path}.name") from None
    params_model: type[BaseModel] = getattr(cls, "Params", NoParams)
    try:
        params = params_model.model_validate(spec.params)
    except ValidationError as exc:
        raise ScenarioError(format_validation_error(exc, f"{path}.params", params_model)) from None
    return cls, params
