"""Builders of the Class2D STAR blocks: general blocks and the class, spectrum, group and noise tables.

Each builder applies the schema of its block (:mod:`~emclass2d.nodes.files.class2d.schemas`),
so what it returns is what RELION writes, label for label.

Example::

    classes = classes_table("Class2D/job013/run_it025_classes.mrcs", pdf_class, acc_rot, acc_trans, ...)
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emclass2d.nodes.files.class2d.schemas import (MODEL_CLASS_SPECTRUM, MODEL_CLASSES, MODEL_GENERAL, MODEL_GROUPS,
                                                   MODEL_OPTICS_NOISE, OPTIMISER_GENERAL, SAMPLING_GENERAL,
                                                   list_block, loop_block)
from emclass2d.nodes.io.star import DataBlock


def optimiser_general_block(**values: Any) -> dict[str, Any]:
    """data_optimiser_general with RELION's defaults for every label not given.

    Keys are RELION labels without the underscore (``rlnCurrentIteration=25``). Required:
    rlnOutputRootName, rlnModelStarFile, rlnExperimentalDataStarFile,
    rlnOrientSamplingStarFile, rlnCurrentIteration, rlnNumberOfIterations, rlnRandomSeed,
    rlnParticleDiameter (Å). Units as RELION writes them: rlnBestResolutionThusFar in 1/Å,
    rlnOverallAccuracyTranslationsAngst and rlnChangesOptimalOffsets in Å,
    rlnChangesOptimalClasses a fraction, rlnSmallestChangesClasses that fraction rounded,
    rlnOffsetRangeX/Y/Z in Å. Raises ValueError for unknown or missing labels.
    """
    return list_block(OPTIMISER_GENERAL, values, "optimiser_general", strict=True)


def model_general_block(**values: Any) -> dict[str, Any]:
    """data_model_general with defaults (2-D, padding 2, one body, one optics group).

    Required: rlnOriginalImageSize (px), rlnCurrentResolution (**Å**, RELION writes
    1/current_resolution although the label says 1/Å), rlnCurrentImageSize (px),
    rlnPixelSize (Å), rlnNrClasses, rlnNrGroups, rlnTau2FudgeFactor, rlnSigmaOffsetsAngst
    (Å, sqrt of sigma2_offset). rlnLogLikelihood is the sum of rlnLogLikeliContribution,
    rlnAveragePmax the mean rlnMaxValueProbDistribution.
    """
    return list_block(MODEL_GENERAL, values, "model_general", strict=True)


def sampling_general_block(**values: Any) -> dict[str, Any]:
    """data_sampling_general for a 2-D run.

    Required: rlnPsiStep (coarse psi step, deg), rlnOffsetRange and rlnOffsetStep (Å, the
    coarse step), rlnPsiStepOriginal, rlnOffsetRangeOriginal, rlnOffsetStepOriginal.
    rlnSamplingPerturbInstance is the current random perturbation (RELION does not read it back).
    """
    return list_block(SAMPLING_GENERAL, values, "sampling_general", strict=True)


def class_image_name(k: int, stack_path: str | os.PathLike[str]) -> str:
    """``(1, "Class2D/job013/run_it025_classes.mrcs") -> "00000001@Class2D/job013/run_it025_classes.mrcs"``.

    k is 1-based; 8 digits as RELION 5 (``FILENAMENUMBERLENGTH``).
    """
    if k < 1:
        raise ValueError(f"class numbers start at 1, got {k}")
    return f"{k:08d}@{Path(stack_path).as_posix()}"


def classes_table(
    stack_path: str,
    pdf_class: Sequence[float],
    accuracy_rotations_deg: Sequence[float],
    accuracy_translations_A: Sequence[float],
    estimated_resolution_A: Sequence[float],
    fourier_completeness: Sequence[float],
    prior_offset_x: Sequence[float],
    prior_offset_y: Sequence[float],
    moment1_path: str | None = None,
    moment2_path: str | None = None,
) -> pd.DataFrame:
    """data_model_classes: one row per class k, rlnReferenceImage = ``k@stack_path``.

    pdf_class: rlnClassDistribution, sums to 1. accuracy_*: 999 for classes with
    pdf < 0.01 (RELION). estimated_resolution_A: N px / maxres. prior_offset_x/y:
    rlnClassPriorOffsetX/Y, which RELION stores as Å times the class fraction
    (Σ_w offset·px / Σ all weights), not pixels as its label text says.
    moment1_path / moment2_path: VDAM moment stacks; moment 1 row k refers to image k
    (the second pseudo-half sits at k+K in the same stack, not listed).
    """
    k = len(pdf_class)
    table: dict[str, Any] = {"rlnReferenceImage": [class_image_name(i + 1, stack_path) for i in range(k)]}
    if moment1_path is not None:
        table["rlnGradMoment1"] = [class_image_name(i + 1, moment1_path) for i in range(k)]
    if moment2_path is not None:
        table["rlnGradMoment2"] = [class_image_name(i + 1, moment2_path) for i in range(k)]
    table.update({
        "rlnClassDistribution": pdf_class,
        "rlnAccuracyRotations": accuracy_rotations_deg,
        "rlnAccuracyTranslationsAngst": accuracy_translations_A,
        "rlnEstimatedResolution": estimated_resolution_A,
        "rlnOverallFourierCompleteness": fourier_completeness,
        "rlnClassPriorOffsetX": prior_offset_x,
        "rlnClassPriorOffsetY": prior_offset_y,
    })
    return loop_block(MODEL_CLASSES, pd.DataFrame(table), "model_classes")


def shell_resolution(box_size: int, pixel_size_A: float, n_shells: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(rlnResolution in 1/Å, rlnAngstromResolution in Å with 999 at shell 0) for shells 0..N/2."""
    n = box_size // 2 + 1 if n_shells is None else n_shells
    i = np.arange(n, dtype=np.float64)
    res = i / (box_size * pixel_size_A)
    with np.errstate(divide="ignore"):
        ang = np.where(i > 0, box_size * pixel_size_A / np.maximum(i, 1), 999.0)
    return res, ang


