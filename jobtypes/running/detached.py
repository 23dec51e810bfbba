"""Background half of ``--detach``: execute a job already prepared in its directory.

The foreground command validates, creates ``<Type>/jobNNN/`` and its graph entry, then
starts ``python -m emclass2d.jobtypes.running.detached --project DIR JOBDIR`` in a new session
with stdout/stderr appended to ``run.out``/``run.err``.
"""
from __future__ import annotations

import argparse
import sys

from emclass2d.jobtypes.registry import get_registry
from emclass2d.jobtypes.running import EXIT_CODES, execute, prepare_from_job_dir
from emclass2d.nodes.graph import labels as L
from emclass2d.nodes.graph.project import Project


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emclass2d-execute")
    parser.add_argument("--project", required=True)
    parser.add_argument("--command", default="")
    parser.add_argument("job_dir")
    args = parser.parse_args(argv)
    project = Project.open(args.project)
    try:
        registry = get_registry()
        job = prepare_from_job_dir(project, registry, args.job_dir, args.command)
    except Exception as exc:  # the job never started: leave a consistent Failed job behind
        print(f"{args.job_dir}: cannot start: {type(exc).__name__}: {exc}", file=sys.stderr)
        (project.job_path(args.job_dir) / L.EXIT_FAILURE).touch()
        with project.edit() as pipe:
            project.check_completion(pipe)
        return EXIT_CODES[L.STATUS_FAILED]
    return EXIT_CODES[execute(job, pm=registry.plugin_manager, foreground=False)]


if __name__ == "__main__":
    sys.exit(main())
