"""``job.star``: a job's type and option values, as RELION 5 reads and writes them.

A list table ``data_job`` (``_rlnJobTypeLabel``, ``_rlnJobIsContinue``, ``_rlnJobIsTomo``)
then a loop ``data_joboptions_values`` (``_rlnJobOptionVariable``, ``_rlnJobOptionValue``)
with one row per option in alphabetical order; every value is a string (``Yes``/``No``,
``200``, ``0.5``). The reader also takes RELION 3.1's integer ``_rlnJobType`` and the
pre-3.1 ``run.job`` text format (``label == value`` lines, labels left as given).

Example::

    write_job_star("Class2D/job013/job.star", JobStar("emclass2d.class2d", {"nr_classes": "50"}))
    read_job_star("Class2D/job013/job.star").options["nr_classes"]      # '50'

See also: :class:`emclass2d.jobtypes.base.JobOptions` (``to_job_star``/``from_job_star``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from emclass2d.nodes.graph import labels as L
from emclass2d.nodes.io.star import StarFileError, read_star, require_block, require_labels, write_star


@dataclass
class JobStar:
    """Contents of one job.star: process type label, flags, ``{variable: value string}``."""

    process_type: str
    options: dict[str, str] = field(default_factory=dict)
    is_continue: bool = False
    is_tomo: bool = False


def job_star_blocks(job: JobStar) -> dict[str, object]:
    """The two blocks, options sorted by variable name as RELION's std::map does."""
    names = sorted(job.options)
    return {
        L.JOB_BLOCK: {L.JOB_TYPE_LABEL: job.process_type, L.JOB_IS_CONTINUE: bool(job.is_continue),
                      L.JOB_IS_TOMO: bool(job.is_tomo)},
        L.JOB_OPTIONS_BLOCK: pd.DataFrame({L.JOB_OPTION_VARIABLE: names,
                                           L.JOB_OPTION_VALUE: [str(job.options[n]) for n in names]}, dtype=object),
    }


def write_job_star(path: str | os.PathLike[str], job: JobStar) -> None:
    """Write ``job`` atomically in RELION 5's job.star layout."""
    write_star(path, job_star_blocks(job))


def read_job_star(path: str | os.PathLike[str]) -> JobStar:
    """Read a job.star (or pre-3.1 run.job); raises :class:`StarFileError` naming file and label."""
    path = Path(path)
    if path.is_file() and path.suffix == ".job":
        return _read_run_job(path)
    blocks = read_star(path)
    general = require_block(blocks, L.JOB_BLOCK, path)
    if not isinstance(general, dict):
        general = general.iloc[0].to_dict() if len(general) else {}
    if L.JOB_TYPE_LABEL in general:
        process_type = str(general[L.JOB_TYPE_LABEL])
    elif L.JOB_TYPE_INT in general:
        process_type = L.PROCESS_LABEL_BY_INT.get(int(general[L.JOB_TYPE_INT]), "")
    else:
        raise StarFileError(f"{path}: data_{L.JOB_BLOCK} lacks _{L.JOB_TYPE_LABEL}")
    options: dict[str, str] = {}
    table = blocks.get(L.JOB_OPTIONS_BLOCK)
    if isinstance(table, dict):
        table = pd.DataFrame([table])
    if table is not None and len(table):
        require_labels(table, [L.JOB_OPTION_VARIABLE, L.JOB_OPTION_VALUE], path, L.JOB_OPTIONS_BLOCK)
        for var, value in zip(table[L.JOB_OPTION_VARIABLE], table[L.JOB_OPTION_VALUE]):
            options[str(var)] = _unquote(value)
    return JobStar(process_type, options, L.parse_flag(general.get(L.JOB_IS_CONTINUE)), L.parse_flag(general.get(L.JOB_IS_TOMO)))


def _unquote(value: object) -> str:
    s = "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)
    return "" if s == '""' else s


def _read_run_job(path: Path) -> JobStar:
    options: dict[str, str] = {}
    is_continue = False
    for line in path.read_text(errors="replace").splitlines():
        if "==" not in line:
            continue
        key, value = (s.strip() for s in line.split("==", 1))
        if key == "is_continue":
            is_continue = L.parse_flag(value)
        else:
            options[key] = value
    return JobStar("", options, is_continue)