def class_spectrum_table(
    box_size: int,
    pixel_size_A: float,
    ssnr_map: Sequence[float],
    fourier_completeness: Sequence[float],
    reference_sigma2: Sequence[float],
    reference_tau2: Sequence[float],
    orientability: Sequence[float] | None = None,
    gold_standard_fsc: Sequence[float] | None = None,
) -> pd.DataFrame:
    """data_model_class_k: per-shell spectra of one class (shells 0..N/2).

    ssnr_map: SSNR^MAP (data vs prior); reference_sigma2: shell mean of the inverse
    reconstruction weight; reference_tau2: tau2 (signal power prior); orientability:
    rlnSpectralOrientabilityContribution, only when angular accuracies were estimated
    this iteration (normalised to sum 1); gold_standard_fsc: 0 in classification.
    """
    n = len(ssnr_map)
    res, ang = shell_resolution(box_size, pixel_size_A, n)
    table = {
        "rlnSpectralIndex": np.arange(n, dtype=np.int64),
        "rlnResolution": res,
        "rlnAngstromResolution": ang,
        "rlnSsnrMap": ssnr_map,
        "rlnGoldStandardFsc": np.zeros(n) if gold_standard_fsc is None else gold_standard_fsc,
        "rlnFourierCompleteness": fourier_completeness,
        "rlnReferenceSigma2": reference_sigma2,
        "rlnReferenceTau2": reference_tau2,
    }
    if orientability is not None:
        table["rlnSpectralOrientabilityContribution"] = orientability
    return loop_block(MODEL_CLASS_SPECTRUM, pd.DataFrame(table), "model_class")


def groups_table(group_names: Sequence[str], counts: Sequence[int], scale_correction: Sequence[float]) -> pd.DataFrame:
    """data_model_groups: rlnGroupNumber (1-based), name, particle count, intensity scale."""
    n = len(group_names)
    return loop_block(MODEL_GROUPS, pd.DataFrame({
        "rlnGroupNumber": np.arange(1, n + 1),
        "rlnGroupName": list(group_names),
        "rlnGroupNrParticles": counts,
        "rlnGroupScaleCorrection": scale_correction,
    }), "model_groups")


def optics_noise_table(box_size: int, pixel_size_A: float, sigma2_noise: Sequence[float]) -> pd.DataFrame:
    """data_model_optics_group_g: sigma2_noise per shell; only shells with sigma2 > 0 (RELION).

    sigma2_noise: the noise **variance** per real/imaginary component of the normalised
    FFT (rlnSigma2Noise; RELION's label text says standard deviation, the value is not).
    """
    s = np.asarray(sigma2_noise, dtype=np.float64)
    res, _ = shell_resolution(box_size, pixel_size_A, s.size)
    keep = s > 0
    return loop_block(MODEL_OPTICS_NOISE, pd.DataFrame({
        "rlnSpectralIndex": np.flatnonzero(keep),
        "rlnResolution": res[keep],
        "rlnSigma2Noise": s[keep],
    }), "model_optics_group")


def model_star_blocks(
    general: Mapping[str, Any],
    classes: pd.DataFrame,
    class_spectra: Sequence[pd.DataFrame],
    groups: pd.DataFrame,
    optics_noise: Sequence[pd.DataFrame],
) -> dict[str, DataBlock]:
    """All blocks of a model.star in RELION's order, typed by the schemas.

    general: labels for :func:`model_general_block` (or its result); classes, spectra,
    groups, noise: tables as built by :func:`classes_table` etc. Raises ValueError when
    the counts disagree with rlnNrClasses / rlnNrGroups / rlnNrOpticsGroups.
    """
    gen = model_general_block(**general)
    k = gen["rlnNrClasses"]
    if len(classes) != k or len(class_spectra) != k:
        raise ValueError(f"model.star: rlnNrClasses is {k} but {len(classes)} class rows and "
                         f"{len(class_spectra)} class spectra were given")
    if len(groups) != gen["rlnNrGroups"]:
        raise ValueError(f"model.star: rlnNrGroups is {gen['rlnNrGroups']} but {len(groups)} group rows were given")
    if len(optics_noise) != gen["rlnNrOpticsGroups"]:
        raise ValueError(f"model.star: rlnNrOpticsGroups is {gen['rlnNrOpticsGroups']} but "
                         f"{len(optics_noise)} noise spectra were given")
    blocks: dict[str, DataBlock] = {"model_general": gen,
                                    "model_classes": loop_block(MODEL_CLASSES, classes, "model_classes")}
    for i, spectrum in enumerate(class_spectra, start=1):
        blocks[f"model_class_{i}"] = loop_block(MODEL_CLASS_SPECTRUM, spectrum, f"model_class_{i}")
    blocks["model_groups"] = loop_block(MODEL_GROUPS, groups, "model_groups")
    for g, noise in enumerate(optics_noise, start=1):
        blocks[f"model_optics_group_{g}"] = loop_block(MODEL_OPTICS_NOISE, noise, f"model_optics_group_{g}")
    return blocks
