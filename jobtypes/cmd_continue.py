"""Continue a job in its own directory (RELION's Continue); only some options may change.

Usage: emclass2d continue JOBDIR [--<option> VALUE ...] [--detach] [--force]

Example:
  emclass2d continue Class2D/job001/ --fn_cont Class2D/job001/run_it025_optimiser.star --nr_iter_em 50
'emclass2d jobtypes TYPE' marks the options that may change on continue.
"""
from __future__ import annotations

import argparse

from emclass2d.jobtypes._tokens import parse_job_tokens
from emclass2d.jobtypes.cmd_run import report
from emclass2d.jobtypes.manager import get_registry
from emclass2d.jobtypes.runner import RunError, launch, prepare_continue
from emclass2d.nodes.project import Project

ACCEPTS_JOB_OPTIONS = True


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.usage = "emclass2d continue JOBDIR [--<option> VALUE ...] [--detach] [--force]"
    parser.add_argument("--detach", action="store_true", help="run in the background; print the job directory")
    parser.add_argument("--force", action="store_true", help="continue even if the job is still marked Running")


def main(args: argparse.Namespace) -> int:
    project = Project.open(args.project)
    job_dir, values = parse_job_tokens(args.job_tokens, positional="JOBDIR")
    if not job_dir:
        raise RunError("give the job directory to continue, e.g. Class2D/job001/")
    registry = get_registry()
    job = prepare_continue(project, registry, job_dir, values, args.command_line, force=args.force)
    status = launch(job, pm=registry.plugin_manager, detach=args.detach)
    return report(job.job_dir, status, args.detach)
