"""Ask a running job to stop (it ends with status Aborted).

Example:
  emclass2d abort Class2D/job003/
"""
from __future__ import annotations

import argparse

from emclass2d.nodes.graph import labels as L
from emclass2d.nodes.graph.project import Project, ProjectError


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_dir", metavar="JOBDIR", help="job directory, e.g. Class2D/job003/")


def main(args: argparse.Namespace) -> int:
    project = Project.open(args.project)
    pipe = project.read()
    name = project.resolve_job(args.job_dir, pipe)
    status = pipe.process(name).status  # type: ignore[union-attr]
    if status != L.STATUS_RUNNING:
        raise ProjectError(f"{name} is not running (status {status})")
    (project.job_path(name) / L.ABORT_NOW).touch()
    print(f"{name}: abort requested ({L.ABORT_NOW})")
    return 0
