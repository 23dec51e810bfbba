"""Run a new job: TYPE and its options as --<job.star name> value (foreground unless --detach).

Usage: emclass2d run TYPE [--<option> VALUE ...] [--detach]
       emclass2d run --job-star FILE [TYPE] [--<option> VALUE ...] [--detach]

Example:
  emclass2d run emclass2d.class2d --fn_img particles.star --nr_classes 50 --do_em Yes --do_grad No
  emclass2d run --job-star Class2D/job001/job.star --nr_classes 20 --detach
The exit status is the job's: 0 Succeeded, 1 Failed, 2 Aborted (1 also for refused input).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from emclass2d.jobtypes.cli.tokens import parse_job_tokens
from emclass2d.jobtypes.registry import get_registry
from emclass2d.jobtypes.running import EXIT_CODES, PreparedJob, RunError, launch, prepare_new
from emclass2d.nodes.graph.jobstar import read_job_star
from emclass2d.nodes.graph.project import Project

ACCEPTS_JOB_OPTIONS = True


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.usage = "emclass2d run TYPE [--<option> VALUE ...] [--job-star FILE] [--detach]"
    parser.add_argument("--job-star", metavar="FILE", help="take the job type and options from a job.star")
    parser.add_argument("--detach", action="store_true", help="run in the background; print the job directory")


def report(job_dir: str, status: str, detach: bool) -> int:
    """Print the outcome line and return the exit code."""
    if detach:
        print(job_dir)
        return 0
    print(f"{job_dir}: {status}", file=sys.stdout if status == "Succeeded" else sys.stderr)
    return EXIT_CODES[status]


def main(args: argparse.Namespace) -> int:
    project = Project.open(args.project)
    job_type, values = parse_job_tokens(args.job_tokens, positional="TYPE")
    if args.job_star:
        job = read_job_star(project.path(args.job_star))
        job_type = job_type or job.process_type
        registry = get_registry()
        known = registry.get(job_type).options_model.accepted_names() if job_type in registry else job.options
        ignored = sorted(set(job.options) - set(known))
        if ignored:
            print(f"emclass2d run: warning: ignoring {args.job_star} variable(s) unknown to {job_type}: "
                  + ", ".join(ignored), file=sys.stderr)
        values = {**{k: v for k, v in job.options.items() if k in known}, **values}
    else:
        registry = get_registry()
    if not job_type:
        raise RunError("give a job type (see 'emclass2d jobtypes') or --job-star FILE")
    job = prepare_new(project, registry, job_type, values, args.command_line)
    if not args.detach:
        print(f"{job.job_dir}: running {job.job_type.process_type}", flush=True)
    status = launch(job, pm=registry.plugin_manager, detach=args.detach)
    return report(job.job_dir, status, args.detach)


def run_in_place(args: argparse.Namespace, prepare: Callable[..., PreparedJob], verb: str) -> int:
    """``continue`` and ``overwrite``: JOBDIR and options from argv, ``prepare`` it, run it."""
    project = Project.open(args.project)
    job_dir, values = parse_job_tokens(args.job_tokens, positional="JOBDIR")
    if not job_dir:
        raise RunError(f"give the job directory to {verb}, e.g. Class2D/job001/")
    registry = get_registry()
    job = prepare(project, registry, job_dir, values, args.command_line, force=args.force)
    status = launch(job, pm=registry.plugin_manager, detach=args.detach)
    return report(job.job_dir, status, args.detach)
