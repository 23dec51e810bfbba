"""The job runner: from options to a finished job directory, for every front end.

The command line, the detached background process and CCP-EM's pipeliner adapter all run
jobs through these functions, so they leave identical job directories.

* :mod:`~emclass2d.jobtypes.running.options` validates options against the job type's model;
* :mod:`~emclass2d.jobtypes.running.prepare` prepares new, continued and overwritten jobs
  (job directory, ``job.star``, graph entry) and writes nothing when a check fails;
* :mod:`~emclass2d.jobtypes.running.execute` executes them (``run.out``/``run.err``, exit
  markers, plugin hooks, output nodes), in the foreground or detached;
* :mod:`~emclass2d.jobtypes.running.streams` holds :class:`JobStreams` (the job's
  ``run.out``/``run.err`` and progress lines);
* :mod:`~emclass2d.jobtypes.running.detached` is the background half of ``--detach``
  (``python -m emclass2d.jobtypes.running.detached``).

Example::

    job = prepare_new(project, get_registry(), "emclass2d.class2d", {"fn_img": "particles.star"}, "")
    status = launch(job)          # 'Succeeded', 'Failed' or 'Aborted'
"""
from __future__ import annotations

from emclass2d.jobtypes.running.execute import execute, launch, run_new
from emclass2d.jobtypes.running.options import (EXIT_CODES, OptionsError, RunError, allowed_text, check_option_names,
                                                validate_options)
from emclass2d.jobtypes.running.prepare import (PreparedJob, input_nodes, prepare_continue, prepare_from_job_dir,
                                                prepare_new, prepare_overwrite)
from emclass2d.jobtypes.running.streams import JobStreams, format_duration

__all__ = ["EXIT_CODES", "JobStreams", "OptionsError", "PreparedJob", "RunError", "allowed_text", "check_option_names",
           "execute", "format_duration", "input_nodes", "launch", "prepare_continue", "prepare_from_job_dir",
           "prepare_new", "prepare_overwrite", "run_new", "validate_options"]
