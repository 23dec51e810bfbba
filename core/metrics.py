"""Agreement of a classification with known truth: adjusted Rand index, class-view matching.

Example::

    adjusted_rand_index(truth_view, rlnClassNumber)          # 1.0 = same partition
    class_purity(truth_view, rlnClassNumber)                 # 1.0 = no class mixes views
    views_found(truth_view, rlnClassNumber)                  # views with a class of their own
    scores = class_view_scores(classes, sim.view_projections) # (K, V) best correlation
    scores.max(axis=0)                                       # how well each view was found

See also: :mod:`emclass2d.core.simulate` (truth tables).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from emclass2d.core.center import rotate_images


def contingency_table(labels_a: Any, labels_b: Any) -> np.ndarray:
    """Counts ``n_ij`` of items with label i in ``labels_a`` and j in ``labels_b`` (int64).

    Labels may be any hashable values (ints, strings); rows/columns follow sorted unique labels.
    Raises ValueError when the lengths differ.
    """
    a = np.asarray(labels_a)
    b = np.asarray(labels_b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"labels must be two 1-D sequences of equal length (got {a.shape} and {b.shape})")
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    table = np.zeros((ia.max(initial=-1) + 1, ib.max(initial=-1) + 1), dtype=np.int64)
    np.add.at(table, (ia, ib), 1)
    return table


def _pairs(x: np.ndarray) -> float:
    x = x.astype(np.float64)
    return float((x * (x - 1) / 2).sum())


def adjusted_rand_index(labels_a: Any, labels_b: Any) -> float:
    """Adjusted Rand index (Hubert & Arabie) of two partitions; 1 = identical, ~0 = chance.

    ARI = (Σ C(n_ij,2) − E) / (½(Σ C(a_i,2) + Σ C(b_j,2)) − E), E = Σ C(a_i,2)·Σ C(b_j,2)/C(n,2).
    Returns 1.0 when both partitions are trivial in the same way (nothing to adjust).
    """
    table = contingency_table(labels_a, labels_b)
    n = int(table.sum())
    if n < 2:
        return 1.0
    sum_ij = _pairs(table)
    sum_a = _pairs(table.sum(axis=1))
    sum_b = _pairs(table.sum(axis=0))
    expected = sum_a * sum_b / (n * (n - 1) / 2)
    max_index = 0.5 * (sum_a + sum_b)
    if max_index == expected:
        return 1.0
    return (sum_ij - expected) / (max_index - expected)


def class_purity(truth: Any, classes: Any) -> float:
    """Fraction of items whose class's most frequent true label is their own.

    1.0 when no class mixes labels, whatever the number of classes per label: splitting a
    view over two classes keeps purity at 1 (and lowers the adjusted Rand index), merging
    two views into one class lowers it. Ties go to the smallest label.
    """
    table = contingency_table(classes, truth)
    n = int(table.sum())
    return float(table.max(axis=1).sum() / n) if n else 1.0


def views_found(truth: Any, classes: Any, min_purity: float = 0.9) -> int:
    """Number of distinct true labels that are the majority of some class at least ``min_purity`` pure."""
    table = contingency_table(classes, truth)
    size = table.sum(axis=1)
    pure = table.max(axis=1) >= min_purity * np.maximum(size, 1)
    return int(np.unique(table.argmax(axis=1)[pure & (size > 0)]).size)


def _normalised(images: np.ndarray, radius_px: float | None) -> np.ndarray:
    n = images.shape[-1]
    x = images.astype(np.float64)
    if radius_px is not None:
        c = np.arange(n) - n // 2
        disc = (c[:, None] ** 2 + c[None, :] ** 2) <= radius_px**2
        x = x * disc
        x = x - (x.sum(axis=(-2, -1), keepdims=True) / disc.sum()) * disc
    else:
        x = x - x.mean(axis=(-2, -1), keepdims=True)
    norm = np.sqrt((x * x).sum(axis=(-2, -1), keepdims=True))
    return x / np.where(norm > 0, norm, 1.0)


def class_view_scores(classes: Any, views: Any, angle_step_deg: float = 5.0, radius_px: float | None = None) -> np.ndarray:
    """Best normalised correlation (K, V) of each class with each view over rotations and shifts.

    classes (K, N, N), views (V, N, N), host arrays. Each view is rotated in steps of
    ``angle_step_deg``; for each rotation the cyclic cross-correlation over all shifts is
    taken (FFT) and the maximum kept. Images are mean-subtracted (inside ``radius_px`` if
    given) and scaled to unit norm, so 1 means identical up to rotation, shift and scale.
    """
    c = _normalised(np.asarray(classes), radius_px)
    v = np.asarray(views, dtype=np.float32)
    angles = np.arange(0.0, 360.0, angle_step_deg)
    fc = np.fft.rfft2(c)
    best = np.full((c.shape[0], v.shape[0]), -np.inf)
    for j in range(v.shape[0]):
        rot = rotate_images(np.repeat(v[j:j + 1], len(angles), axis=0), angles)
        fr = np.fft.rfft2(_normalised(rot, radius_px))
        cc = np.fft.irfft2(fc[:, None] * np.conj(fr[None]), s=c.shape[-2:])
        best[:, j] = cc.reshape(cc.shape[0], -1).max(axis=1)
    return best
