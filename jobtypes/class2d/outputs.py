"""Write one Class2D iteration as RELION does: classes.mrcs and model/data/optimiser/sampling STAR.

Maps the core's :class:`~emclass2d.core.model.Model` (host copy) and the particle table onto
the label schemas of :mod:`emclass2d.nodes.files.class2d`. Unit conversions happen here:
rlnCurrentResolution is written in Å, rlnClassPriorOffsetX/Y as Å × class fraction (RELION's
stored quantity), rlnSigmaOffsetsAngst as sqrt(sigma2_offset).

Example::

    files = write_iteration(IterationFiles("Class2D/job013/run", 25), model, table, optimiser_values,
                            sampling_values, command_line)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emclass2d.core.backend import to_host
from emclass2d.core.model import Model
from emclass2d.nodes.files import class2d as c2f
from emclass2d.nodes.io.mrc import write_mrcs, write_complex_stack
from emclass2d.nodes.io.particles import ParticleTable


@dataclass(frozen=True)
class IterationFiles:
    """File names of iteration ``it`` under output root ``root`` (``Class2D/job013/run``)."""

    root: str
    it: int

    @property
    def stem(self) -> str:
        return c2f.iteration_root(self.root, self.it)

    @property
    def optimiser(self) -> str:
        return self.stem + "_optimiser.star"

    @property
    def model(self) -> str:
        return self.stem + "_model.star"

    @property
    def data(self) -> str:
        return self.stem + "_data.star"

    @property
    def sampling(self) -> str:
        return self.stem + "_sampling.star"

    @property
    def classes(self) -> str:
        return self.stem + "_classes.mrcs"

    @property
    def moment1(self) -> str:
        return self.stem + "_1moment.mrcs"

    @property
    def moment2(self) -> str:
        return self.stem + "_2moment.mrcs"


def _h(a: Any) -> np.ndarray:
    return np.asarray(to_host(a), dtype=np.float64)


def model_star_tables(model: Model, table: ParticleTable, files: IterationFiles, with_moments: bool = False,
                      orientability: np.ndarray | None = None) -> dict[str, Any]:
    """Arguments of :func:`~emclass2d.nodes.files.class2d.write_model_star` for ``model``."""
    pdf = _h(model.pdf_class)
    prior = _h(model.prior_offset_A) * pdf[:, None]  # RELION stores Å × class fraction
    k = pdf.size
    classes = c2f.classes_table(
        files.classes, pdf, _h(model.accuracy_rot_deg), _h(model.accuracy_trans_A),
        _h(model.estimated_resolution_A), _h(model.overall_completeness), prior[:, 0], prior[:, 1],
        moment1_path=files.moment1 if with_moments else None,
        moment2_path=files.moment2 if with_moments else None)
    ssnr, comp, sig, tau2 = (_h(model.data_vs_prior), _h(model.fourier_completeness), _h(model.sigma2_ref), _h(model.tau2))
    spectra = [c2f.class_spectrum_table(model.box, model.pixel_size_A, ssnr[i], comp[i], sig[i], tau2[i],
                                        None if orientability is None else orientability[i]) for i in range(k)]
    groups = c2f.groups_table(table.group_names, table.group_counts(), _h(model.scale))
    noise = _h(model.sigma2_noise)
    optics = [c2f.optics_noise_table(model.box, model.pixel_size_A, noise[g]) for g in range(noise.shape[0])]
    cur_res_A = 1.0 / model.current_resolution if model.current_resolution > 0 else 999.0
    general = dict(
        rlnOriginalImageSize=int(model.box), rlnCurrentResolution=float(cur_res_A),
        rlnCurrentImageSize=int(model.current_size), rlnPaddingFactor=float(model.padding_factor),
        rlnPixelSize=float(model.pixel_size_A), rlnNrClasses=int(k), rlnNrGroups=int(table.n_groups),
        rlnNrOpticsGroups=int(noise.shape[0]), rlnTau2FudgeFactor=float(model.tau2_fudge),
        rlnNormCorrectionAverage=float(model.avg_norm_correction),
        rlnSigmaOffsetsAngst=float(np.sqrt(max(model.sigma2_offset_A2, 0.0))),
        rlnLogLikelihood=float(model.log_likelihood), rlnAveragePmax=float(model.ave_pmax),
    )
    return dict(general=general, classes=classes, class_spectra=spectra, groups=groups, optics_noise=optics)


def write_iteration(
    files: IterationFiles,
    model: Model,
    table: ParticleTable,
    optimiser_values: dict[str, Any],
    sampling_values: dict[str, Any] | None,
    command_line: str,
    moments: tuple[np.ndarray, np.ndarray] | None = None,
    write_data: bool = True,
    project_dir: str | os.PathLike[str] = ".",
) -> list[str]:
    """Write the iteration's files (optimiser last, so a complete optimiser.star means a complete set).

    optimiser_values: labels for the optimiser_general block beyond the file names and
    iteration, which are filled here. sampling_values: None to skip the sampling.star
    (RELION's sequential iteration 0). moments: VDAM (first-moment stack (2K, P, 2(P/2+1)),
    second-moment stack (K, ...)) already in RELION's interleaved layout. Returns written paths.
    """
    base = Path(project_dir)  # file names in the STAR files stay project-relative
    written: list[str] = []
    refs = np.asarray(to_host(model.references), dtype=np.float32)
    write_mrcs(base / files.classes, refs, model.pixel_size_A)
    written.append(files.classes)
    if moments is not None:
        write_complex_stack(base / files.moment1, moments[0])
        write_complex_stack(base / files.moment2, moments[1])
        written += [files.moment1, files.moment2]
    c2f.write_model_star(base / files.model, **model_star_tables(model, table, files, with_moments=moments is not None))
    written.append(files.model)
    if write_data:
        c2f.write_data_star(base / files.data, table.to_blocks())
        written.append(files.data)
    if sampling_values is not None:
        c2f.write_sampling_star(base / files.sampling, sampling_values)
        written.append(files.sampling)
    general = dict(optimiser_values)
    general.update(rlnOutputRootName=files.root, rlnModelStarFile=files.model, rlnExperimentalDataStarFile=files.data,
                   rlnOrientSamplingStarFile=files.sampling, rlnCurrentIteration=int(files.it))
    c2f.write_optimiser_star(base / files.optimiser, general, command_line)
    written.append(files.optimiser)
    return written
