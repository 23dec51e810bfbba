"""Everything that is a file in a project: formats, the graph, and the files jobs write.

No numerics beyond dtype casts. Three packages:

* :mod:`.io`: STAR and MRC files, particle images (``N@stack.mrcs``, memory-mapped) and
  the particle table (:class:`~emclass2d.nodes.io.particles.ParticleTable`), atomic writes;
* :mod:`.graph`: RELION's pipeline vocabulary (:mod:`~emclass2d.nodes.graph.labels`),
  ``default_pipeline.star``, the project and its job directories, the lock, ``job.star``;
* :mod:`.files`: the files of a Class2D iteration (schemas, the core's Model ↔ model.star
  tables, writers, the only iteration reader, names) and ``RELION_OUTPUT_NODES.star``.

Example::

    project = Project.open(".")
    it = read_class2d_iteration("Class2D/job013/run_it025_optimiser.star", project.root)
"""
