"""Label schemas of the Class2D STAR files: every block's labels in RELION's order, type and default.

A schema is a tuple of (label, RELION type, default); ``REQUIRED`` means the caller must
give the value, ``OMIT`` that RELION writes the label only sometimes. :func:`list_block`
and :func:`loop_block` apply a schema, so :func:`~emclass2d.nodes.io.star.write_star`
formats INT, DOUBLE, BOOL and STRING values as RELION does (``MlOptimiser::write``,
``MlModel::write``, ``HealpixSampling::write``, RELION 5.0.1's order).

Example::

    list_block(OPTIMISER_GENERAL, {"rlnCurrentIteration": "25", ...}, "optimiser_general", strict=False)
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from emclass2d.nodes.graph.labels import parse_flag


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

#: data_optimiser_general (RELION's ``MlOptimiser::write``), order as in RELION 5.0.1 files.
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

#: data_model_general (RELION's ``MlModel::write``).
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

#: data_sampling_general (RELION's ``HealpixSampling::write``), 2-D runs.
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


def list_block(schema: Schema, values: Mapping[str, Any], block: str, strict: bool) -> dict[str, Any]:
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


def loop_block(schema: Schema, table: pd.DataFrame, block: str) -> pd.DataFrame:
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
