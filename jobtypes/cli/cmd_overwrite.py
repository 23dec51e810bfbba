"""Re-run a job in place with new options (same jobNNN; its directory is emptied first).

Usage: emclass2d overwrite JOBDIR [--<option> VALUE ...] [--force] [--detach]

Example:
  emclass2d overwrite Class2D/job001/ --nr_classes 20
Refused while other jobs use its output files, unless --force.
"""
from __future__ import annotations

import argparse

from emclass2d.jobtypes.cli.cmd_run import run_in_place
from emclass2d.jobtypes.running import prepare_overwrite

ACCEPTS_JOB_OPTIONS = True


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.usage = "emclass2d overwrite JOBDIR [--<option> VALUE ...] [--force] [--detach]"
    parser.add_argument("--force", action="store_true",
                        help="overwrite even if other jobs use its outputs or it is marked Running")
    parser.add_argument("--detach", action="store_true", help="run in the background; print the job directory")


def main(args: argparse.Namespace) -> int:
    return run_in_place(args, prepare_overwrite, "overwrite")
