"""The job runner: from options to a finished job directory, for every front end.

The command line, the detached background process and CCP-EM's pipeliner adapter all run
jobs through these functions, so they leave identical job directories.

* :mod:`~emclass2d.jobtypes.running.execute` validates options, prepares new, continued and
  overwritten jobs (job directory, ``job.star``, graph entry) and executes them
  (``run.out``/``run.err``, exit markers, plugin hooks, output nodes);
* :mod:`~emclass2d.jobtypes.running.streams` holds :class:`JobStreams` (the job's
  ``run.out``/``run.err`` and progress lines);
* :mod:`~emclass2d.jobtypes.running.detached` is the background half of ``--detach``
  (``python -m emclass2d.jobtypes.running.detached``).

Example::

    job = prepare_new(project, get_registry(), "emclass2d.class2d", {"fn_img": "particles.star"}, "")
    status = launch(job)          # 'Succeeded', 'Failed' or 'Aborted'
"""
