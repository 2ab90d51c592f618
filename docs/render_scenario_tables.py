"""Regenerate the tables of ``docs/scenarios.md`` from the pydantic models and registries.

Run ``python docs/render_scenario_tables.py`` after changing a scenario field or registering a
component; ``--check`` exits with 1 instead of writing when the file is out of date. Only the
text between ``<!-- BEGIN GENERATED x -->`` and ``<!-- END GENERATED x -->`` is replaced.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

import sim.build  # registers every batcher (continuous, adaptive, vllm_v0)
import sim.policy
from sim.model.batcher import batchers
from sim.model.cost import cost_models
from sim.policy.pickers import filters, pickers
from sim.policy.scorers import scorers
from sim.registry import Registry
from sim.scenario import Scenario
from sim.spec import ComponentSpec
from sim.workload.arrivals import arrivals
from sim.workload.lengths import lengths
from sim.workload.prefixes import prefixes
from sim.workload.sessions import sessions

DOC = Path(__file__).with_name("scenarios.md")
UNITS = {"_s": "s", "_ms": "ms", "_tokens": "tokens", "_rps": "requests/s", "_flops": "FLOP/s",
         "_utilization": "fraction"}
NOT_UNITS = {"zipf_s"}  # a Zipf exponent named s, not seconds
#: (heading, where the component is used, registry)
REGISTRIES: list[tuple[str, str, Registry[Any]]] = [
    ("Arrival processes", "`workload.arrivals`", arrivals),
    ("Length distributions", "`workload.prompt_tokens`, `workload.output_tokens`, "
     "`workload.sessions.params.turns`", lengths),
    ("Shared prefixes", "`workload.prefixes`", prefixes),
    ("Sessions", "`workload.sessions`", sessions),
    ("Batchers", "`cluster.node_groups[i].batcher`", batchers),
    ("Cost models", "`cluster.node_groups[i].cost_model`", cost_models),
    ("Strategies", "`router.strategies[i]`", sim.policy.strategies),
    ("Scorers of composed strategies", "`params.scorers[j]` of a `composed` strategy "
     "(`{name, weight, params}`)", scorers),
    ("Filters of composed strategies", "`params.filters[j]` of a `composed` strategy", filters),
    ("Pickers of composed strategies", "`params.picker` of a `composed` strategy", pickers)]


def type_name(tp: Any) -> str:
    """A reader's name for a field's type."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return type_name(args[0])
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        text = " or ".join(type_name(a) for a in rest)
        return f"{text} or null" if len(rest) < len(args) else text
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is dict:
        return "mapping"
    if isinstance(tp, type) and issubclass(tp, ComponentSpec):
        return "`{name, params}`"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "mapping"
    return {int: "integer", float: "number", bool: "boolean", str: "string"}.get(tp, str(tp))


def constraints(field: FieldInfo) -> str:
    """Bounds and patterns of a field, e.g. ``> 0, <= 1``."""
    out = []
    for item in field.metadata:
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if getattr(item, attr, None) is not None:
                out.append(f"{sign} {getattr(item, attr)}")
        if getattr(item, "min_length", None):
            out.append(f"at least {item.min_length} item{'s' if item.min_length > 1 else ''}")
        if getattr(item, "pattern", None):
            out.append("letters, digits, `_ . -`; not starting with `.` or `-`")
    return ", ".join(out)


def default(field: FieldInfo) -> str:
    """The default as YAML, or *required*."""
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "*required*"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        value = value.model_dump(exclude_defaults=True)
    elif isinstance(value, list):
        value = [v.model_dump(exclude_defaults=True) if isinstance(v, BaseModel) else v
                 for v in value]
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return f"`{text.removesuffix('...').strip()}`"


