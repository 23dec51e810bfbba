"""Re-run a job in place with new options (same jobNNN; its directory is emptied first).

Usage: emclass2d overwrite JOBDIR [--<option> VALUE ...] [--force] [--detach]

Example:
  emclass2d overwrite Class2D/job001/ --nr_classes 20
Refused while other jobs use its output files, unless --force.
"""
from __future__ import annotations

import argparse

from emclass2d.jobtypes._tokens import parse_job_tokens
from emclass2d.jobtypes.cmd_run import report
from emclass2d.jobtypes.manager import get_registry
from emclass2d.jobtypes.runner import RunError, launch, prepare_overwrite
from emclass2d.nodes.project import Project

ACCEPTS_JOB_OPTIONS = True


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.usage = "emclass2d overwrite JOBDIR [--<option> VALUE ...] [--force] [--detach]"
    parser.add_argument("--force", action="store_true",
                        help="overwrite even if other jobs use its outputs or it is marked Running")
    parser.add_argument("--detach", action="store_true", help="run in the background; print the job directory")


def main(args: argparse.Namespace) -> int:
    project = Project.open(args.project)
    job_dir, values = parse_job_tokens(args.job_tokens, positional="JOBDIR")
    if not job_dir:
        raise RunError("give the job directory to overwrite, e.g. Class2D/job001/")
    registry = get_registry()
    job = prepare_overwrite(project, registry, job_dir, values, args.command_line, force=args.force)
    status = launch(job, pm=registry.plugin_manager, detach=args.detach)
    return report(job.job_dir, status, args.detach)
