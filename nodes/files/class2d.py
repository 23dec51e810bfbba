"""The STAR files of one Class2D iteration, label for label as RELION 5 writes them.

Per iteration ``it`` and output root (``Class2D/job013/run``) a run writes
``run_itNNN_optimiser.star``, ``_model.star``, ``_data.star``, ``_sampling.star`` and
``_classes.mrcs`` (facts 1.1). This module holds the label schemas (order, RELION type,
default) of every block, builders that apply them (so :func:`~emclass2d.nodes.io.star.write_star`
formats INT, DOUBLE, BOOL and STRING values as RELION does), writers, readers, and the
naming rules (``run_it025``, continue roots ``run_ct25``, ``00000001@...classes.mrcs``).

Units follow RELION's files, not the label descriptions (facts 6.7):
rlnCurrentResolution is in Å, rlnBestResolutionThusFar in 1/Å, rlnSigma2Noise is a
variance per real/imaginary component, rlnClassPriorOffsetX/Y are Å times the class
fraction, rlnChangesOptimalClasses is a fraction.

Optimiser header: RELION's line 1 is ``# RELION optimiser; version <v>``; no reader
parses it (RELION, the CCP-EM pipeliner and starfile skip comments), so ours says
``# emclass2d optimiser; version <v>``. Line 2 is kept exactly as RELION writes it,
``# `` + the command-line arguments + a trailing space, because users' scripts read it.

Example::

    general = optimiser_general_block(rlnOutputRootName="Class2D/job013/run", ...)
    write_optimiser_star("Class2D/job013/run_it025_optimiser.star", general, "--o Class2D/job013/run ...")
    it = read_class2d_iteration("Class2D/job013/run_it025_optimiser.star", project_dir=".")
    it.model.pdf_class, it.data.n_particles, it.classes_path

See also: :mod:`emclass2d.nodes.io.particles`, :mod:`emclass2d.nodes.io.mrc`.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emclass2d.nodes.io.images import parse_image_name
from emclass2d.nodes.graph.labels import parse_flag
from emclass2d.nodes.io.particles import ParticleTable, resolve_in_project
from emclass2d.nodes.io.star import DataBlock, StarFileError, read_star, write_star

INT, DOUBLE, BOOL, STRING = "INT", "DOUBLE", "BOOL", "STRING"


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: Default meaning "the caller must give this value".
REQUIRED = _Marker("REQUIRED")
#: Default meaning "written only when given" (RELION writes the label conditionally).
OMIT = _Marker("OMIT")

#: A schema: (label, RELION type, default) in RELION's write order.
Schema = tuple[tuple[str, str, Any], ...]

# ----------------------------------------------------------------------------- schemas

#: data_optimiser_general (``MlOptimiser::write``), facts 1.5, order as in RELION 5.0.1 files.
OPTIMISER_GENERAL: Schema = (
    ("rlnOutputRootName", STRING, REQUIRED),
    ("rlnModelStarFile", STRING, REQUIRED),
    ("rlnModelStarFile2", STRING, OMIT),  # only with --split_random_halves
    ("rlnExperimentalDataStarFile", STRING, REQUIRED),
    ("rlnTomoTomogramsFile", STRING, ""),
    ("rlnTomoTrajectoriesFile", STRING, ""),
    ("rlnOrientSamplingStarFile", STRING, REQUIRED),
    ("rlnCurrentIteration", INT, REQUIRED),
    ("rlnNumberOfIterations", INT, REQUIRED),
    ("rlnDoSplitRandomHalves", BOOL, False),
    ("rlnJoinHalvesUntilThisResolution", DOUBLE, -1.0),
    ("rlnAdaptiveOversampleOrder", INT, 1),
    ("rlnAdaptiveOversampleFraction", DOUBLE, 0.999),
    ("rlnRandomSeed", INT, REQUIRED),
    ("rlnParticleDiameter", DOUBLE, REQUIRED),
    ("rlnWidthMaskEdge", INT, 5),
    ("rlnDoZeroMask", BOOL, False),
    ("rlnDoSolventFlattening", BOOL, False),
    ("rlnDoSolventFscCorrection", BOOL, False),
    ("rlnSolventMaskName", STRING, "None"),
    ("rlnSolventMask2Name", STRING, "None"),
    ("rlnBodyStarFile", STRING, "None"),
    ("rlnTauSpectrumName", STRING, "None"),
    ("rlnMaximumCoarseImageSize", INT, -1),
    ("rlnHighresLimitExpectation", DOUBLE, -1.0),
    ("rlnLowresLimitExpectation", DOUBLE, -1.0),
    ("rlnIncrementImageSize", INT, 10),
    ("rlnDoMapEstimation", BOOL, True),
    ("rlnDoFastSubsetOptimisation", BOOL, False),
    ("rlnDoExternalReconstruct", BOOL, False),
    ("rlnDoBlush", BOOL, False),
    ("rlnBlushNoSpectralTrailing", BOOL, False),
    ("rlnDoGradientRefine", BOOL, False),
    ("rlnDoStochasticGradientDescent", BOOL, False),
    ("rlnGradEmIters", INT, 0),
    ("rlnGradHasConverged", BOOL, False),
    ("rlnGradCurrentStepsize", DOUBLE, 0.0),
    ("rlnGradSubsetOrder", INT, 0),
    ("rlnGradSuspendFinerSamplingIter", INT, -1),
    ("rlnGradSuspendLocalSamplingIter", INT, -1),
    ("rlnSgdInitialIterationsFraction", DOUBLE, 0.3),
    ("rlnSgdFinalIterationsFraction", DOUBLE, 0.2),
    ("rlnSgdMinimumResolution", DOUBLE, 20.0),
    ("rlnSgdInitialResolution", DOUBLE, -1.0),
    ("rlnSgdFinalResolution", DOUBLE, -1.0),
    ("rlnSgdInitialSubsetSize", INT, -1),
    ("rlnSgdFinalSubsetSize", INT, -1),
    ("rlnSgdMuFactor", DOUBLE, 0.0),  # RELION forces 0 for EM; VDAM runs give 0.9
    ("rlnSgdSkipAnneal", BOOL, False),
    ("rlnSgdClassInactivityThreshold", DOUBLE, 0.0),
    ("rlnSgdSubsetSize", INT, -1),
    ("rlnSgdWriteEverySubset", INT, 10),
    ("rlnSgdStepsize", DOUBLE, -1.0),
    ("rlnSgdStepsizeScheme", STRING, ""),
    ("rlnTau2FudgeScheme", STRING, ""),
    ("rlnTau2FudgeArg", DOUBLE, -1.0),
    ("rlnMaximumSignificantPoses", INT, -1),
    ("rlnDoAutoRefine", BOOL, False),
    ("rlnDoAutoSampling", BOOL, False),
    ("rlnAutoLocalSearchesHealpixOrder", INT, 4),
    ("rlnNumberOfIterWithoutResolutionGain", INT, 0),
    ("rlnBestResolutionThusFar", DOUBLE, 0.0),  # 1/Å (a spatial frequency)
    ("rlnNumberOfIterWithoutChangingAssignments", INT, 0),
    ("rlnDoSkipAlign", BOOL, False),
    ("rlnDoSkipRotate", BOOL, False),
    ("rlnOverallAccuracyRotations", DOUBLE, 999.0),
    ("rlnOverallAccuracyTranslationsAngst", DOUBLE, 999.0),
    ("rlnChangesOptimalOrientations", DOUBLE, 999.0),
    ("rlnChangesOptimalOffsets", DOUBLE, 999.0),
    ("rlnChangesOptimalClasses", DOUBLE, 999.0),  # a fraction of particles
    ("rlnSmallestChangesOrientations", DOUBLE, 999.0),
    ("rlnSmallestChangesOffsets", DOUBLE, 999.0),
    ("rlnSmallestChangesClasses", INT, 9999999),  # the fraction, rounded (RELION quirk)
    ("rlnLocalSymmetryFile", STRING, "None"),
    ("rlnDoHelicalRefine", BOOL, False),
    ("rlnIgnoreHelicalSymmetry", BOOL, False),
    ("rlnFourierMask", STRING, "None"),
    ("rlnHelicalTwistInitial", DOUBLE, 0.0),
    ("rlnHelicalRiseInitial", DOUBLE, 0.0),
    ("rlnHelicalCentralProportion", DOUBLE, 0.3),
    ("rlnNrHelicalNStart", INT, 1),
    ("rlnHelicalMaskTubeInnerDiameter", DOUBLE, -1.0),
    ("rlnHelicalMaskTubeOuterDiameter", DOUBLE, -1.0),
    ("rlnHelicalSymmetryLocalRefinement", BOOL, False),
    ("rlnHelicalSigmaDistance", DOUBLE, -1.0),
    ("rlnHelicalKeepTiltPriorFixed", BOOL, False),
    ("rlnHasConverged", BOOL, False),
    ("rlnHasHighFscAtResolLimit", BOOL, False),
    ("rlnHasLargeSizeIncreaseIterationsAgo", INT, 0),
    ("rlnDoCorrectNorm", BOOL, True),
    ("rlnDoCorrectScale", BOOL, True),
    ("rlnDoCorrectCtf", BOOL, True),
    ("rlnDoCenterClasses", BOOL, False),
    ("rlnDoIgnoreCtfUntilFirstPeak", BOOL, False),
    ("rlnCtfDataArePhaseFlipped", BOOL, False),
    ("rlnDoOnlyFlipCtfPhases", BOOL, False),
    ("rlnRefsAreCtfCorrected", BOOL, True),
    ("rlnFixSigmaNoiseEstimates", BOOL, False),
    ("rlnFixSigmaOffsetEstimates", BOOL, False),
    ("rlnMaxNumberOfPooledParticles", INT, 1),
    ("rlnOffsetRangeX", DOUBLE, -1.0),
    ("rlnOffsetRangeY", DOUBLE, -1.0),
    ("rlnOffsetRangeZ", DOUBLE, -1.0),
)

#: data_model_general (``MlModel::write``), facts 1.6.
MODEL_GENERAL: Schema = (
    ("rlnReferenceDimensionality", INT, 2),
    ("rlnDataDimensionality", INT, 2),
    ("rlnOriginalImageSize", INT, REQUIRED),
    ("rlnCurrentResolution", DOUBLE, REQUIRED),  # Å (RELION writes 1/current_resolution)
    ("rlnCurrentImageSize", INT, REQUIRED),
    ("rlnPaddingFactor", DOUBLE, 2.0),
    ("rlnIsHelix", BOOL, False),
    ("rlnNrHelicalAsymUnits", INT, OMIT),  # the helical labels only when rlnIsHelix
    ("rlnHelicalTwistMin", DOUBLE, OMIT),
    ("rlnHelicalTwistMax", DOUBLE, OMIT),
    ("rlnHelicalTwistInitialStep", DOUBLE, OMIT),
    ("rlnHelicalRiseMin", DOUBLE, OMIT),
    ("rlnHelicalRiseMax", DOUBLE, OMIT),
    ("rlnHelicalRiseInitialStep", DOUBLE, OMIT),
    ("rlnFourierSpaceInterpolator", INT, 1),
    ("rlnMinRadiusNnInterpolation", INT, 10),
    ("rlnPixelSize", DOUBLE, REQUIRED),
    ("rlnNrClasses", INT, REQUIRED),
    ("rlnNrBodies", INT, 1),
    ("rlnNrGroups", INT, REQUIRED),
    ("rlnNrOpticsGroups", INT, 1),
    ("rlnTau2FudgeFactor", DOUBLE, REQUIRED),
    ("rlnNormCorrectionAverage", DOUBLE, 1.0),
    ("rlnSigmaOffsetsAngst", DOUBLE, REQUIRED),  # Å (sqrt of sigma2_offset)
    ("rlnOrientationalPriorMode", INT, 0),
    ("rlnSigmaPriorRotAngle", DOUBLE, 0.0),
    ("rlnSigmaPriorTiltAngle", DOUBLE, 0.0),
    ("rlnSigmaPriorPsiAngle", DOUBLE, 0.0),
    ("rlnLogLikelihood", DOUBLE, 0.0),
    ("rlnAveragePmax", DOUBLE, 0.0),
)

#: data_model_classes loop, one row per class.
MODEL_CLASSES: Schema = (
    ("rlnReferenceImage", STRING, REQUIRED),
    ("rlnGradMoment1", STRING, OMIT),  # only for models with VDAM moments
    ("rlnGradMoment2", STRING, OMIT),
    ("rlnClassDistribution", DOUBLE, REQUIRED),
    ("rlnAccuracyRotations", DOUBLE, REQUIRED),
    ("rlnAccuracyTranslationsAngst", DOUBLE, REQUIRED),
    ("rlnEstimatedResolution", DOUBLE, REQUIRED),
    ("rlnOverallFourierCompleteness", DOUBLE, REQUIRED),
    ("rlnClassPriorOffsetX", DOUBLE, REQUIRED),  # Å x class fraction (RELION quirk)
    ("rlnClassPriorOffsetY", DOUBLE, REQUIRED),
    ("rlnHelicalRise", DOUBLE, OMIT),
    ("rlnHelicalTwist", DOUBLE, OMIT),
)

#: data_model_class_k loop, one row per shell 0..N/2.
MODEL_CLASS_SPECTRUM: Schema = (
    ("rlnSpectralIndex", INT, REQUIRED),
    ("rlnResolution", DOUBLE, REQUIRED),  # 1/Å
    ("rlnAngstromResolution", DOUBLE, REQUIRED),  # Å, 999 for shell 0
    ("rlnSsnrMap", DOUBLE, REQUIRED),
    ("rlnGoldStandardFsc", DOUBLE, REQUIRED),
    ("rlnFourierCompleteness", DOUBLE, REQUIRED),
    ("rlnReferenceSigma2", DOUBLE, REQUIRED),
    ("rlnReferenceTau2", DOUBLE, REQUIRED),
    ("rlnSpectralOrientabilityContribution", DOUBLE, OMIT),  # when accuracies were estimated
)

#: data_model_groups loop, one row per scale group.
MODEL_GROUPS: Schema = (
    ("rlnGroupNumber", INT, REQUIRED),
    ("rlnGroupName", STRING, REQUIRED),
    ("rlnGroupNrParticles", INT, REQUIRED),
    ("rlnGroupScaleCorrection", DOUBLE, REQUIRED),
)

#: data_model_optics_group_g loop (and pre-RELION-4 data_model_group_N).
MODEL_OPTICS_NOISE: Schema = (
    ("rlnSpectralIndex", INT, REQUIRED),
    ("rlnResolution", DOUBLE, REQUIRED),  # 1/Å
    ("rlnSigma2Noise", DOUBLE, REQUIRED),  # variance per real/imaginary component
)

#: data_sampling_general (``HealpixSampling::write``), facts 1.8, 2-D runs.
SAMPLING_GENERAL: Schema = (
    ("rlnIs3DSampling", BOOL, False),
    ("rlnIs3DTranslationalSampling", BOOL, False),
    ("rlnPsiStep", DOUBLE, REQUIRED),  # coarse psi step, deg
    ("rlnOffsetRange", DOUBLE, REQUIRED),  # Å
    ("rlnOffsetStep", DOUBLE, REQUIRED),  # coarse, Å
    ("rlnHelicalOffsetStep", DOUBLE, -1.0),
    ("rlnSamplingPerturbInstance", DOUBLE, 0.0),
    ("rlnSamplingPerturbFactor", DOUBLE, 0.5),
    ("rlnHealpixOrderOriginal", INT, 2),
    ("rlnPsiStepOriginal", DOUBLE, REQUIRED),
    ("rlnOffsetRangeOriginal", DOUBLE, REQUIRED),
    ("rlnOffsetStepOriginal", DOUBLE, REQUIRED),
)

# ----------------------------------------------------------------------------- typing


def cast_value(kind: str, value: Any, label: str = "") -> Any:
    """``value`` as the Python type :func:`write_star` formats as RELION type ``kind``."""
    try:
        if kind == INT:
            f = float(value)
            if f != int(f):
                raise ValueError(f"{value!r} is not an integer")
            return int(f)
        if kind == DOUBLE:
            return float(value)
        if kind == BOOL:
            return parse_flag(value)
        return "" if value is None else str(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"_{label}: expected {kind}, got {value!r} ({exc})") from None


_PANDAS_DTYPE = {INT: np.int64, DOUBLE: np.float64, BOOL: bool}


def _list_block(schema: Schema, values: Mapping[str, Any], block: str, strict: bool) -> dict[str, Any]:
    """Typed list table in schema order; defaults fill gaps, OMIT labels only when given.

    strict: unknown labels are an error (writers) or kept at the end (readers).
    """
    known = {label for label, _, _ in schema}
    unknown = [k for k in values if k not in known]
    if unknown and strict:
        raise ValueError(f"data_{block}: unknown label(s) " + ", ".join(f"_{u}" for u in unknown))
    out: dict[str, Any] = {}
    missing = []
    for label, kind, default in schema:
        if label in values:
            out[label] = cast_value(kind, values[label], label)
        elif default is REQUIRED:
            missing.append(label)
        elif default is not OMIT:
            out[label] = default
    if missing:
        raise ValueError(f"data_{block}: missing value(s) for " + ", ".join(f"_{m}" for m in missing))
    for label in unknown:
        out[label] = values[label]
    return out


def _loop_block(schema: Schema, table: pd.DataFrame, block: str) -> pd.DataFrame:
    """Typed loop table: schema columns in RELION's order (OMIT ones only if present), then extras."""
    missing = [label for label, _, default in schema if default is REQUIRED and label not in table.columns]
    if missing:
        raise ValueError(f"data_{block}: missing column(s) " + ", ".join(f"_{m}" for m in missing))
    out = pd.DataFrame(index=range(len(table)))
    known = set()
    for label, kind, _ in schema:
        known.add(label)
        if label not in table.columns:
            continue
        column = table[label].to_numpy()
        if kind == STRING:
            out[label] = pd.Series([cast_value(STRING, v) for v in column], dtype=object)
        elif kind == INT:
            out[label] = np.asarray(column, dtype=np.float64).round().astype(np.int64)
        else:
            out[label] = np.asarray(column).astype(_PANDAS_DTYPE[kind])
    for label in table.columns:
        if label not in known:
            out[label] = table[label].to_numpy()
    return out


