"""Prepare a job to run: validate everything, then create or reuse its directory and graph entry.

*Prepare* validates everything first (options, input files, the job's state) and only
then, under the pipeline lock, creates or reuses ``<Type>/jobNNN/``, adds the process
with status ``Running`` and its edges, writes ``job.star``, ``job_pipeline.star`` and
``note.txt`` and removes old markers; nothing is written when a check fails.

Example::

    job = prepare_new(project, get_registry(), "emclass2d.class2d", {"fn_img": "particles.star"}, "")
"""
from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


from emclass2d.jobtypes.base import JobOptions, JobType
from emclass2d.jobtypes.registry import Registry
from emclass2d.jobtypes.running.options import RunError, check_option_names, validate_options
from emclass2d.nodes.graph import labels as L
from emclass2d.nodes.graph.jobstar import JobStar, read_job_star, write_job_star
from emclass2d.nodes.graph.pipeline import Node, Pipeline, Process
from emclass2d.nodes.graph.project import Project, ProjectError
from emclass2d.nodes.io.star import StarFileError


def input_nodes(project: Project, job_type: JobType, options: JobOptions) -> list[Node]:
    """The job's input nodes with project-relative names; refuses missing files."""
    nodes = []
    for spec in job_type.input_nodes(options):
        name = project.relative(spec.name)
        if not project.path(name).exists():
            raise RunError(f"input file {spec.name} not found in {project.root}")
        nodes.append(Node(name, spec.type_label))
    return nodes


@dataclass
class PreparedJob:
    """A job ready to execute: its directory exists and its graph entry says Running."""

    project: Project
    job_type: JobType
    job_dir: str
    options: JobOptions
    is_continue: bool
    command_line: str


def _write_launch_files(project: Project, job_dir: str, job_type: JobType, options: JobOptions,
                        is_continue: bool, command_line: str) -> None:
    path = project.job_path(job_dir)
    path.mkdir(parents=True, exist_ok=True)
    write_job_star(path / L.JOB_STAR_FILE, JobStar(job_type.process_type, options.to_job_star(), is_continue))
    stamp = time.ctime()
    with open(path / L.NOTE_FILE, "a") as fh:
        fh.write(f"\n ++++ Executing new job on {stamp}\n ++++ with the following command(s): \n"
                 f"{command_line}\n ++++ \n")
    for marker in L.LAUNCH_MARKERS:
        (path / marker).unlink(missing_ok=True)


def _output_nodes(job_type: JobType, options: JobOptions, job_dir: str) -> list[Node]:
    return [Node(spec.name, spec.type_label) for spec in job_type.output_nodes(options, job_dir)]


def prepare_new(project: Project, registry: Registry, process_type: str, values: Mapping[str, Any],
                command_line: str = "") -> PreparedJob:
    """Validate and set up a new job ``<Type>/jobNNN/``; raises :class:`RunError` first if anything is wrong."""
    try:
        job_type = registry.get(process_type)
    except KeyError as exc:
        raise RunError(str(exc)) from None
    options = validate_options(job_type, values)
    inputs = input_nodes(project, job_type, options)
    with project.edit() as pipe:
        job_dir = project.new_job_name(pipe, job_type.directory)
        outputs = _output_nodes(job_type, options, job_dir)
        project.add_job(pipe, job_type.directory, job_type.process_type, inputs=inputs, outputs=outputs)
        _write_launch_files(project, job_dir, job_type, options, False, command_line)
    project.copy_pipeline_to(job_dir)
    return PreparedJob(project, job_type, job_dir, options, False, command_line)


def _existing_job(project: Project, registry: Registry, job_text: str, force: bool, verb: str
                  ) -> tuple[Pipeline, Process, JobType, dict[str, str]]:
    pipe = project.read()
    try:
        name = project.resolve_job(job_text, pipe)
    except ProjectError as exc:
        raise RunError(str(exc)) from None
    proc = pipe.process(name)
    assert proc is not None
    if proc.type_label not in registry:
        raise RunError(f"{name} is a {proc.type_label} job; emclass2d lists such jobs but does not run them "
                       f"(runnable: {', '.join(registry.labels()) or 'none'})")
    if proc.status == L.STATUS_RUNNING and not force:
        raise RunError(f"{name} is still Running; abort it first ('emclass2d abort {name}'), "
                       f"or use --force if its process is gone")
    try:
        old = read_job_star(project.job_path(name) / L.JOB_STAR_FILE).options
    except StarFileError as exc:
        raise RunError(f"cannot {verb} {name}: {exc}") from None
    return pipe, proc, registry.get(proc.type_label), old


