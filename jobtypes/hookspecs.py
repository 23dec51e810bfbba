"""The emclass2d plugin hooks: the contract between the host and every plugin.

Two kinds of hook: one through which plugins *provide* job types (our own Class2D and
Select use it exactly as a third party does), and notifications *around execution* that
a plugin may implement to follow jobs (dashboards, notifications, bookkeeping). All are
prefixed ``emclass2d_``; none is ``firstresult``: every implementation is called and the
notifications' return values are ignored. A notification that raises is reported in the
job's ``run.err`` and does not stop the job.

Example (a plugin module)::

    from emclass2d.jobtypes import hookimpl

    @hookimpl
    def emclass2d_iteration_done(job_dir, iteration, summary):
        print(job_dir, iteration, summary.get("log_likelihood"))

See also: :mod:`emclass2d.jobtypes` (plugin tutorial), :mod:`emclass2d.jobtypes.registry`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from emclass2d.jobtypes.base import JobOptions, JobType

#: The pluggy project name: entry-point group and hook marker name.
PROJECT_NAME = "emclass2d"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# --------------------------------------------------------------------- registration

@hookspec
def emclass2d_register_job_types() -> list[type[JobType]]:
    """Return the job-type classes this plugin provides (subclasses of ``JobType``).

    Called once each time a registry is built (:func:`~emclass2d.jobtypes.registry.get_registry`).
    Each class needs a ``process_type`` of the form ``<package>.<job>`` (not ``relion.*``),
    a ``directory`` and an ``options_model``; a class failing these checks, or whose label
    another plugin already registered, is listed as unavailable with the reason. Not
    firstresult: the lists of all plugins are combined.
    """


# --------------------------------------------------------------------- execution

@hookspec
def emclass2d_job_started(project_dir: Path, job_dir: str, process_type: str,
                          options: JobOptions, is_continue: bool) -> None:
    """Called when a job starts, after its directory, ``job.star`` and graph entry exist and
    just before ``JobType.run``. ``job_dir`` is project-relative (``Class2D/job013/``).
    Return nothing. Not firstresult.
    """


@hookspec
def emclass2d_iteration_done(project_dir: Path, job_dir: str, process_type: str,
                             iteration: int, summary: dict[str, Any]) -> None:
    """Called each time a running job reports a finished iteration (``ctx.iteration_done``).

    ``summary`` is the job's dict for that iteration (for Class2D e.g. log-likelihood,
    class distribution, resolution); treat it as read-only. Return nothing. Not firstresult.
    """


@hookspec
def emclass2d_job_finished(project_dir: Path, job_dir: str, process_type: str) -> None:
    """Called when a job has succeeded: ``RELION_JOB_EXIT_SUCCESS`` is written, the status
    is ``Succeeded`` and its output nodes are in the graph. Return nothing. Not firstresult.
    """


@hookspec
def emclass2d_job_failed(project_dir: Path, job_dir: str, process_type: str,
                         status: str, message: str) -> None:
    """Called when a job has ended without success; ``status`` is ``Failed`` or ``Aborted``
    (the matching ``RELION_JOB_EXIT_*`` marker is written and the graph updated).
    ``message`` is the error shown to the user. Return nothing. Not firstresult.
    """
