"""Per-class features of 2D class averages, as RELION's class ranker computes them (``ClassRanker::getFeatures``, ``classFeatures::toNormalizedVector``).

Pure functions on host NumPy arrays (a class average is small; features are computed once
per class). The image features work on the average Fourier-resized to 4 Å/px; the mask
radius R is ``min(particle_diameter/8, box/2)`` pixels of that image.

Example::

    img = class_image_features(average, pixel_size_A=3.0, particle_diameter_A=150.0)
    img["protein_area"], img["edge_signal"], img["granulo"]        # area px, fraction, (6,)
    meta = class_metadata_features(0.25, 500, 10.1, 1.5, 0.9, box_px=64, pixel_size_A=3.0)
    vec = normalized_vectors([{**meta, **img}, ...])                 # (K, 24) network input

See also: :mod:`emclass2d.jobtypes.select.run` (reads a Class2D iteration and calls these).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from emclass2d.core.initial import lowpass_raised_cosine
from emclass2d.core.mask import radius_map
from emclass2d.core.fourier import irfft2_centered, rfft2_centered, window_fourier

#: Pixel size (Å) the image features are computed at (``ClassRanker``: uniform 4 Å).
FEATURE_PIXEL_SIZE_A = 4.0
#: Low-pass filter (Å) for the protein/solvent masks (``--lowpass``).
LOWPASS_A = 25.0
#: Inner radius of the ring, as a fraction of R (``--radius_ratio``).
RING_RADIUS_RATIO = 0.95
#: Radii (px) of the disc structuring elements of the granulometry.
GRANULO_RADII_PX = (1, 2, 3, 4, 5, 6)
#: Classes with at most this many particles are not scored (score -999).
MIN_PARTICLES_SCORED = 10
#: Accuracy (deg, Å) given to classes with too few particles to estimate one (``ClassRanker``).
SMALL_CLASS_ACCURACY = (5.0, 8.0)

#: The 24 network inputs in order (RELION's ``classFeatures::toNormalizedVector``); the last three are z-scored per job.
VECTOR_FEATURES: tuple[str, ...] = (
    "accuracy_rotation_deg", "accuracy_translation_A", "weighted_resolution", "relative_resolution",
    "ring_mean", "ring_stddev", "protein_stddev", "solvent_mean", "solvent_stddev",
    "scattered_signal", "edge_signal", "lowpass_mean", "lowpass_stddev", "lowpass_min", "lowpass_max",
    "granulo_1", "granulo_2", "granulo_3", "granulo_4", "granulo_5", "granulo_6",
    "protein_sum", "solvent_sum", "relative_signal_intensity",
)
#: Fixed (mean, std) of the first 21 network inputs (``classFeatures::toNormalizedVector``).
VECTOR_MEAN = np.array([4.352, 3.871, 0.001, 0.061, -0.199, 0.424, 0.744, -0.380, 0.292, 0.024, 0.047,
                        0.116, 0.638, -1.112, 2.990, 837.576, 726.097, 602.175, 483.469, 328.014, 196.059])
VECTOR_STD = np.array([4.759, 3.019, 0.002, 0.088, 0.283, 0.629, 0.585, 0.378, 0.485, 0.075, 0.075,
                       0.182, 0.429, 1.087, 1.758, 1958.823, 2845.330, 3605.858, 4001.972, 4399.578, 4709.751])
#: Number of inputs z-scored across the classes of one job (``localNormalisation``).
N_LOCAL = 3


# ----------------------------------------------------------------------------- image helpers


def feature_box_size(box_px: int, pixel_size_A: float, target_pixel_size_A: float = FEATURE_PIXEL_SIZE_A) -> int:
    """Even box of the 4-Å image: ``round(N·px/4)`` made even (at least 2)."""
    n = int(round(box_px * pixel_size_A / target_pixel_size_A))
    n += n % 2
    return max(n, 2)


def fourier_resize(image: np.ndarray, new_box_px: int) -> np.ndarray:
    """Resize ``(N, N)`` to ``(M, M)`` by cropping or zero-padding its transform.

    Pixel values keep their scale (a constant image stays the same constant).
    """
    image = np.asarray(image, dtype=np.float64)
    n = image.shape[-1]
    if new_box_px == n:
        return image.copy()
    return irfft2_centered(window_fourier(rfft2_centered(image), new_box_px), new_box_px)


def lowpass_filter(image: np.ndarray, pixel_size_A: float, lowpass_A: float = LOWPASS_A, edge_shells: float = 2.0) -> np.ndarray:
    """Low-pass ``(N, N)`` at ``lowpass_A`` with a raised-cosine edge ``edge_shells`` wide.

    As RELION's ``lowPassFilterMap``: shell ``round(N·px/lowpass)`` is the centre of the edge.
    """
    return lowpass_raised_cosine(np.asarray(image, dtype=np.float64), lowpass_A, pixel_size_A, edge_shells)


def moments(values: np.ndarray) -> dict[str, float]:
    """sum, mean, stddev, skew, kurt of ``values`` (population; all 0 when empty).

    skew = m3·sqrt(n)/S2^1.5 and kurt = m4·n/S2² with S2 = Σ(x−mean)² (``calculateMoments``;
    kurtosis is not the excess).
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    n = x.size
    if n == 0:
        return {"sum": 0.0, "mean": 0.0, "stddev": 0.0, "skew": 0.0, "kurt": 0.0}
    mean = x.mean()
    d = x - mean
    s2 = float(np.sum(d * d))
    skew = float(np.sum(d**3) * math.sqrt(n) / s2**1.5) if s2 > 0 else 0.0
    kurt = float(np.sum(d**4) * n / s2**2) if s2 > 0 else 0.0
    return {"sum": float(x.sum()), "mean": float(mean), "stddev": math.sqrt(s2 / n), "skew": skew, "kurt": kurt}


