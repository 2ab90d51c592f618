"""The ``{name, params}`` shape every pluggable part of a scenario uses.

A ``ComponentSpec`` names a registered class and carries its raw parameters. ``build_params``
checks the parameters against the class's own pydantic ``Params`` model, so a typo fails while
the scenario loads, with the field path in the message (``router.strategies.0.params.laod``).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sim.errors import ScenarioError, UnknownNameError
from sim.registry import Registry


class StrictModel(BaseModel):
    """Base for scenario and parameter models: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ComponentSpec(StrictModel):
    """A registered component: its name and its parameters."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class NoParams(StrictModel):
    """Parameters of a component that takes none."""


P = TypeVar("P", bound=BaseModel)


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    """Render the first pydantic error as ``path: message (got value)`` on one line."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in (*([prefix] if prefix else []), *first["loc"]))
    msg = first["msg"]
    got = first.get("input")
    shown = "" if first["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) \
        else f" (got {got!r})"
    more = len(err.errors()) - 1
    tail = f" [and {more} more error{'s' if more > 1 else ''}]" if more else ""
    return f"{loc}: {msg}{shown}{tail}"


def build_params(registry: Registry[Any], spec: ComponentSpec, path: str) -> tuple[type, BaseModel]:
    """Resolve ``spec.name`` in ``registry`` and validate ``spec.params`` against its ``Params``.

    Raises:
        ScenarioError: unknown name or invalid parameters, with ``path`` in the message.
    """
    try:
        cls = registry.get(spec.name)
    except UnknownNameError as exc:
        raise ScenarioError(str(exc), field=f"{path}.name") from None
    params_model: type[BaseModel] = getattr(cls, "Params", NoParams)
    try:
        params = params_model.model_validate(spec.params)
    except ValidationError as exc:
        raise ScenarioError(format_validation_error(exc, f"{path}.params")) from None
    return cls, params
