"""The core's :class:`~emclass2d.core.model.Model` and the model.star tables, both ways.

Unit conversions happen here: rlnCurrentResolution is written in Å (the model holds
1/Å), rlnClassPriorOffsetX/Y as Å × class fraction (RELION's stored quantity),
rlnSigmaOffsetsAngst as sqrt(sigma2_offset).

Example::

    tables = model_star_tables(model, table, IterationFiles("Class2D/job013/run", 25))
    model = model_from_iteration(read_class2d_iteration(optimiser_star), refs, n_groups, 2.0, 10.0)
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from emclass2d.core.backend import to_host
from emclass2d.core.model import Model
from emclass2d.nodes.files.class2d.naming import IterationFiles
from emclass2d.nodes.files.class2d.reader import Class2DIteration
from emclass2d.nodes.files.class2d.tables import class_spectrum_table, classes_table, groups_table, optics_noise_table
from emclass2d.nodes.io.particles import ParticleTable


def _h(a: Any) -> np.ndarray:
    return np.asarray(to_host(a), dtype=np.float64)


def model_star_tables(model: Model, table: ParticleTable, files: IterationFiles, with_moments: bool = False,
                      orientability: np.ndarray | None = None) -> dict[str, Any]:
    """Arguments of :func:`~emclass2d.nodes.files.class2d.write_model_star` for ``model``."""
    pdf = _h(model.pdf_class)
    prior = _h(model.prior_offset_A) * pdf[:, None]  # RELION stores Å × class fraction
    k = pdf.size
    classes = classes_table(
        files.classes, pdf, _h(model.accuracy_rot_deg), _h(model.accuracy_trans_A),
        _h(model.estimated_resolution_A), _h(model.overall_completeness), prior[:, 0], prior[:, 1],
        moment1_path=files.moment1 if with_moments else None,
        moment2_path=files.moment2 if with_moments else None)
    ssnr, comp, sig, tau2 = (_h(model.data_vs_prior), _h(model.fourier_completeness), _h(model.sigma2_ref), _h(model.tau2))
    spectra = [class_spectrum_table(model.box, model.pixel_size_A, ssnr[i], comp[i], sig[i], tau2[i],
                                        None if orientability is None else orientability[i]) for i in range(k)]
    groups = groups_table(table.group_names, table.group_counts(), _h(model.scale))
    noise = _h(model.sigma2_noise)
    optics = [optics_noise_table(model.box, model.pixel_size_A, noise[g]) for g in range(noise.shape[0])]
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


def model_from_iteration(it: Class2DIteration, references: np.ndarray, n_groups: int, tau2_fudge: float,
                         sigma_offset_A: float) -> Model:
    """The :class:`~emclass2d.core.model.Model` an iteration's model.star describes (host arrays).

    The inverse of :func:`model_star_tables`: class averages ``references`` (K, N, N) as
    read from the class stack; rlnClassPriorOffsetX/Y back from Å × class fraction to Å;
    rlnCurrentResolution back to 1/Å; ``sigma_offset_A`` when rlnSigmaOffsetsAngst is absent.
    """
    n = int(it.model.general["rlnOriginalImageSize"])
    px = float(it.model.general["rlnPixelSize"])
    k = it.model.n_classes
    refs = references
    classes = it.model.classes
    pdf = classes["rlnClassDistribution"].to_numpy(dtype=np.float64)
    prior = np.stack([classes["rlnClassPriorOffsetX"].to_numpy(dtype=np.float64),
                      classes["rlnClassPriorOffsetY"].to_numpy(dtype=np.float64)], axis=1)
    prior_A = np.where(pdf[:, None] > 0, prior / np.where(pdf > 0, pdf, 1.0)[:, None], 0.0)
    spectra = it.model.class_spectra
    nsh = n // 2 + 1

    def spectrum(label: str) -> np.ndarray:
        out = np.zeros((k, nsh))
        for i, t in enumerate(spectra):
            v = t[label].to_numpy(dtype=np.float64)
            out[i, : min(nsh, v.size)] = v[:nsh]
        return out

    n_optics = max(len(it.model.optics_noise), 1)
    sigma2 = np.zeros((n_optics, nsh))
    for gi, t in enumerate(it.model.optics_noise):
        sigma2[gi, t["rlnSpectralIndex"].to_numpy(dtype=np.int64)] = t["rlnSigma2Noise"].to_numpy(dtype=np.float64)
    groups = it.model.groups
    scale = np.ones(n_groups)
    if groups is not None and len(groups) == n_groups:
        scale = groups["rlnGroupScaleCorrection"].to_numpy(dtype=np.float64)
    cur_res_A = float(it.model.general["rlnCurrentResolution"])
    model = Model.empty(n_classes=k, box=n, pixel_size_A=px, n_optics=n_optics, n_groups=n_groups,
                        tau2_fudge=tau2_fudge)
    model = replace(
        model, references=np.asarray(refs, dtype=np.float32), pdf_class=pdf / max(pdf.sum(), 1e-30),
        pdf_direction=pdf / max(pdf.sum(), 1e-30), prior_offset_A=prior_A,
        sigma2_offset_A2=float(it.model.general.get("rlnSigmaOffsetsAngst", sigma_offset_A)) ** 2,
        sigma2_noise=sigma2, tau2=spectrum("rlnReferenceTau2"), data_vs_prior=spectrum("rlnSsnrMap"),
        sigma2_ref=spectrum("rlnReferenceSigma2"), fourier_completeness=spectrum("rlnFourierCompleteness"),
        overall_completeness=classes["rlnOverallFourierCompleteness"].to_numpy(dtype=np.float64),
        estimated_resolution_A=classes["rlnEstimatedResolution"].to_numpy(dtype=np.float64),
        accuracy_rot_deg=classes["rlnAccuracyRotations"].to_numpy(dtype=np.float64),
        accuracy_trans_A=classes["rlnAccuracyTranslationsAngst"].to_numpy(dtype=np.float64),
        scale=scale, avg_norm_correction=float(it.model.general.get("rlnNormCorrectionAverage", 1.0)),
        current_resolution=1.0 / cur_res_A if cur_res_A > 0 else 0.0,
        current_size=int(it.model.general.get("rlnCurrentImageSize", n)),
        log_likelihood=float(it.model.general.get("rlnLogLikelihood", 0.0)),
        ave_pmax=float(it.model.general.get("rlnAveragePmax", 0.0)))
    return model
