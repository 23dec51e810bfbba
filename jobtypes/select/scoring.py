"""Features and scores of every class of a Class2D iteration, with a project-level cache.

:func:`class_features` applies RELION's class-ranker rules (``ClassRanker::read``, ``ClassRanker::getFeatures``) to one
iteration: classes with at most 10 particles are not scored; CTF-intact-first-peak runs
have their averages corrected first; accuracies that were not estimated (999) are given
5°/8 Å for small classes or re-estimated from the class average (simplified, see
:func:`emclass2d.core.accuracy.class_average_accuracies`). Particle numbers are the real
counts of rlnClassNumber (RELION uses pdf_class × N).

Cache: features and scores are stored in ``<project>/.emclass2d_cache/select/`` keyed by
the optimiser.star path, its size and mtime, the feature code version and the weights'
hash. The project level (not the Class2D job directory) because a Select job directory
is wiped on overwrite and a Class2D directory may be read-only (another user's, or RELION's).

Example::

    feats, scores = features_and_scores(iteration, model, weights_file, project_dir=".")
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from emclass2d.core import ranker_features as rf
from emclass2d.core.accuracy import class_average_accuracies
from emclass2d.core.ctf import compute_ctf, compute_gamma
from emclass2d.core.fourier import frequency_grid, irfft2_centered, rfft2_centered
from emclass2d.core.selection import UNSCORED
from emclass2d.jobtypes.select.inputs import SelectionInput
from emclass2d.jobtypes.select.model import RankerModel, model_inputs, weights_hash

#: Bump when features change, so cached values are recomputed.
FEATURES_VERSION = "1"
CACHE_DIR = Path(".emclass2d_cache") / "select"
#: Particles used to estimate the mean CTF² of a class (RELION re-estimates with 101).
ACCURACY_PARTICLES = 101


def features_for_class(
    average: np.ndarray,
    pixel_size_A: float,
    particle_diameter_A: float,
    class_distribution: float,
    particle_nr: float,
    nr_classes: int,
    estimated_resolution_A: float,
    accuracy_rotation_deg: float,
    accuracy_translation_A: float,
) -> dict[str, Any]:
    """All features of one class as one dict (image + metadata + ``nr_classes``)."""
    feats = rf.class_image_features(average, pixel_size_A, particle_diameter_A)
    feats.update(rf.class_metadata_features(class_distribution, particle_nr, estimated_resolution_A,
                                            accuracy_rotation_deg, accuracy_translation_A,
                                            average.shape[-1], pixel_size_A))
    feats["nr_classes"] = nr_classes
    return feats


def _ctf_params(it: SelectionInput, rows: np.ndarray) -> dict[str, Any]:
    c = it.ctf_parameters(rows)
    return {k: c[k] for k in ("defocus_u_A", "defocus_v_A", "defocus_angle_deg", "voltage_kV", "cs_mm",
                              "amplitude_contrast", "phase_shift_deg")}


def correct_intact_first_peak(it: SelectionInput) -> np.ndarray:
    """Averages divided by a CTF that is 1 beyond its first peak, clipped below at 0.07.

    RELION builds that CTF from the last particle read (a quirk); we use the mean defocus.
    """
    if "rlnDefocusU" not in it.particles:
        return it.averages
    params = _ctf_params(it, np.arange(len(it.particles)))
    mean = {k: float(np.mean(v)) if np.ndim(v) else v for k, v in params.items()}
    X, Y = frequency_grid(it.box_px, it.pixel_size_A)
    gamma = compute_gamma(X, Y, **mean)
    ctf = compute_ctf(X, Y, **mean).astype(np.float64)
    ctf = np.where(np.abs(gamma) < math.pi / 2, ctf, 1.0)
    ctf = np.maximum(ctf, 0.07)
    F = rfft2_centered(it.averages.astype(np.float64)) / ctf
    return irfft2_centered(F, it.box_px).astype(np.float32)


def _mean_ctf2(it: SelectionInput, k: int) -> np.ndarray:
    rows = np.nonzero(it.particles["rlnClassNumber"].to_numpy() == k + 1)[0][:ACCURACY_PARTICLES]
    X, Y = frequency_grid(it.box_px, it.pixel_size_A)
    if "rlnDefocusU" not in it.particles or rows.size == 0:
        return np.ones(X.shape)
    ctf = compute_ctf(X, Y, **_ctf_params(it, rows), intact_first_peak=it.intact_first_peak).astype(np.float64)
    return np.mean(ctf * ctf, axis=0)


def class_features(it: SelectionInput) -> list[dict[str, Any] | None]:
    """Features of every class (``None`` for classes with ≤ 10 particles, never scored)."""
    averages = correct_intact_first_peak(it) if it.intact_first_peak else it.averages
    counts = it.particle_counts
    classes = it.classes
    sigma2 = it.sigma2_noise(1)
    out: list[dict[str, Any] | None] = []
    for k in range(it.nr_classes):
        if counts[k] <= rf.MIN_PARTICLES_SCORED:
            out.append(None)
            continue
        res = float(classes["rlnEstimatedResolution"].iloc[k]) if "rlnEstimatedResolution" in classes else -1.0
        if not res > 0:
            table = it.class_table(k)
            res = (rf.resolution_from_ssnr(table["rlnSsnrMap"].to_numpy(dtype=float), it.box_px, it.pixel_size_A)
                   if table is not None and "rlnSsnrMap" in table else 999.0)
        rot = float(classes["rlnAccuracyRotations"].iloc[k]) if "rlnAccuracyRotations" in classes else 999.0
        trans = float(classes["rlnAccuracyTranslationsAngst"].iloc[k]) if "rlnAccuracyTranslationsAngst" in classes else 999.0
        if (rot > 99 or trans > 99) and counts[k] > 100 and sigma2 is not None:
            rot, trans = class_average_accuracies(averages[k], _mean_ctf2(it, k), sigma2, it.pixel_size_A)
        feats = features_for_class(averages[k], it.pixel_size_A, it.particle_diameter_A,
                                   float(it.class_distribution[k]), float(counts[k]), it.nr_classes, res, rot, trans)
        out.append(feats)
    return out


def score_features(features: list[dict[str, Any] | None], model: RankerModel) -> np.ndarray:
    """Scores ``(K,)``: the model's score for scored classes, :data:`UNSCORED` for the others."""
    scores = np.full(len(features), UNSCORED)
    idx = [k for k, f in enumerate(features) if f is not None]
    if idx:
        scores[idx] = model.predict(model_inputs([features[k] for k in idx]))
    return scores


