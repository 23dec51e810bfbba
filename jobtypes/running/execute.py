"""Execute a prepared job: foreground or detached; new, continue, overwrite.

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

See also: :mod:`emclass2d.jobtypes.running.prepare`, :mod:`emclass2d.jobtypes.cli`, :mod:`emclass2d.nodes.graph.project`.
"""
from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Mapping
from typing import Any


from emclass2d.jobtypes.base import JobAborted, JobFailed, RunContext
from emclass2d.jobtypes.registry import PluginManager, Registry, get_registry
from emclass2d.jobtypes.running.prepare import PreparedJob, prepare_new
from emclass2d.jobtypes.running.streams import JobStreams
from emclass2d.nodes.files.output_nodes import read_output_nodes_file
from emclass2d.nodes.graph import labels as L
from emclass2d.nodes.graph.pipeline import Node
from emclass2d.nodes.graph.project import Project


log = logging.getLogger(__name__)


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