def protein_solvent_masks(lowpassed: np.ndarray, radius_px: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Protein mask, solvent mask (bool ``(n, n)``) and number of scattered-signal pixels.

    Pixels of the low-passed image above 0.05·stddev, inside the disc of radius R, are
    grouped into 4-connected islands. Islands reaching the central disc of radius 0.6·R
    are protein when more than 10 % of that disc's area (0.1·π·(0.6R)²) lies in them, else
    scattered signal; islands not reaching it are ignored (they are never seeded).
    Solvent = disc R minus protein (``ClassRanker::makeSolventMasks``).
    """
    lp = np.asarray(lowpassed, dtype=np.float64)
    r = radius_map(lp.shape[-1], dtype=np.float64)
    disc = r <= radius_px
    inner = r <= 0.6 * radius_px
    above = (lp > 0.05 * lp.std()) & disc
    labels, n_islands = ndimage.label(above)  # default structure: 4-connected in 2D
    protein = np.zeros_like(above)
    n_scattered = 0
    if n_islands:
        in_inner = np.bincount(labels[inner].ravel(), minlength=n_islands + 1)
        size = np.bincount(labels.ravel(), minlength=n_islands + 1)
        min_inner = 0.1 * math.pi * 0.36 * radius_px * radius_px
        is_protein = in_inner > min_inner
        seeded = in_inner > 0
        is_protein[0] = seeded[0] = False
        protein = is_protein[labels]
        n_scattered = int(size[seeded & ~is_protein].sum())
    return protein, disc & ~protein, n_scattered


def granulometry(image: np.ndarray, radii_px: Sequence[int] = GRANULO_RADII_PX) -> np.ndarray:
    """Sum of the grey opening of ``image`` by a disc of each radius: ``(len(radii),)``.

    Opening = erosion then dilation with a flat disc structuring element; pixels outside the
    image are ignored (never the minimum of an erosion nor the maximum of a dilation).
    """
    img = np.asarray(image, dtype=np.float64)
    out = np.empty(len(radii_px))
    big = np.finfo(np.float64).max
    for i, rad in enumerate(radii_px):
        c = np.arange(-rad, rad + 1)
        footprint = (c[:, None] ** 2 + c[None, :] ** 2) <= rad * rad
        eroded = ndimage.grey_erosion(img, footprint=footprint, mode="constant", cval=big)
        opened = ndimage.grey_dilation(eroded, footprint=footprint, mode="constant", cval=-big)
        out[i] = opened.sum()
    return out


# ----------------------------------------------------------------------------- per-class features


def class_image_features(average: np.ndarray, pixel_size_A: float, particle_diameter_A: float) -> dict[str, Any]:
    """Image features of one class average ``(N, N)`` (RELION's ``ClassRanker::getFeatures``, "Image features").

    Returns ring_*, lowpass_*, protein_*, solvent_* moments, protein_area (px),
    scattered_signal, edge_signal, relative_signal_intensity, granulo_1..6, radius_px
    and box_px (of the 4-Å image).
    """
    average = np.asarray(average, dtype=np.float64)
    box = feature_box_size(average.shape[-1], pixel_size_A)
    img = fourier_resize(average, box)
    radius = min(particle_diameter_A / (2 * FEATURE_PIXEL_SIZE_A), box / 2)
    r = radius_map(box, dtype=np.float64)
    disc = r <= radius
    feats: dict[str, Any] = {"box_px": box, "radius_px": radius}

    ring = moments(img[(r >= RING_RADIUS_RATIO * radius) & disc])
    feats.update({f"ring_{k}": v for k, v in ring.items()})

    lp = lowpass_filter(img, FEATURE_PIXEL_SIZE_A)
    feats.update(lowpass_mean=float(lp.mean()), lowpass_stddev=float(lp.std()),
                 lowpass_min=float(lp.min()), lowpass_max=float(lp.max()))

    protein, solvent, n_scattered = protein_solvent_masks(lp, radius)
    area = int(protein.sum())
    feats["protein_area"] = area
    feats["solvent_area"] = int(solvent.sum())
    feats["scattered_signal"] = n_scattered / (n_scattered + area + 1.0)
    edge = np.rint(r) == round(radius)
    feats["edge_signal"] = float(protein[edge].mean()) if edge.any() else 0.0
    pm, sm = moments(img[protein]), moments(img[solvent])
    feats.update({f"protein_{k}": v for k, v in pm.items()})
    feats.update({f"solvent_{k}": v for k, v in sm.items()})
    feats["relative_signal_intensity"] = pm["sum"] - sm["mean"] * area
    for i, g in enumerate(granulometry(img), start=1):
        feats[f"granulo_{i}"] = float(g)
    return feats


def resolution_from_ssnr(ssnr: np.ndarray, box_px: int, pixel_size_A: float) -> float:
    """Å resolution of the shell before the first with SSNR < 1; 2·px if none (``findResolution``)."""
    ssnr = np.asarray(ssnr, dtype=np.float64)
    below = np.nonzero(ssnr[1:] < 1.0)[0]
    if below.size == 0:
        return 2.0 * pixel_size_A
    shell = int(below[0])  # shell index before the first failing shell (which is below[0] + 1)
    return box_px * pixel_size_A / shell if shell > 0 else 999.0


def class_metadata_features(
    class_distribution: float,
    particle_nr: float,
    estimated_resolution_A: float,
    accuracy_rotation_deg: float,
    accuracy_translation_A: float,
    box_px: int,
    pixel_size_A: float,
) -> dict[str, float]:
    """Metadata features: distribution, count, resolution terms, accuracies (RELION's ``ClassRanker::getFeatures``).

    weighted_resolution = (1/res²)/ln(particle_nr); relative_resolution = res/(N·px).
    Accuracies above 99 (not estimated) must be replaced by the caller beforehand
    (see :func:`expected_accuracies`); classes with at most 100 particles get 5° and 8 Å.
    """
    res = float(estimated_resolution_A)
    n = max(float(particle_nr), 1.0)
    rot, trans = float(accuracy_rotation_deg), float(accuracy_translation_A)
    if (rot > 99 or trans > 99) and n <= 100:
        rot, trans = SMALL_CLASS_ACCURACY
    return {
        "class_distribution": float(class_distribution),
        "particle_nr": float(particle_nr),
        "estimated_resolution_A": res,
        "weighted_resolution": (1.0 / (res * res)) / math.log(n) if n > 1 else 0.0,
        "relative_resolution": res / (box_px * pixel_size_A),
        "accuracy_rotation_deg": rot,
        "accuracy_translation_A": trans,
    }


# ----------------------------------------------------------------------------- network input


def normalized_vectors(features: Sequence[Mapping[str, float]]) -> np.ndarray:
    """The ``(K, 24)`` normalised network input of the scored classes of one job (RELION's ``classFeatures::toNormalizedVector``).

    The first 21 inputs use RELION's fixed means/stds; the last three are z-scored across
    the given classes (population std; 0 when the std is below 1e-10).
    """
    if len(features) == 0:
        return np.zeros((0, len(VECTOR_FEATURES)))
    raw = np.array([[float(f[name]) for name in VECTOR_FEATURES] for f in features], dtype=np.float64)
    out = np.empty_like(raw)
    n_fixed = len(VECTOR_FEATURES) - N_LOCAL
    out[:, :n_fixed] = (raw[:, :n_fixed] - VECTOR_MEAN) / VECTOR_STD
    local = raw[:, n_fixed:]
    std = local.std(axis=0)
    safe = np.where(std < 1e-10, 1.0, std)
    out[:, n_fixed:] = np.where(std < 1e-10, 0.0, (local - local.mean(axis=0)) / safe)
    return out