# ----------------------------------------------------------------------------- builders


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
    return _list_block(OPTIMISER_GENERAL, values, "optimiser_general", strict=True)


def model_general_block(**values: Any) -> dict[str, Any]:
    """data_model_general with defaults (2-D, padding 2, one body, one optics group).

    Required: rlnOriginalImageSize (px), rlnCurrentResolution (**Å**, RELION writes
    1/current_resolution although the label says 1/Å), rlnCurrentImageSize (px),
    rlnPixelSize (Å), rlnNrClasses, rlnNrGroups, rlnTau2FudgeFactor, rlnSigmaOffsetsAngst
    (Å, sqrt of sigma2_offset). rlnLogLikelihood is the sum of rlnLogLikeliContribution,
    rlnAveragePmax the mean rlnMaxValueProbDistribution.
    """
    return _list_block(MODEL_GENERAL, values, "model_general", strict=True)


def sampling_general_block(**values: Any) -> dict[str, Any]:
    """data_sampling_general for a 2-D run.

    Required: rlnPsiStep (coarse psi step, deg), rlnOffsetRange and rlnOffsetStep (Å, the
    coarse step), rlnPsiStepOriginal, rlnOffsetRangeOriginal, rlnOffsetStepOriginal.
    rlnSamplingPerturbInstance is the current random perturbation (RELION does not read it back).
    """
    return _list_block(SAMPLING_GENERAL, values, "sampling_general", strict=True)


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
    return _loop_block(MODEL_CLASSES, pd.DataFrame(table), "model_classes")


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
    return _loop_block(MODEL_CLASS_SPECTRUM, pd.DataFrame(table), "model_class")


