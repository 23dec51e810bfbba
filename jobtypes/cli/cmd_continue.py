"""Continue a job in its own directory (RELION's Continue); only some options may change.

Usage: emclass2d continue JOBDIR [--<option> VALUE ...] [--detach] [--force]

Example:
  emclass2d continue Class2D/job001/ --fn_cont Class2D/job001/run_it025_optimiser.star --nr_iter_em 50
'emclass2d jobtypes TYPE' marks the options that may change on continue.
"""
from __future__ import annotations

import argparse

from emclass2d.jobtypes.cli.cmd_run import run_in_place
from emclass2d.jobtypes.running import prepare_continue

ACCEPTS_JOB_OPTIONS = True


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.usage = "emclass2d continue JOBDIR [--<option> VALUE ...] [--detach] [--force]"
    parser.add_argument("--detach", action="store_true", help="run in the background; print the job directory")
    parser.add_argument("--force", action="store_true", help="continue even if the job is still marked Running")


def main(args: argparse.Namespace) -> int:
    return run_in_place(args, prepare_continue, "continue")