def _cache_key(it: SelectionInput, weights_file: str | None, project_dir: Path) -> str:
    opt = Path(it.optimiser_path)
    opt = opt if opt.is_absolute() else project_dir / opt
    st = opt.stat()
    model_st = Path(it.model_path).stat()
    parts = [str(opt.resolve()), str(st.st_size), str(st.st_mtime_ns), str(model_st.st_mtime_ns),
             FEATURES_VERSION, weights_hash(weights_file)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def features_and_scores(
    it: SelectionInput,
    model: RankerModel,
    weights_file: str | None,
    project_dir: str | os.PathLike[str],
    log: Any = None,
) -> tuple[list[dict[str, Any] | None], np.ndarray]:
    """Features and scores of every class, from the cache when the inputs are unchanged."""
    project_dir = Path(project_dir)
    path = project_dir / CACHE_DIR / f"{_cache_key(it, weights_file, project_dir)}.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            if log:
                log(f"Features and scores read from the cache {path.relative_to(project_dir)}")
            return data["features"], np.asarray(data["scores"], dtype=np.float64)
        except (ValueError, KeyError, OSError):
            pass  # unreadable cache entry: recompute
    features = class_features(it)
    scores = score_features(features, model)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"optimiser": it.optimiser_path, "features": _jsonable(features),
                                   "scores": scores.tolist()}))
        os.replace(tmp, path)
    except OSError as exc:
        if log:
            log(f"Note: could not write the feature cache ({exc}); the next run recomputes them")
    return features, scores


def _jsonable(features: list[dict[str, Any] | None]) -> list[dict[str, Any] | None]:
    return [None if f is None else {k: (float(v) if isinstance(v, (np.floating, float)) else int(v)
                                        if isinstance(v, (np.integer, int)) else v) for k, v in f.items()}
            for f in features]
