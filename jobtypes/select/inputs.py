"""Read one Class2D iteration (ours or RELION's) for selection: optimiser, model, data, averages.

Follows the optimiser.star the way RELION's class ranker does (facts 5.1): the model and
data files come from rlnModelStarFile and rlnExperimentalDataStarFile, paths relative to
the project directory. Every problem is a :class:`Class2DInputError` naming the file and
the label.

Example::

    it = read_class2d_iteration("Class2D/job013/run_it025_optimiser.star", project_dir=".")
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
from emclass2d.nodes.mrc import MrcFileError, read_mrcs
from emclass2d.nodes import class2d_files as c2f
from emclass2d.nodes.star import StarFileError

_IMAGE_RE = re.compile(r"^\s*(\d+)@(.+?)\s*$")


class Class2DInputError(ValueError):
    """The Class2D iteration cannot be used for selection (message names file and label)."""


@dataclass
class Class2DIteration:
    """What selection needs from one Class2D iteration (arrays indexed by class k = number−1)."""

    optimiser_path: str
    optimiser_general: dict[str, Any]
    model_path: str
    data_path: str
    model_blocks: dict[str, Any]
    optics: pd.DataFrame
    particles: pd.DataFrame
    averages: np.ndarray  #: (K, N, N) float32 class averages
    pixel_size_A: float
    particle_diameter_A: float
    do_correct_ctf: bool
    intact_first_peak: bool
    classes: pd.DataFrame = field(repr=False)  #: data_model_classes

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
        block = self.model_blocks.get(f"model_class_{k + 1}")
        return block if isinstance(block, pd.DataFrame) else None

    def sigma2_noise(self, optics_group: int = 1) -> np.ndarray | None:
        """rlnSigma2Noise per shell of an optics group (missing shells = 0), or None."""
        block = self.model_blocks.get(f"model_optics_group_{optics_group}")
        if not isinstance(block, pd.DataFrame) or "rlnSigma2Noise" not in block:
            return None
        out = np.zeros(self.box_px // 2 + 1)
        idx = block["rlnSpectralIndex"].to_numpy(dtype=int)
        ok = idx < out.size
        out[idx[ok]] = block["rlnSigma2Noise"].to_numpy(dtype=np.float64)[ok]
        return out


def _flag(general: dict[str, Any], label: str) -> bool:
    v = general.get(label, 0)
    try:
        return bool(int(float(v)))
    except (TypeError, ValueError):
        return str(v).strip().lower() in ("true", "yes")


def read_class2d_iteration(optimiser_star: str | os.PathLike[str], project_dir: str | os.PathLike[str] = ".") -> Class2DIteration:
    """Read an optimiser.star and what it points to; refuses 3D runs and unreadable files.

    The files are read by :func:`emclass2d.nodes.class2d_files.read_class2d_iteration`;
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
    data_path = it.data.source
    if not (particles["rlnClassNumber"].to_numpy() > 0).any():
        raise Class2DInputError(f"{data_path}: no particle has an _rlnClassNumber; expected a Class2D data.star")

    averages = _read_references(classes["rlnReferenceImage"].tolist(), model_path, project_dir)
    px = float(mgen.get("rlnPixelSize", 0) or 0)
    if px <= 0 and "rlnImagePixelSize" in optics:
        px = float(optics["rlnImagePixelSize"].iloc[0])
    if px <= 0:
        raise Class2DInputError(f"{model_path}: _rlnPixelSize missing or not positive")
    diameter = float(general.get("rlnParticleDiameter", -1) or -1)
    if diameter <= 0:
        diameter = averages.shape[-1] * px  # RELION's default mask: the whole box
    return Class2DIteration(
        optimiser_path=opt_name, optimiser_general=general, model_path=str(model_path), data_path=str(data_path),
        model_blocks=it.model.blocks(), optics=optics, particles=particles, averages=averages, pixel_size_A=px,
        particle_diameter_A=diameter, do_correct_ctf=_flag(general, "rlnDoCorrectCtf"),
        intact_first_peak=_flag(general, "rlnDoIgnoreCtfUntilFirstPeak"), classes=classes)


def _read_references(names: list[str], model_path: Path, project_dir: Path) -> np.ndarray:
    stacks: dict[str, np.ndarray] = {}
    out = []
    for row, name in enumerate(names, start=1):
        m = _IMAGE_RE.match(str(name))
        index, fname = (int(m.group(1)), m.group(2)) if m else (1, str(name).strip())
        if fname not in stacks:
            path = Path(fname) if Path(fname).is_absolute() else project_dir / fname
            try:
                stacks[fname] = read_mrcs(path)[0]
            except MrcFileError as exc:
                raise Class2DInputError(f"{model_path}: _rlnReferenceImage of class {row} ({name}): {exc}") from exc
        stack = stacks[fname]
        if not 1 <= index <= len(stack):
            raise Class2DInputError(
                f"{model_path}: _rlnReferenceImage of class {row} ({name}) asks for image {index} of a stack of {len(stack)}")
        out.append(stack[index - 1])
    return np.stack(out).astype(np.float32)
