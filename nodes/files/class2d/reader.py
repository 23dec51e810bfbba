"""Read a Class2D iteration (ours or RELION's): optimiser, model, data and sampling STAR files.

The only reader of an iteration: every consumer (continue, Select, ``emclass2d classes``,
CCP-EM's results display) goes through :func:`read_class2d_iteration`. Labels RELION reads
with a default get that default when absent; every problem is a
:class:`~emclass2d.nodes.io.star.StarFileError` naming the file and the label.

Example::

    it = read_class2d_iteration("Class2D/job013/run_it025_optimiser.star", project_dir=".")
    it.model.pdf_class, it.data.n_particles, it.classes_path, it.read_reference_images()
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emclass2d.nodes.files.class2d.schemas import (MODEL_CLASS_SPECTRUM, MODEL_CLASSES, MODEL_GENERAL, MODEL_GROUPS,
                                                   MODEL_OPTICS_NOISE, OPTIMISER_GENERAL, SAMPLING_GENERAL, Schema,
                                                   list_block, loop_block)
from emclass2d.nodes.files.class2d.tables import model_star_blocks
from emclass2d.nodes.io.images import parse_image_name
from emclass2d.nodes.io.particles import ParticleTable, resolve_in_project
from emclass2d.nodes.io.star import DataBlock, StarFileError, read_star


@dataclass
class OptimiserStar:
    """A parsed optimiser.star: typed general block and the command line (comment line 2)."""

    general: dict[str, Any]
    command_line: str
    header: str  #: comment line 1 as written (RELION or emclass2d version)
    path: Path

    @property
    def iteration(self) -> int:
        return int(self.general["rlnCurrentIteration"])

    @property
    def output_root(self) -> str:
        return str(self.general["rlnOutputRootName"])


@dataclass
class ModelStar:
    """A parsed model.star (typed).

    general: data_model_general; classes: data_model_classes; class_spectra: one table per
    class (data_model_class_k); groups: data_model_groups; optics_noise: one table per
    optics group. Files from RELION < 4 have per-group noise (data_model_group_N) instead:
    ``pre4`` is True, ``group_noise`` holds those tables and every optics group gets
    their shell-wise mean (the mapping from scale to optics groups is not in the file).
    """

    general: dict[str, Any]
    classes: pd.DataFrame
    class_spectra: list[pd.DataFrame]
    groups: pd.DataFrame
    optics_noise: list[pd.DataFrame]
    path: Path
    pre4: bool = False
    group_noise: list[pd.DataFrame] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        return int(self.general["rlnNrClasses"])

    @property
    def pdf_class(self) -> np.ndarray:
        return self.classes["rlnClassDistribution"].to_numpy(dtype=np.float64)

    @property
    def reference_images(self) -> list[str]:
        return [str(v) for v in self.classes["rlnReferenceImage"]]

    @property
    def class_stack(self) -> str:
        """Path (project-relative, as written) of the class-average stack."""
        return parse_image_name(self.reference_images[0])[1]

    @property
    def moment_stacks(self) -> tuple[str, str] | None:
        """(first, second) VDAM moment stack paths as written, or None for models without moments."""
        if "rlnGradMoment1" not in self.classes.columns or "rlnGradMoment2" not in self.classes.columns:
            return None
        return (parse_image_name(str(self.classes["rlnGradMoment1"].iloc[0]))[1],
                parse_image_name(str(self.classes["rlnGradMoment2"].iloc[0]))[1])

    def blocks(self) -> dict[str, DataBlock]:
        """The blocks again, for :func:`write_star` (RELION 4+ layout)."""
        return model_star_blocks(self.general, self.classes, self.class_spectra, self.groups, self.optics_noise)


def _comment_lines(path: Path, n: int = 2) -> list[str]:
    lines = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.startswith("#"):
                break
            lines.append(line.rstrip("\n"))
            if len(lines) == n:
                break
    return lines


def read_optimiser_star(path: str | os.PathLike[str]) -> OptimiserStar:
    """Read a RELION (or emclass2d) optimiser.star.

    Labels RELION reads with a default (``MlOptimiser::read``) get that default when
    absent (e.g. rlnGradEmIters, rlnSgdMuFactor 0.9, rlnSgdWriteEverySubset 1); the old
    rlnOverallAccuracyTranslations is taken when the Å label is missing. Raises
    StarFileError naming the file and label when a required one is absent.
    """
    path = Path(path)
    blocks = read_star(path)
    if "optimiser_general" not in blocks or not isinstance(blocks["optimiser_general"], dict):
        raise StarFileError(f"{path}: no data_optimiser_general list block; not an optimiser.star")
    raw = dict(blocks["optimiser_general"])
    if "rlnOverallAccuracyTranslationsAngst" not in raw and "rlnOverallAccuracyTranslations" in raw:
        raw["rlnOverallAccuracyTranslationsAngst"] = raw.pop("rlnOverallAccuracyTranslations")
    for label, default in (("rlnGradEmIters", 1), ("rlnSgdMuFactor", 0.9), ("rlnSgdWriteEverySubset", 1)):
        raw.setdefault(label, default)
    try:
        general = list_block(OPTIMISER_GENERAL, raw, "optimiser_general", strict=False)
    except ValueError as exc:
        raise StarFileError(f"{path}: {exc}") from None
    comments = _comment_lines(path)
    header = comments[0] if comments else ""
    command = comments[1][1:].strip() if len(comments) > 1 else ""
    return OptimiserStar(general=general, command_line=command, header=header, path=path)


def read_model_star(path: str | os.PathLike[str]) -> ModelStar:
    """Read a model.star (RELION 3.1 to 5, or ours) into a typed :class:`ModelStar`."""
    path = Path(path)
    blocks = read_star(path)

    def loop(name: str, schema: Schema) -> pd.DataFrame:
        block = blocks.get(name)
        if block is None:
            raise StarFileError(f"{path}: block data_{name} not found")
        if isinstance(block, dict):  # starfile returns one-row loops written as lists as dicts
            block = pd.DataFrame({k: [v] for k, v in block.items()})
        try:
            return loop_block(schema, block, name)
        except ValueError as exc:
            raise StarFileError(f"{path}: {exc}") from None

    if not isinstance(blocks.get("model_general"), dict):
        raise StarFileError(f"{path}: no data_model_general list block; not a model.star")
    try:
        general = list_block(MODEL_GENERAL, blocks["model_general"], "model_general", strict=False)
    except ValueError as exc:
        raise StarFileError(f"{path}: {exc}") from None
    k = general["rlnNrClasses"]
    classes = loop("model_classes", MODEL_CLASSES)
    spectra = [loop(f"model_class_{i}", MODEL_CLASS_SPECTRUM) for i in range(1, k + 1)]
    groups = loop("model_groups", MODEL_GROUPS)
    n_optics = general["rlnNrOpticsGroups"]
    if "model_optics_group_1" in blocks:
        noise = [loop(f"model_optics_group_{g}", MODEL_OPTICS_NOISE) for g in range(1, n_optics + 1)]
        return ModelStar(general, classes, spectra, groups, noise, path)
    # Pre-RELION-4: noise per scale group (MlModel::read accepts it as a fallback).
    group_noise = [loop(f"model_group_{g}", MODEL_OPTICS_NOISE) for g in range(1, general["rlnNrGroups"] + 1)]
    merged = pd.concat(group_noise).groupby("rlnSpectralIndex", as_index=False).mean()
    mean = loop_block(MODEL_OPTICS_NOISE, merged, "model_optics_group")
    return ModelStar(general, classes, spectra, groups, [mean.copy() for _ in range(max(1, n_optics))],
                     path, pre4=True, group_noise=group_noise)


def read_sampling_star(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read data_sampling_general of a sampling.star (typed; 3-D extras kept as read)."""
    path = Path(path)
    blocks = read_star(path)
    block = blocks.get("sampling_general")
    if not isinstance(block, dict):
        raise StarFileError(f"{path}: no data_sampling_general list block; not a sampling.star")
    try:
        return list_block(SAMPLING_GENERAL, block, "sampling_general", strict=False)
    except ValueError as exc:
        raise StarFileError(f"{path}: {exc}") from None