def groups_table(group_names: Sequence[str], counts: Sequence[int], scale_correction: Sequence[float]) -> pd.DataFrame:
    """data_model_groups: rlnGroupNumber (1-based), name, particle count, intensity scale."""
    n = len(group_names)
    return _loop_block(MODEL_GROUPS, pd.DataFrame({
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
    return _loop_block(MODEL_OPTICS_NOISE, pd.DataFrame({
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
                                    "model_classes": _loop_block(MODEL_CLASSES, classes, "model_classes")}
    for i, spectrum in enumerate(class_spectra, start=1):
        blocks[f"model_class_{i}"] = _loop_block(MODEL_CLASS_SPECTRUM, spectrum, f"model_class_{i}")
    blocks["model_groups"] = _loop_block(MODEL_GROUPS, groups, "model_groups")
    for g, noise in enumerate(optics_noise, start=1):
        blocks[f"model_optics_group_{g}"] = _loop_block(MODEL_OPTICS_NOISE, noise, f"model_optics_group_{g}")
    return blocks


# ----------------------------------------------------------------------------- writers


def package_version() -> str:
    try:
        return importlib.metadata.version("emclass2d")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def optimiser_header(command_line: str, version: str | None = None) -> list[str]:
    """The two comment lines of an optimiser.star (see module docstring)."""
    args = command_line.strip()
    return [f"# emclass2d optimiser; version {version or package_version()}", f"# {args} "]


def write_optimiser_star(path: str | os.PathLike[str], general: Mapping[str, Any], command_line: str,
                         version: str | None = None) -> None:
    """Write ``run_itNNN_optimiser.star``: two comment lines, then data_optimiser_general.

    general: labels for :func:`optimiser_general_block` (defaults fill the rest).
    command_line: the arguments after the program name (written on line 2).
    """
    block = optimiser_general_block(**general)
    write_star(path, {"optimiser_general": block}, comments=optimiser_header(command_line, version))


def write_model_star(path: str | os.PathLike[str], general: Mapping[str, Any], classes: pd.DataFrame,
                     class_spectra: Sequence[pd.DataFrame], groups: pd.DataFrame,
                     optics_noise: Sequence[pd.DataFrame]) -> None:
    """Write ``run_itNNN_model.star`` (see :func:`model_star_blocks`)."""
    write_star(path, model_star_blocks(general, classes, class_spectra, groups, optics_noise))


def write_data_star(path: str | os.PathLike[str], blocks: Mapping[str, pd.DataFrame]) -> None:
    """Write ``run_itNNN_data.star`` from :meth:`ParticleTable.to_blocks` (optics, particles)."""
    for name in ("optics", "particles"):
        if name not in blocks:
            raise ValueError(f"{path}: data.star needs a data_{name} block")
    write_star(path, {"optics": blocks["optics"], "particles": blocks["particles"]})


def write_sampling_star(path: str | os.PathLike[str], values: Mapping[str, Any]) -> None:
    """Write ``run_itNNN_sampling.star`` (see :func:`sampling_general_block`)."""
    write_star(path, {"sampling_general": sampling_general_block(**values)})


# ----------------------------------------------------------------------------- readers


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
        general = _list_block(OPTIMISER_GENERAL, raw, "optimiser_general", strict=False)
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
            return _loop_block(schema, block, name)
        except ValueError as exc:
            raise StarFileError(f"{path}: {exc}") from None

    if not isinstance(blocks.get("model_general"), dict):
        raise StarFileError(f"{path}: no data_model_general list block; not a model.star")
    try:
        general = _list_block(MODEL_GENERAL, blocks["model_general"], "model_general", strict=False)
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
    mean = _loop_block(MODEL_OPTICS_NOISE, merged, "model_optics_group")
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
        return _list_block(SAMPLING_GENERAL, block, "sampling_general", strict=False)
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


# ----------------------------------------------------------------------------- naming

_OPTIMISER_RE = re.compile(r"^(?P<root>.+?)_it(?P<it>\d{3,})_optimiser\.star$")
_CT_RE = re.compile(r"_ct(\d+)")


def iteration_root(root: str, it: int) -> str:
    """``("Class2D/job013/run", 25) -> "Class2D/job013/run_it025"`` (3 digits minimum)."""
    return f"{root}_it{it:03d}"


def continue_root(root: str, it: int) -> str:
    """Output root of a run continued from iteration ``it``: ``run -> run_ct25`` (no padding).

    RELION adds ``_ct<it>`` when ``--o`` is absent or equals the stored rlnOutputRootName
    (facts 1.10), so a second continue gives ``run_ct25_ct40``.
    """
    return f"{root}_ct{it}"


def parse_optimiser_name(name: str | os.PathLike[str]) -> tuple[str, int] | None:
    """``"run_ct25_it030_optimiser.star" -> ("run_ct25", 30)``; None if not an optimiser file."""
    match = _OPTIMISER_RE.match(Path(name).name)
    if match is None:
        return None
    return match.group("root"), int(match.group("it"))


def find_latest_optimiser(job_dir: str | os.PathLike[str], root_name: str = "run") -> Path | None:
    """The newest ``<root>[_ctNN...]_itNNN_optimiser.star`` in ``job_dir`` (None if none).

    Newest = highest iteration; at equal iteration the file of the latest continuation
    (a continued run rewrites its starting iteration under ``run_ctNN_itNNN``).
    """
    best: tuple[tuple[int, int, tuple[int, ...]], Path] | None = None
    for path in Path(job_dir).glob(f"{root_name}*_it*_optimiser.star"):
        parsed = parse_optimiser_name(path.name)
        if parsed is None:
            continue
        root, it = parsed
        suffix = root[len(root_name):]
        if _CT_RE.sub("", suffix):  # some other root, e.g. "run2" or "run_unmasked"
            continue
        cts = tuple(int(c) for c in _CT_RE.findall(suffix))
        key = (it, len(cts), cts)
        if best is None or key > best[0]:
            best = (key, path)
    return None if best is None else best[1]
