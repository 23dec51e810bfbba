"""The files jobs write and read: Class2D's iteration files and the run-time output nodes.

* :mod:`~emclass2d.nodes.files.class2d`: schemas of the model, data, optimiser and sampling
  STAR files, the writers, and the only reader of a Class2D iteration;
* :mod:`~emclass2d.nodes.files.output_nodes`: ``RELION_OUTPUT_NODES.star``, outputs a job
  declares while it runs.
"""