@dataclass
class Class2DIteration:
    """Everything one iteration of a Class2D run left on disk, paths resolved.

    data: the particles of the data.star (RELION's row order kept: it is sorted already).
    sampling: None when the file is absent at iteration 0 (sequential RELION writes none).
    classes_path: the class-average stack (from rlnReferenceImage), absolute or project-relative.
    """

    project_dir: Path
    optimiser_path: Path
    optimiser: OptimiserStar
    model: ModelStar
    data: ParticleTable
    sampling: dict[str, Any] | None
    classes_path: Path

    @property
    def iteration(self) -> int:
        return self.optimiser.iteration

    @property
    def output_root(self) -> str:
        return self.optimiser.output_root

    @property
    def n_classes(self) -> int:
        return self.model.n_classes

    def read_class_images(self) -> tuple[np.ndarray, float]:
        """The class averages (K, N, N) float32 and their pixel size in Å."""
        from emclass2d.nodes.io.mrc import read_mrcs

        return read_mrcs(self.classes_path)

    def read_reference_images(self) -> np.ndarray:
        """The class averages (K, N, N) float32, each read where its rlnReferenceImage points.

        Raises StarFileError naming the model.star, the class and the image when one
        cannot be read.
        """
        from emclass2d.nodes.io.mrc import MrcFileError, read_mrcs

        stacks: dict[str, np.ndarray] = {}
        out = []
        for row, name in enumerate(self.model.classes["rlnReferenceImage"].tolist(), start=1):
            try:
                index, fname = parse_image_name(str(name))
            except ValueError as exc:
                raise StarFileError(f"{self.model.path}: _rlnReferenceImage of class {row}: {exc}") from exc
            index = 1 if index is None else index
            if fname not in stacks:
                try:
                    stacks[fname] = read_mrcs(resolve_in_project(fname, self.project_dir))[0]
                except MrcFileError as exc:
                    raise StarFileError(f"{self.model.path}: _rlnReferenceImage of class {row} ({name}): {exc}") from exc
            stack = stacks[fname]
            if not 1 <= index <= len(stack):
                raise StarFileError(f"{self.model.path}: _rlnReferenceImage of class {row} ({name}) asks for "
                                    f"image {index} of a stack of {len(stack)}")
            out.append(stack[index - 1])
        return np.stack(out).astype(np.float32)

    def sigma2_noise(self, box: int, optics_group: int = 1) -> np.ndarray | None:
        """rlnSigma2Noise (box//2+1,) of an optics group (1-based; missing shells = 0), or None."""
        tables = self.model.optics_noise
        if not 1 <= optics_group <= len(tables) or "rlnSigma2Noise" not in tables[optics_group - 1]:
            return None
        block = tables[optics_group - 1]
        out = np.zeros(box // 2 + 1)
        idx = block["rlnSpectralIndex"].to_numpy(dtype=int)
        ok = idx < out.size
        out[idx[ok]] = block["rlnSigma2Noise"].to_numpy(dtype=np.float64)[ok]
        return out


def read_class2d_iteration(optimiser_star: str | os.PathLike[str], project_dir: str | os.PathLike[str] = ".") -> Class2DIteration:
    """Read an iteration from its optimiser.star and the files it names.

    optimiser_star: absolute, or relative to ``project_dir`` (as RELION stores node names).
    Files named by rlnModelStarFile, rlnExperimentalDataStarFile, rlnOrientSamplingStarFile
    and the model's rlnReferenceImage are resolved against ``project_dir``. Raises
    StarFileError naming the label and the optimiser.star when a file is missing.
    """
    project = Path(project_dir)
    opt_path = resolve_in_project(optimiser_star, project)
    if not opt_path.is_file():
        raise StarFileError(f"{opt_path}: optimiser.star not found (project directory {project})")
    opt = read_optimiser_star(opt_path)

    def named(label: str, optional: bool = False) -> Path | None:
        value = str(opt.general.get(label, "")).strip()
        if not value or value == "None":
            if optional:
                return None
            raise StarFileError(f"{opt_path}: _{label} is empty")
        p = resolve_in_project(value, project)
        if not p.is_file():
            if optional:
                return None
            raise StarFileError(f"{opt_path}: _{label} names {value}, which does not exist "
                                f"(looked for {p}; paths are relative to the project directory)")
        return p

    model_path = named("rlnModelStarFile")
    model = read_model_star(model_path)
    data = ParticleTable.read(named("rlnExperimentalDataStarFile"))
    sampling_path = named("rlnOrientSamplingStarFile", optional=opt.iteration == 0)
    sampling = read_sampling_star(sampling_path) if sampling_path is not None else None
    stack = model.class_stack
    classes_path = resolve_in_project(stack, project)
    if not classes_path.is_file():
        raise StarFileError(f"{model_path}: _rlnReferenceImage names {stack}, which does not exist "
                            f"(looked for {classes_path})")
    return Class2DIteration(project, opt_path, opt, model, data, sampling, classes_path)
