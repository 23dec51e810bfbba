"""Create a new project directory (default_pipeline.star, README.txt).

Example:
  emclass2d init                      # the working directory
  emclass2d init --project myproject  # creates myproject/ if needed
"""
from __future__ import annotations

import argparse

from emclass2d.nodes.graph.project import Project


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", nargs="?", help="project directory (default: --project, or .)")


def main(args: argparse.Namespace) -> int:
    project = Project.init(args.directory or args.project)
    print(f"new project in {project.root}")
    return 0
