"""The STAR files of one Class2D iteration, label for label as RELION 5 writes them.

Per iteration ``it`` and output root (``Class2D/job013/run``) a run writes
``run_itNNN_optimiser.star``, ``_model.star``, ``_data.star``, ``_sampling.star`` and
``_classes.mrcs`` (RELION's ``MlOptimiser::write``). This package holds, one concern a module:

* :mod:`.schemas`: the label schemas (order, RELION type, default) of every block;
* :mod:`.tables`: builders that apply them (so :func:`~emclass2d.nodes.io.star.write_star`
  formats INT, DOUBLE, BOOL and STRING values as RELION does);
* :mod:`.model_tables`: the core's Model and the model.star tables, both ways;
* :mod:`.writers`: the files of one iteration;
* :mod:`.reader`: the only reader of an iteration;
* :mod:`.naming`: ``run_it025``, continue roots ``run_ct25``, the newest optimiser.

Everything public is importable from the package itself.

Units follow RELION's files, not the label descriptions:
rlnCurrentResolution is in Å, rlnBestResolutionThusFar in 1/Å, rlnSigma2Noise is a
variance per real/imaginary component, rlnClassPriorOffsetX/Y are Å times the class
fraction, rlnChangesOptimalClasses is a fraction.

Example::

    general = optimiser_general_block(rlnOutputRootName="Class2D/job013/run", ...)
    write_optimiser_star("Class2D/job013/run_it025_optimiser.star", general, "--o Class2D/job013/run ...")
    it = read_class2d_iteration("Class2D/job013/run_it025_optimiser.star", project_dir=".")
    it.model.pdf_class, it.data.n_particles, it.classes_path

See also: :mod:`emclass2d.nodes.io.particles`, :mod:`emclass2d.nodes.io.mrc`.
"""
from __future__ import annotations

from emclass2d.nodes.files.class2d.schemas import (BOOL, DOUBLE, INT, MODEL_CLASSES, MODEL_CLASS_SPECTRUM,
                                                   MODEL_GENERAL, MODEL_GROUPS, MODEL_OPTICS_NOISE, OMIT,
                                                   OPTIMISER_GENERAL, REQUIRED, SAMPLING_GENERAL, STRING, Schema,
                                                   cast_value, list_block, loop_block)
from emclass2d.nodes.files.class2d.tables import (class_image_name, class_spectrum_table, classes_table, groups_table,
                                                  model_general_block, model_star_blocks, optics_noise_table,
                                                  optimiser_general_block, sampling_general_block, shell_resolution)
from emclass2d.nodes.files.class2d.model_tables import model_from_iteration, model_star_tables
from emclass2d.nodes.files.class2d.naming import (IterationFiles, continue_root, find_latest_optimiser,
                                                  iteration_root, parse_optimiser_name)
from emclass2d.nodes.files.class2d.reader import (Class2DIteration, ModelStar, OptimiserStar, read_class2d_iteration,
                                                  read_model_star, read_optimiser_star, read_sampling_star)
from emclass2d.nodes.files.class2d.writers import (optimiser_header, package_version, write_data_star,
                                                   write_iteration, write_model_star, write_optimiser_star,
                                                   write_sampling_star)

__all__ = ["INT", "DOUBLE", "BOOL", "STRING", "REQUIRED", "OMIT", "Schema", "OPTIMISER_GENERAL", "MODEL_GENERAL", "MODEL_CLASSES", "MODEL_CLASS_SPECTRUM", "MODEL_GROUPS", "MODEL_OPTICS_NOISE", "SAMPLING_GENERAL", "cast_value", "list_block", "loop_block", "optimiser_general_block", "model_general_block", "sampling_general_block", "class_image_name", "classes_table", "shell_resolution", "class_spectrum_table", "groups_table", "optics_noise_table", "model_star_blocks", "model_star_tables", "model_from_iteration", "iteration_root", "continue_root", "parse_optimiser_name", "find_latest_optimiser", "IterationFiles", "OptimiserStar", "ModelStar", "read_optimiser_star", "read_model_star", "read_sampling_star", "Class2DIteration", "read_class2d_iteration", "package_version", "optimiser_header", "write_optimiser_star", "write_model_star", "write_data_star", "write_sampling_star", "write_iteration"]
