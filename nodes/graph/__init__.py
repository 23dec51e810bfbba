"""The project graph: RELION's pipeline vocabulary, ``default_pipeline.star``, jobs and locks.

* :mod:`~emclass2d.nodes.graph.labels`: every label, node type, status and marker string;
* :mod:`~emclass2d.nodes.graph.pipeline`: processes, nodes and edges; one reader, one writer;
* :mod:`~emclass2d.nodes.graph.project`: the project root, job directories, edits under lock;
* :mod:`~emclass2d.nodes.graph.lock`: RELION's ``.relion_lock`` directory lock;
* :mod:`~emclass2d.nodes.graph.jobstar`: ``job.star`` (and the old ``run.job``).

Example::

    project = Project.open(".")
    with project.edit() as pipe:
        project.check_completion(pipe)
"""
