"""Run a job that CCP-EM's pipeliner has set up: ``python -m emclass2d.jobtypes.ccpem.exec JOBDIR``.

The pipeliner has already created ``JOBDIR``, written its ``job.star`` and put the job in
the project graph; its job runner starts this command in the project directory, appends
our stdout/stderr to ``run.out``/``run.err``, writes ``PIPELINER_JOB_EXIT_*`` from our
exit status and updates the graph. So this runs the job type's ``run()`` exactly as
``emclass2d run`` does (same context, plugin hooks, ``RELION_JOB_EXIT_*`` markers for
RELION's GUI) but never writes ``default_pipeline.star``, the job's ``job_pipeline.star``
or ``.Nodes``: outputs found at run time go to ``RELION_OUTPUT_NODES.star``, which the
pipeliner (``create_post_run_output_nodes``) and RELION both read.

Exit status: 0 succeeded, 1 failed, 2 aborted.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

from emclass2d.nodes.files.output_nodes import write_output_nodes_file
from emclass2d.jobtypes.registry import get_registry
from emclass2d.jobtypes.running import EXIT_CODES, execute, prepare_from_job_dir
from emclass2d.nodes.graph import labels as L
from emclass2d.nodes.graph.pipeline import Node, Pipeline, Process
from emclass2d.nodes.graph.project import Project


class FrameworkProject(Project):
    """A project whose graph belongs to another framework: edits go to an in-memory
    pipeline holding just this job, and nothing graph-related is written to disk."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        super().__init__(root)
        self.pipeline = Pipeline()

    def read(self) -> Pipeline:
        return self.pipeline

    @contextlib.contextmanager
    def edit(self) -> Iterator[Pipeline]:
        yield self.pipeline

    def write_job_pipeline(self, pipe: Pipeline, job_name: str) -> None:
        """The framework writes ``job_pipeline.star``."""

    def copy_pipeline_to(self, job_name: str) -> None:
        """The framework keeps its own copies of the pipeline."""

    def touch_node_markers(self, pipe: Pipeline, job_name: str) -> list[Path]:
        """The framework touches ``.Nodes`` when it marks the job finished."""
        return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emclass2d.jobtypes.ccpem.exec",
                                     description="Run a job prepared by CCP-EM's pipeliner in its directory.")
    parser.add_argument("job_dir", help="job directory relative to the project, e.g. Class2D/job003/")
    parser.add_argument("--project", default=".", help="project directory (default: the working directory)")
    args = parser.parse_args(argv)
    project = FrameworkProject(args.project)
    job_dir = project.relative(args.job_dir).rstrip("/") + "/"
    job_path = project.job_path(job_dir)
    if not job_path.is_dir():
        print(f"{job_dir}: no such job directory in {project.root}", file=sys.stderr)
        return EXIT_CODES[L.STATUS_FAILED]
    for marker in L.LAUNCH_MARKERS:
        (job_path / marker).unlink(missing_ok=True)
    output_nodes_file = job_path / L.OUTPUT_NODES_FILE
    output_nodes_file.unlink(missing_ok=True)
    command_line = shlex.join([os.path.basename(sys.executable), "-m", __spec__.name if __spec__ else __name__,
                               job_dir])
    try:
        registry = get_registry()
        job = prepare_from_job_dir(project, registry, job_dir, command_line)
    except Exception as exc:  # the job never started: leave RELION's failure marker too
        print(f"{job_dir}: cannot start: {type(exc).__name__}: {exc}", file=sys.stderr)
        (job_path / L.EXIT_FAILURE).touch()
        return EXIT_CODES[L.STATUS_FAILED]
    declared = [Node(s.name, s.type_label) for s in job.job_type.output_nodes(job.options, job_dir)]
    project.pipeline.add_process(Process(job_dir, job.job_type.process_type, L.STATUS_RUNNING))
    for node in declared:
        project.pipeline.add_output(node, job_dir)
    status = execute(job, pm=registry.plugin_manager, foreground=False)
    if status == L.STATUS_SUCCEEDED:
        declared_names = {n.name for n in declared}
        found = [n for n in project.pipeline.outputs_of(job_dir)
                 if n.name not in declared_names and project.path(n.name).exists()]
        write_output_nodes_file(output_nodes_file, found)
    return EXIT_CODES[status]


if __name__ == "__main__":
    sys.exit(main())
