"""Read one Class2D iteration (ours or RELION's) for selection: optimiser, model, data, averages.

Follows the optimiser.star the way RELION's class ranker does (``ClassRanker::read``): the model and
data files come from rlnModelStarFile and rlnExperimentalDataStarFile, paths relative to
the project directory. Every problem is a :class:`Class2DInputError` naming the file and
the label.

Example::

    it = read_selection_input("Class2D/job013/run_it025_optimiser.star", project_dir=".")
    it.averages.shape, it.class_distribution, it.particle_counts   # (K, N, N), (K,), (K,)

See also: :mod:`emclass2d.jobtypes.select.run`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emclass2d.core.selection import count_particles
from emclass2d.nodes.files import class2d as c2f
from emclass2d.nodes.graph.labels import parse_flag
from emclass2d.nodes.io.star import StarFileError


class Class2DInputError(ValueError):
    """The Class2D iteration cannot be used for selection (message names file and label)."""


@dataclass
class SelectionInput:
    """One Class2D iteration as selection sees it (arrays indexed by class k = number−1).

    ``iteration`` is what :func:`emclass2d.nodes.files.class2d.read_class2d_iteration` read;
    the rest is checked and derived here.
    """

    iteration: c2f.Class2DIteration = field(repr=False)
    optimiser_path: str  #: as given (project-relative or absolute)
    averages: np.ndarray  #: (K, N, N) float32 class averages
    pixel_size_A: float
    particle_diameter_A: float
    do_correct_ctf: bool
    intact_first_peak: bool

    @property
    def optimiser_general(self) -> dict[str, Any]:
        return self.iteration.optimiser.general

    @property
    def model_path(self) -> str:
        return str(self.iteration.model.path)

    @property
    def data_path(self) -> str:
        return str(self.iteration.data.source)

    @property
    def classes(self) -> pd.DataFrame:
        """data_model_classes."""
        return self.iteration.model.classes

    @property
    def groups(self) -> pd.DataFrame:
        """data_model_groups."""
        return self.iteration.model.groups

    @property
    def particles(self) -> pd.DataFrame:
        return self.iteration.data.particles

    @property
    def optics(self) -> pd.DataFrame:
        return self.iteration.data.optics

    @property
    def nr_classes(self) -> int:
        return len(self.classes)

    @property
    def box_px(self) -> int:
        return int(self.averages.shape[-1])

    @property
    def class_distribution(self) -> np.ndarray:
        return self.classes["rlnClassDistribution"].to_numpy(dtype=np.float64)

    @property
    def particle_counts(self) -> np.ndarray:
        return count_particles(self.particles["rlnClassNumber"].to_numpy(), self.nr_classes)

    def class_table(self, k: int) -> pd.DataFrame | None:
        """``data_model_class_<k+1>`` (SSNR per shell) if present."""
        spectra = self.iteration.model.class_spectra
        return spectra[k] if 0 <= k < len(spectra) else None

    def sigma2_noise(self, optics_group: int = 1) -> np.ndarray | None:
        """rlnSigma2Noise per shell of an optics group (missing shells = 0), or None."""
        return self.iteration.sigma2_noise(self.box_px, optics_group)

    def ctf_parameters(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """CTF parameters of particle rows ``rows`` (see :meth:`ParticleTable.ctf_parameters`)."""
        return self.iteration.data.ctf_parameters(rows)


def read_selection_input(optimiser_star: str | os.PathLike[str], project_dir: str | os.PathLike[str] = ".") -> SelectionInput:
    """Read an optimiser.star and what it points to; refuses 3D runs and unreadable files.

    The files are read by :func:`emclass2d.nodes.files.class2d.read_class2d_iteration`;
    this adds the checks and the per-class view that selection needs.
    """
    project_dir = Path(project_dir)
    opt_name = str(optimiser_star)
    if re.search(r"(^|/)(Class3D|Refine3D|InitialModel|MultiBody)/", opt_name):
        raise Class2DInputError(f"{opt_name}: is the optimiser of a 3D job; select classes from a Class2D job")
    opt_path = Path(opt_name) if Path(opt_name).is_absolute() else project_dir / opt_name
    if not opt_path.is_file():
        raise Class2DInputError(f"fn_model: {opt_name} does not exist")
    try:
        it = c2f.read_class2d_iteration(opt_path, project_dir)
    except (StarFileError, ValueError) as exc:
        raise Class2DInputError(str(exc)) from exc
    general = it.optimiser.general
    mgen = it.model.general
    model_path = it.model.path
    dim = int(float(mgen.get("rlnReferenceDimensionality", 2)))
    if dim != 2:
        raise Class2DInputError(
            f"{model_path}: _rlnReferenceDimensionality is {dim}: this is a 3D run (Class3D/Refine3D); "
            "select classes from a Class2D job")
    classes = it.model.classes
    for label in ("rlnReferenceImage", "rlnClassDistribution"):
        if label not in classes:
            raise Class2DInputError(f"{model_path}: data_model_classes lacks _{label}")
    particles, optics = it.data.particles, it.data.optics
    if not (particles["rlnClassNumber"].to_numpy() > 0).any():
        raise Class2DInputError(f"{it.data.source}: no particle has an _rlnClassNumber; expected a Class2D data.star")
    try:
        averages = it.read_reference_images()
    except (StarFileError, ValueError) as exc:
        raise Class2DInputError(str(exc)) from exc
    px = float(mgen.get("rlnPixelSize", 0) or 0)
    if px <= 0 and "rlnImagePixelSize" in optics:
        px = float(optics["rlnImagePixelSize"].iloc[0])
    if px <= 0:
        raise Class2DInputError(f"{model_path}: _rlnPixelSize missing or not positive")
    diameter = float(general.get("rlnParticleDiameter", -1) or -1)
    if diameter <= 0:
        diameter = averages.shape[-1] * px  # RELION's default mask: the whole box
    return SelectionInput(
        iteration=it, optimiser_path=opt_name, averages=averages, pixel_size_A=px, particle_diameter_A=diameter,
        do_correct_ctf=parse_flag(general.get("rlnDoCorrectCtf", 0)),
        intact_first_peak=parse_flag(general.get("rlnDoIgnoreCtfUntilFirstPeak", 0)))