def attribute_docs(model: type[BaseModel]) -> dict[str, str]:
    """Field texts from a Google-style ``Attributes:`` docstring section."""
    doc = inspect.getdoc(model) or ""
    _, found, section = doc.partition("Attributes:\n")
    texts: dict[str, str] = {}
    key = ""
    for line in section.splitlines() if found else []:
        match = re.match(r"^    (\w+): (.*)$", line)
        if match:
            key, texts[match[1]] = match[1], match[2]
        elif line.startswith("        ") and key:
            texts[key] += " " + line.strip()
        else:
            break
    return texts


def field_table(model: type[BaseModel]) -> list[str]:
    """A markdown table of the model's fields."""
    if not model.model_fields:
        return ["No parameters."]
    notes = attribute_docs(model)
    rows = ["| key | type | unit | default | constraint | meaning |",
            "|---|---|---|---|---|---|"]
    for name, field in model.model_fields.items():
        kind = type_name(field.annotation)
        is_number = kind.split(" or ")[0].split()[-1] in ("integer", "number")
        unit = "" if name in NOT_UNITS or not is_number else next(
            (u for suffix, u in UNITS.items() if f"_{name}".endswith(suffix)), "")
        meaning = (field.description or notes.get(name, "")).replace("|", "\\|")
        rows.append(f"| `{name}` | {kind} | {unit} | {default(field)} "
                    f"| {constraints(field)} | {meaning} |")
    return rows


def sections(model: type[BaseModel], path: str = "") -> list[tuple[str, type[BaseModel]]]:
    """``(path, model)`` for ``model`` and every mapping nested in it (not ``{name, params}``),
    depth first in field order; list items get ``[i]``."""
    out = [(path, model)]
    for name, field in model.model_fields.items():
        tp, suffix = field.annotation, ""
        for _ in range(2):  # unwrap ``X | None`` and ``list[X]``
            if get_origin(tp) in (Union, types.UnionType):
                rest = [a for a in get_args(tp) if a is not type(None)]
                tp = rest[0] if len(rest) == 1 else tp
            if get_origin(tp) is list:
                tp, suffix = get_args(tp)[0], "[i]"
        if isinstance(tp, type) and issubclass(tp, BaseModel) and tp is not ComponentSpec:
            out += sections(tp, f"{path}.{name}{suffix}".lstrip("."))
    return out


def keys_block() -> list[str]:
    """Tables of every scenario section."""
    out: list[str] = []
    for path, model in sections(Scenario):
        doc = (inspect.getdoc(model) or "").split("\n\n")[0].replace("\n", " ")
        heading = f"`{path}`" if path else "Top level"
        out += [f"### {heading}", "", doc, "", *field_table(model), ""]
    return out


def components_block() -> list[str]:
    """One section per registry, one entry per registered name."""
    out: list[str] = []
    for heading, where, registry in REGISTRIES:
        out += [f"### {heading}", "", f"Used in {where}. Registered names: "
                + ", ".join(f"`{n}`" for n in registry.names()) + ".", ""]
        for name in registry.names():
            cls = registry.get(name)
            doc = inspect.getdoc(cls) or ""
            out += [f"#### `{name}`", "", doc, ""]
            out += [*field_table(getattr(cls, "Params", BaseModel)), ""]
    return out


def render(text: str) -> str:
    """``text`` with every generated block rebuilt."""
    for name, lines in (("keys", keys_block()), ("components", components_block())):
        body = "\n".join(lines).rstrip() + "\n"
        pattern = re.compile(rf"(<!-- BEGIN GENERATED {name} -->\n).*?(<!-- END GENERATED "
                             rf"{name} -->)", re.S)
        text, count = pattern.subn(lambda m, b=body: m[1] + "\n" + b + "\n" + m[2], text)
        if count != 1:
            raise SystemExit(f"{DOC}: expected one generated block named {name!r}")
    return text


def main() -> int:
    """Rewrite the file, or with ``--check`` report whether it is up to date."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args()
    old = DOC.read_text(encoding="utf-8")
    new = render(old)
    if args.check:
        if new != old:
            sys.stderr.write(f"{DOC} is out of date; run python docs/{Path(__file__).name}\n")
        return int(new != old)
    DOC.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
