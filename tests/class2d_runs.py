"""Run a Class2D job in-process, as the runner does, from inside its project directory."""
from __future__ import annotations

import os
from pathlib import Path

from emclass2d.jobtypes.base import RunContext
from emclass2d.jobtypes.class2d.options import Class2DOptions
from emclass2d.jobtypes.class2d.run import run_class2d


def run_class2d_in(project: Path, job: str, opts: Class2DOptions, is_continue: bool = False) -> list[str]:
    """Run Class2D for ``job`` (e.g. ``"Class2D/job001/"``) in ``project``; returns its log and warning lines."""
    lines: list[str] = []
    old = os.getcwd()
    os.chdir(project)
    try:
        run_class2d(RunContext(project_dir=project, job_dir=job, options=opts, is_continue=is_continue,
                               log=lines.append, warn=lines.append))
    finally:
        os.chdir(old)
    return lines
