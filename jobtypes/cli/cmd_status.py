"""List the project's jobs with their type and status.

Example:
  emclass2d status
  emclass2d status --project /data/myproject
Jobs of types emclass2d cannot run (e.g. RELION's relion.*) are listed with "(external)".
"""
from __future__ import annotations

import argparse

from emclass2d.jobtypes.registry import get_registry
from emclass2d.nodes.graph import labels as L
from emclass2d.nodes.graph.pipeline import Pipeline
from emclass2d.nodes.graph.project import Project


def add_args(parser: argparse.ArgumentParser) -> None:
    pass


def refresh(project: Project) -> Pipeline:
    """The graph, with Running jobs that have since left an exit marker brought up to date."""
    pipe = project.read()
    stale = any(p.status == L.STATUS_RUNNING and any((project.job_path(p.name) / m).exists()
                                                     for m in L.STATUS_BY_MARKER) for p in pipe.processes)
    if stale:
        with project.edit() as pipe:
            project.check_completion(pipe)
    return pipe


def main(args: argparse.Namespace) -> int:
    project = Project.open(args.project)
    pipe = refresh(project)
    registry = get_registry()
    if not pipe.processes:
        print(f"no jobs yet in {project.root}")
        return 0
    rows = [(p.name, p.alias or "", p.type_label, p.status + ("" if p.type_label in registry else "  (external)"))
            for p in pipe.processes]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row[:3], widths)) + "  " + row[3])
    return 0
