"""Translate a job type's pydantic options into CCP-EM pipeliner job option specs.

Pure data, no pipeliner import: each field of the options model becomes a
:class:`JobOptionSpec` naming the pipeliner ``JobOption`` class and its keyword
arguments (label, default, hard and suggested bounds, ``in_continue``, input node type),
so the translation is testable without the framework installed.
:mod:`emclass2d.jobtypes.ccpem.job` turns the specs into real job options.

Example::

    specs = joboption_specs(Class2DJob)
    spec = next(s for s in specs if s.name == "nr_classes")
    spec.cls_name, spec.kwargs["hard_min"]        # ('IntJobOption', 1)
    split_node_type("OptimiserData.star.relion.class2d")
    # ('OptimiserData', 'star', ['relion', 'class2d'])
"""
from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from emclass2d.jobtypes.base import JobOptions, JobType

#: Job option groups of the pipeliner's GUI, by job.star variable (the rest is "Main").
QUEUE_GROUP = "Queue submission options"
RUNNING_GROUP = "Running options"
_GROUP_OF: dict[str, str] = {
    **{n: QUEUE_GROUP for n in ("do_queue", "queuename", "qsub", "qsubscript", "min_dedicated")},
    **{n: RUNNING_GROUP for n in ("nr_mpi", "nr_threads", "other_args")},
}


@dataclass(frozen=True)
class JobOptionSpec:
    """One pipeliner job option: its job.star name, JobOption class name and constructor kwargs.

    For ``InputNodeJobOption`` the kwargs hold ``node_type`` (top-level type) and
    ``node_kwds``; ``pattern`` is ``(description, [extensions])`` for a ``FileDescription``.
    """

    name: str
    cls_name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def split_node_type(label: str) -> tuple[str, str, list[str]]:
    """``'ParticleGroupMetadata.star.relion.class2d'`` -> ``('ParticleGroupMetadata', 'star', ['relion', 'class2d'])``.

    RELION 5 node type labels are ``<TopLevelType>.<format>[.<keyword>...]``; the
    pipeliner's ``create_node`` takes the top-level type and the keywords and reads the
    format from the file name.
    """
    parts = label.split(".")
    if not parts[0]:
        raise ValueError(f"node type label {label!r} has no top-level type")
    return parts[0], parts[1] if len(parts) > 1 else "", parts[2:]


def _base_type(annotation: Any) -> tuple[Any, tuple[Any, ...]]:
    """The field's scalar type and, for ``Literal``, its choices (``Optional`` unwrapped)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        return type(choices[0]) if choices else str, choices
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _base_type(args[0])
    return annotation, ()


def _number(value: Any, kind: type) -> Any:
    if value is None:
        return None
    return int(value) if kind is int else float(value)


def _bounds(info: Mapping[str, Any], kind: type) -> dict[str, Any]:
    """Hard bounds the pipeliner can check itself (``ge``/``le``; ``gt``/``lt`` exactly for ints).

    Strict float bounds have no pipeliner equivalent; they are still enforced through
    the model's validation (``additional_joboption_validation``).
    """
    out: dict[str, Any] = {}
    if "ge" in info:
        out["hard_min"] = _number(info["ge"], kind)
    elif "gt" in info and kind is int:
        out["hard_min"] = int(info["gt"]) + 1
    if "le" in info:
        out["hard_max"] = _number(info["le"], kind)
    elif "lt" in info and kind is int:
        out["hard_max"] = int(info["lt"]) - 1
    if info.get("suggested"):
        lo, hi = info["suggested"]
        out["suggested_min"], out["suggested_max"] = _number(lo, kind), _number(hi, kind)
    return out


def _file_pattern(node_type: str) -> tuple[str, list[str]]:
    top, fmt, _ = split_node_type(node_type)
    return (f"{top} files", [f".{fmt}"] if fmt else [])


def joboption_specs(job_type: type[JobType]) -> list[JobOptionSpec]:
    """Pipeliner job option specs for every option of ``job_type``, in declaration order."""
    model = job_type.options_model
    specs = []
    for relion_name in model.relion_names():
        info = model.field_info(relion_name)
        kind, choices = _base_type(info["type"])
        common: dict[str, Any] = {
            "label": info.get("label") or relion_name,
            "help_text": info.get("help") or "",
            "in_continue": bool(info.get("in_continue")) or relion_name == job_type.continue_option,
            "jobop_group": _GROUP_OF.get(relion_name, "Main"),
        }
        if relion_name == job_type.continue_option:
            common["only_in_continue"] = True
        default = info["default"]
        if info.get("node_type"):
            top, _, kwds = split_node_type(info["node_type"])
            specs.append(JobOptionSpec(relion_name, "InputNodeJobOption", {
                **common, "default_value": "" if default is None else str(default),
                "node_type": top, "node_kwds": kwds, "pattern": _file_pattern(info["node_type"])}))
        elif kind is bool:
            specs.append(JobOptionSpec(relion_name, "BooleanJobOption", {**common, "default_value": bool(default)}))
        elif choices or info.get("choices"):
            values = [str(c) for c in (choices or info["choices"])]
            specs.append(JobOptionSpec(relion_name, "MultipleChoiceJobOption", {
                **common, "choices": values, "default_value": str(default), "is_required": False}))
        elif kind in (int, float):
            cls_name = "IntJobOption" if kind is int else "FloatJobOption"
            step = 1 if kind is int else 1.0
            specs.append(JobOptionSpec(relion_name, cls_name, {
                **common, "default_value": _number(default, kind), "step_value": step, **_bounds(info, kind)}))
        else:
            specs.append(JobOptionSpec(relion_name, "StringJobOption", {
                **common, "default_value": "" if default is None else str(default)}))
    return specs


def validation_problems(model: type[JobOptions], values: Mapping[str, str]) -> list[tuple[str | None, str]]:
    """``(job.star name or None, message)`` for every problem the options model finds in ``values``.

    ``None`` marks a rule spanning several options (the model's cross-field checks).
    An empty list means the values make a valid options model.
    """
    known = model.relion_names()
    try:
        model.from_job_star({k: v for k, v in values.items() if k in known})
    except ValidationError as exc:
        problems: list[tuple[str | None, str]] = []
        for err in exc.errors():
            loc = err.get("loc") or ()
            name = str(loc[0]) if loc and str(loc[0]) in known else None
            msg = str(err.get("msg", "invalid value"))
            problems.append((name, msg.removeprefix("Value error, ")))
        return problems
    return []
