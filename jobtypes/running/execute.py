"""Running a job of a registered type in a project: new, continue, overwrite; foreground or detached.

Every run has two phases. *Prepare* validates everything first (options, input files,
the job's state) and only then, under the pipeline lock, creates or reuses
``<Type>/jobNNN/``, adds the process with status ``Running`` and its edges, writes
``job.star``, ``job_pipeline.star`` and ``note.txt`` and removes old markers; nothing is
written when a check fails. *Execute* calls ``JobType.run`` with a
:class:`~emclass2d.jobtypes.base.RunContext` (working directory = the project), writes
``RELION_JOB_EXIT_SUCCESS|FAILURE|ABORTED``, sets the status, adds the output nodes and
calls the plugins' hooks. ``--detach`` runs *execute* in a new session in the background.

Example::

    project = Project.open(".")
    status = run_new(project, "emclass2d.class2d", {"fn_img": "particles.star", "nr_classes": "4"})
    status                                                  # 'Succeeded'

See also: :mod:`emclass2d.jobtypes.cli`, :mod:`emclass2d.nodes.graph.project`.
"""
from __future__ import annotations

import difflib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from emclass2d.jobtypes.running.streams import JobStreams
from emclass2d.jobtypes.base import JobAborted, JobFailed, JobOptions, JobType, RunContext
from emclass2d.jobtypes.registry import PluginManager, Registry, get_registry
from emclass2d.nodes.graph import labels as L
from emclass2d.nodes.graph.jobstar import JobStar, read_job_star, write_job_star
from emclass2d.nodes.files.output_nodes import read_output_nodes_file
from emclass2d.nodes.graph.pipeline import Node, Pipeline, Process
from emclass2d.nodes.graph.project import Project, ProjectError
from emclass2d.nodes.io.star import StarFileError

log = logging.getLogger(__name__)

#: Process exit code for each final status (RELION's exit modes 0/1/2).
EXIT_CODES: dict[str, int] = {L.STATUS_SUCCEEDED: 0, L.STATUS_FAILED: 1, L.STATUS_ABORTED: 2}


class RunError(RuntimeError):
    """A job cannot be started as asked; the message is one line for the user."""


class OptionsError(RunError):
    """Invalid option values; the message lists every bad option, its value and what is allowed."""


# ----------------------------------------------------------------------- options

def allowed_text(info: Mapping[str, Any]) -> str:
    """What an option accepts, e.g. ``'integer >= 1'``, ``'Yes or No'``, ``'one of em, vdam'``."""
    typ = info.get("type")
    if info.get("choices"):
        return "one of " + ", ".join(map(str, info["choices"]))
    if typ is bool:
        return "Yes or No"
    words = {int: "integer", float: "number", str: "text"}.get(typ, getattr(typ, "__name__", str(typ)))
    bounds = [f"{sym} {info[key]:g}" for key, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
              if key in info]
    return " ".join([words, " and ".join(bounds)]).strip()


def check_option_names(model: type[JobOptions], names: list[str], process_type: str) -> None:
    """Refuse unknown option names, suggesting the closest valid one."""
    valid = sorted(model.accepted_names())
    bad = []
    for name in names:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            bad.append(f"--{name}" + (f" (did you mean --{close[0]}?)" if close else ""))
    if bad:
        raise OptionsError(f"unknown option(s) for {process_type}: " + ", ".join(bad)
                           + f"; 'emclass2d jobtypes {process_type}' lists them")


