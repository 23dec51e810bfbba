"""Options of a job to run: validation against the job type's model, with messages users can act on.

Unknown option names are refused with the closest known names; values are checked by the
job type's pydantic model; :func:`allowed_text` says what an option accepts
(``'integer >= 1'``, ``'Yes or No'``).

Example::

    options = validate_options(job_type, {"nr_classes": "50", "do_em": "Yes"})
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from emclass2d.jobtypes.base import JobOptions, JobType
from emclass2d.nodes.graph import labels as L

#: Process exit code for each final status (RELION's exit modes 0/1/2).
EXIT_CODES: dict[str, int] = {L.STATUS_SUCCEEDED: 0, L.STATUS_FAILED: 1, L.STATUS_ABORTED: 2}


class RunError(RuntimeError):
    """A job cannot be started as asked; the message is one line for the user."""


class OptionsError(RunError):
    """Invalid option values; the message lists every bad option, its value and what is allowed."""


def allowed_text(info: Mapping[str, Any]) -> str:
    """What an option accepts, e.g. ``'integer >= 1'``, ``'Yes or No'``, ``'one of em, vdam'``."""
    typ = info.get("type")
    if info.get("choices"):
        return "one of " + ", ".join(map(str, info["choices"]))
    if typ is bool:
        return "Yes or No"
    words = {int: "integer", float: "number", str: "text"}.get(typ, getattr(typ, "__name__", str(typ)))
    bounds = [f"{sym} {info[key]:g}" for key, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
              if key in info]
    return " ".join([words, " and ".join(bounds)]).strip()


def check_option_names(model: type[JobOptions], names: list[str], process_type: str) -> None:
    """Refuse unknown option names, suggesting the closest valid one."""
    valid = sorted(model.accepted_names())
    bad = []
    for name in names:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            bad.append(f"--{name}" + (f" (did you mean --{close[0]}?)" if close else ""))
    if bad:
        raise OptionsError(f"unknown option(s) for {process_type}: " + ", ".join(bad)
                           + f"; 'emclass2d jobtypes {process_type}' lists them")


def validate_options(job_type: JobType, values: Mapping[str, Any], *, base: Mapping[str, str] | None = None) -> JobOptions:
    """Options model from job.star-style ``{relion name: value}`` on top of ``base``.

    Raises :class:`OptionsError` naming each unknown or invalid option, its value and
    what it accepts.
    """
    model = job_type.options_model
    check_option_names(model, list(values), job_type.process_type)
    merged = {**(base or {}), **{k: v for k, v in values.items()}}
    merged = {k: v for k, v in merged.items() if k in model.accepted_names()}
    try:
        return model.from_job_star(merged)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = err.get("loc") or ()
            name = str(loc[0]) if loc else ""
            if name in model.relion_names():
                info = model.field_info(name)
                shown = merged.get(name, info["default"])
                lines.append(f"  --{name} {shown!r}: {err['msg']} (allowed: {allowed_text(info)})")
            else:
                lines.append(f"  {err['msg']}")
        raise OptionsError(f"invalid option(s) for {job_type.process_type}:\n" + "\n".join(lines)) from None
