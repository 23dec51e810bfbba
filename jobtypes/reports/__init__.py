"""Pictures of a job's results: the class gallery and the convergence plot (matplotlib).

Reports read what the job computed (class averages, per-iteration history) and never
change a result; a failing picture is a warning, not a failed job.

* :mod:`~emclass2d.jobtypes.reports.gallery`: ``class_gallery.png``, classes sorted by distribution;
* :mod:`~emclass2d.jobtypes.reports.convergence`: ``convergence.png``, per-iteration curves.
"""