def prepare_continue(project: Project, registry: Registry, job_text: str, values: Mapping[str, Any],
                     command_line: str = "", *, force: bool = False) -> PreparedJob:
    """Validate and set up continuing a job in its own directory (RELION's Continue).

    Only options declared ``in_continue`` may change; the job type's ``continue_option``
    (e.g. ``fn_cont``) must be given.
    """
    _, proc, job_type, old = _existing_job(project, registry, job_text, force, "continue")
    name = proc.name
    if not job_type.can_continue:
        raise RunError(f"{name}: job type {job_type.process_type} cannot be continued; use 'emclass2d overwrite'")
    model = job_type.options_model
    check_option_names(model, list(values), job_type.process_type)
    old_options = validate_options(job_type, {}, base=old)
    options = validate_options(job_type, values, base=old)
    refused = []
    for relion_name, field_name in model.relion_names().items():
        before, after = getattr(old_options, field_name), getattr(options, field_name)
        info = model.field_info(relion_name)
        if before != after and not info.get("in_continue") and relion_name != job_type.continue_option:
            refused.append(f"--{relion_name} (was {before!r}, given {values.get(relion_name)!r})")
    if refused:
        may = [n for n in model.relion_names() if model.field_info(n).get("in_continue") or n == job_type.continue_option]
        raise RunError(f"{name}: option(s) cannot change on continue: {', '.join(refused)}; "
                       f"options that may change: {', '.join('--' + n for n in may) or 'none'}")
    if job_type.continue_option:
        given = str(values.get(job_type.continue_option, "") or "")
        if not given:
            raise RunError(f"{name}: continuing needs --{job_type.continue_option} (the file to continue from)")
        if not project.path(project.relative(given)).exists():
            raise RunError(f"--{job_type.continue_option}: file {given} not found in {project.root}")
    with project.edit() as pipe:
        proc = pipe.process(name)
        if proc is None:
            raise RunError(f"{name} disappeared from {project.pipeline_path}")
        proc.status = L.STATUS_RUNNING
        # As RELION for refine-type jobs: declared outputs not written drop out, new ones come in.
        for node in pipe.outputs_of(name):
            if not project.path(node.name).exists():
                pipe.remove_output(name, node.name)
        Project.set_edges(pipe, name, [], _output_nodes(job_type, options, name))
        project.write_job_pipeline(pipe, name)
        _write_launch_files(project, name, job_type, options, True, command_line)
    project.copy_pipeline_to(name)
    return PreparedJob(project, job_type, name, options, True, command_line)


def prepare_overwrite(project: Project, registry: Registry, job_text: str, values: Mapping[str, Any],
                      command_line: str = "", *, force: bool = False) -> PreparedJob:
    """Validate and set up re-running a job in place with new options (same jobNNN, same
    place in the graph, directory emptied). Refused while other jobs read its outputs,
    unless ``force``."""
    pipe, proc, job_type, old = _existing_job(project, registry, job_text, force, "overwrite")
    name = proc.name
    consumers = pipe.consumers_of(name)
    if consumers and not force:
        raise RunError(f"{name}: its output is used by {', '.join(consumers)}; use --force to overwrite anyway")
    options = validate_options(job_type, values, base=old)
    inputs = input_nodes(project, job_type, options)
    job_path = project.job_path(name)
    # Move the old contents aside in one rename, so an interruption leaves either the old
    # directory or a fresh one; the old contents are deleted after the graph is written.
    trash = job_path.with_name(f".{job_path.name}.overwritten.{uuid.uuid4().hex[:8]}")
    with project.edit() as pipe:
        proc = pipe.process(name)
        if proc is None:
            raise RunError(f"{name} disappeared from {project.pipeline_path}")
        project.remove_node_markers(pipe, name)
        pipe.clear_edges_of(name)
        proc.status = L.STATUS_RUNNING
        Project.set_edges(pipe, name, inputs, _output_nodes(job_type, options, name))
        if job_path.exists():
            os.rename(job_path, trash)
        job_path.mkdir(parents=True)
        project.write_job_pipeline(pipe, name)
        _write_launch_files(project, name, job_type, options, False, command_line)
    shutil.rmtree(trash, ignore_errors=True)
    project.copy_pipeline_to(name)
    return PreparedJob(project, job_type, name, options, False, command_line)


def prepare_from_job_dir(project: Project, registry: Registry, job_dir: str, command_line: str = "") -> PreparedJob:
    """A prepared job rebuilt from its ``job.star`` (the detached child's starting point)."""
    job = read_job_star(project.job_path(job_dir) / L.JOB_STAR_FILE)
    job_type = registry.get(job.process_type)
    options = validate_options(job_type, {}, base=job.options)
    return PreparedJob(project, job_type, job_dir, options, job.is_continue, command_line)