def validate_options(job_type: JobType, values: Mapping[str, Any], *, base: Mapping[str, str] | None = None) -> JobOptions:
    """Options model from job.star-style ``{relion name: value}`` on top of ``base``.

    Raises :class:`OptionsError` naming each unknown or invalid option, its value and
    what it accepts.
    """
    model = job_type.options_model
    check_option_names(model, list(values), job_type.process_type)
    merged = {**(base or {}), **{k: v for k, v in values.items()}}
    merged = {k: v for k, v in merged.items() if k in model.accepted_names()}
    try:
        return model.from_job_star(merged)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = err.get("loc") or ()
            name = str(loc[0]) if loc else ""
            if name in model.relion_names():
                info = model.field_info(name)
                shown = merged.get(name, info["default"])
                lines.append(f"  --{name} {shown!r}: {err['msg']} (allowed: {allowed_text(info)})")
            else:
                lines.append(f"  {err['msg']}")
        raise OptionsError(f"invalid option(s) for {job_type.process_type}:\n" + "\n".join(lines)) from None


def input_nodes(project: Project, job_type: JobType, options: JobOptions) -> list[Node]:
    """The job's input nodes with project-relative names; refuses missing files."""
    nodes = []
    for spec in job_type.input_nodes(options):
        name = project.relative(spec.name)
        if not project.path(name).exists():
            raise RunError(f"input file {spec.name} not found in {project.root}")
        nodes.append(Node(name, spec.type_label))
    return nodes


# ----------------------------------------------------------------------- prepare

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


# ----------------------------------------------------------------------- execute

class _Terminated(BaseException):
    """SIGTERM arrived: treated like an abort so the job ends with a consistent status."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated()


class _StreamsHandler(logging.Handler):
    """Routes ``logging`` records of emclass2d modules to the job's run.out / run.err."""

    def __init__(self, streams: JobStreams) -> None:
        super().__init__(logging.INFO)
        self.streams = streams

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        (self.streams.warn if record.levelno >= logging.WARNING else self.streams.log)(text)


def _notify(pm: PluginManager | None, hook: str, streams: JobStreams, **kwargs: Any) -> None:
    if pm is None:
        return
    try:
        getattr(pm.hook, hook)(**kwargs)
    except Exception as exc:  # a plugin's bug must not change the job's outcome
        streams.warn(f"plugin hook {hook} failed: {type(exc).__name__}: {exc}")


def execute(job: PreparedJob, *, pm: PluginManager | None = None, foreground: bool = True) -> str:
    """Run a prepared job to its end; returns the final status (Succeeded/Failed/Aborted).

    Never raises for a failure of the job itself: it is logged to ``run.err``, marked by
    ``RELION_JOB_EXIT_FAILURE`` and returned as ``'Failed'``.
    """
    project, job_dir = job.project, job.job_dir
    job_path = project.job_path(job_dir)
    streams = JobStreams(job_path, echo=foreground)
    abort_file = job_path / L.ABORT_NOW

    def check_abort() -> None:
        if abort_file.exists():
            raise JobAborted(f"{job_dir}: abort requested ({L.ABORT_NOW})")

    def iteration_done(iteration: int, summary: dict[str, Any]) -> None:
        _notify(pm, "emclass2d_iteration_done", streams, project_dir=project.root, job_dir=job_dir,
                process_type=job.job_type.process_type, iteration=iteration, summary=summary)

    ctx = RunContext(project_dir=project.root, job_dir=job_dir, options=job.options, is_continue=job.is_continue,
                     command_line=job.command_line, log=streams.log, warn=streams.warn,
                     progress=streams.progress, iteration_done=iteration_done, check_abort=check_abort)
    handler = _StreamsHandler(streams)
    pkg_logger = logging.getLogger("emclass2d")
    old_level = pkg_logger.level
    pkg_logger.addHandler(handler)
    pkg_logger.setLevel(logging.INFO)
    in_main = threading.current_thread() is threading.main_thread()
    old_sigterm = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    old_cwd = os.getcwd()
    message = ""
    try:
        os.chdir(project.root)
        _notify(pm, "emclass2d_job_started", streams, project_dir=project.root, job_dir=job_dir,
                process_type=job.job_type.process_type, options=job.options, is_continue=job.is_continue)
        try:
            job.job_type.run(ctx)
            status = L.STATUS_SUCCEEDED
        except JobAborted as exc:
            status, message = L.STATUS_ABORTED, str(exc) or "aborted"
        except (KeyboardInterrupt, _Terminated):
            status, message = L.STATUS_ABORTED, "interrupted"
        except JobFailed as exc:
            status, message = L.STATUS_FAILED, str(exc)
        except Exception as exc:  # the job's own bug: keep the traceback for the user
            status, message = L.STATUS_FAILED, f"{type(exc).__name__}: {exc}"
            streams.err.write(traceback.format_exc())
        if status != L.STATUS_SUCCEEDED:
            streams.warn(f"{job_dir}: {status.upper()}: {message}")
        _finish(job, status, ctx, streams)
        if status == L.STATUS_SUCCEEDED:
            streams.log(f"{job_dir}: finished successfully")
            _notify(pm, "emclass2d_job_finished", streams, project_dir=project.root, job_dir=job_dir,
                    process_type=job.job_type.process_type)
        else:
            _notify(pm, "emclass2d_job_failed", streams, project_dir=project.root, job_dir=job_dir,
                    process_type=job.job_type.process_type, status=status, message=message)
        return status
    finally:
        os.chdir(old_cwd)
        if in_main:
            signal.signal(signal.SIGTERM, old_sigterm)
        pkg_logger.removeHandler(handler)
        pkg_logger.setLevel(old_level)
        streams.close()


