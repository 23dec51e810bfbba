"""File formats at the edge: STAR and MRC files, particle images and the particle table.

* :mod:`~emclass2d.nodes.io.star`: ``read_star``/``write_star`` (starfile, RELION's layout);
* :mod:`~emclass2d.nodes.io.mrc`: MRC stacks, including RELION's complex moment stacks;
* :mod:`~emclass2d.nodes.io.images`: ``N@stack.mrcs`` names and a memory-mapped image source;
* :mod:`~emclass2d.nodes.io.particles`: :class:`ParticleTable` (optics joined, units, CTF parameters);
* :mod:`~emclass2d.nodes.io.atomic`: write-then-rename, so a reader never sees half a file.

Example::

    table = ParticleTable.read("Extract/job012/particles.star")
    images = image_source_for(table, project_dir=".").read(np.arange(256))
"""