def _finish(job: PreparedJob, status: str, ctx: RunContext, streams: JobStreams) -> None:
    project, job_dir = job.project, job.job_dir
    job_path = project.job_path(job_dir)
    (job_path / L.MARKER_BY_STATUS[status]).touch()
    with project.edit() as pipe:
        proc = pipe.process(job_dir)
        if proc is None:  # deleted from the graph while running: nothing to update
            return
        proc.status = status
        if status == L.STATUS_SUCCEEDED:
            extra = [Node(s.name, s.type_label) for s in ctx.extra_output_nodes]
            Project.set_edges(pipe, job_dir, [], extra + read_output_nodes_file(job_path / L.OUTPUT_NODES_FILE))
            missing = [n.name for n in pipe.outputs_of(job_dir) if not project.path(n.name).exists()]
            for name in missing:
                streams.warn(f"warning: declared output node {name} does not exist")
        project.touch_node_markers(pipe, job_dir)
        project.write_job_pipeline(pipe, job_dir)


# ----------------------------------------------------------------------- entry points

def launch(job: PreparedJob, *, pm: PluginManager | None = None, detach: bool = False) -> str:
    """Execute in the foreground (returns the final status) or detached (returns ``'Running'``)."""
    if not detach:
        return execute(job, pm=pm, foreground=True)
    job_path = job.project.job_path(job.job_dir)
    argv = [sys.executable, "-m", "emclass2d.jobtypes.running.detached", "--project", str(job.project.root),
            "--command", job.command_line, job.job_dir]
    with open(job_path / L.RUN_OUT, "a") as out, open(job_path / L.RUN_ERR, "a") as err:
        subprocess.Popen(argv, cwd=job.project.root, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                         start_new_session=True, env=os.environ.copy())
    return L.STATUS_RUNNING


def run_new(project: Project, process_type: str, values: Mapping[str, Any], *, command_line: str = "",
            registry: Registry | None = None, detach: bool = False) -> str:
    """Create and run a new job; returns its final status (``'Running'`` when detached)."""
    registry = registry or get_registry()
    job = prepare_new(project, registry, process_type, values, command_line or _default_command(process_type, values))
    return launch(job, pm=registry.plugin_manager, detach=detach)


def _default_command(process_type: str, values: Mapping[str, Any]) -> str:
    parts = ["emclass2d", "run", process_type]
    for k, v in values.items():
        parts += [f"--{k}", str(v)]
    return shlex.join(parts)
