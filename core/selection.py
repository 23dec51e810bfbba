"""Which 2D classes to keep, and how to regroup the kept particles (RELION's ``ClassRanker::performRanking``, ``regroupSelectedParticles``).

Pure functions on per-class arrays (index k = class k+1). Unscored classes (too few
particles) carry the score :data:`UNSCORED` and are never selected by score nor topped up.

Example::

    counts = count_particles(class_number_column, nr_classes=50)
    keep = select_by_score(scores, min_score=0.5)
    keep = top_up(keep, scores, counts, min_particles=5000)       # RELION's top-up rule
    groups = regroup(group_number, optics_group, scale_of_group, nr_groups=20)

See also: :mod:`emclass2d.jobtypes.select.run`.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

#: Score of a class that was not scored (RELION writes −999).
UNSCORED = -999.0
#: Smallest group regrouping may create (RELION refuses smaller targets).
MIN_GROUP_SIZE = 10


class SelectionError(ValueError):
    """A selection or regrouping request that cannot be met (message says why and what to do)."""


def count_particles(class_numbers: np.ndarray, nr_classes: int) -> np.ndarray:
    """Particles per class ``(K,)`` counted from the rlnClassNumber column (1-based)."""
    c = np.asarray(class_numbers, dtype=np.int64)
    c = c[(c >= 1) & (c <= nr_classes)]
    return np.bincount(c - 1, minlength=nr_classes)[:nr_classes]


def select_by_score(scores: np.ndarray, min_score: float = 0.5, max_score: float = math.inf) -> np.ndarray:
    """Classes with ``min_score <= score <= max_score`` (unscored classes never)."""
    s = np.asarray(scores, dtype=np.float64)
    return (s != UNSCORED) & (s >= min_score) & (s <= max_score)


def top_up(selected: np.ndarray, scores: np.ndarray, particle_counts: np.ndarray,
           min_particles: int = -1, min_classes: int = -1) -> np.ndarray:
    """Add unselected scored classes by decreasing score until the minima are met.

    RELION's rule (``performRanking``): the particle minimum first, then the class minimum
    (a minimum ≤ 0 is off). Particles are the real counts per class, not pdf_class × N.
    """
    sel = np.asarray(selected, dtype=bool).copy()
    s = np.asarray(scores, dtype=np.float64)
    counts = np.asarray(particle_counts)
    # Stable order: equal scores keep class order.
    candidates = [k for k in np.argsort(-s, kind="stable") if s[k] != UNSCORED]
    if min_particles > 0:
        for k in candidates:
            if counts[sel].sum() >= min_particles:
                break
            sel[k] = True
    if min_classes > 0:
        for k in candidates:
            if sel.sum() >= min_classes:
                break
            sel[k] = True
    return sel


def select_by_range(values: np.ndarray, min_value: float | None = None, max_value: float | None = None) -> np.ndarray:
    """Classes whose value lies in ``[min_value, max_value]`` (None = no bound; NaN never)."""
    v = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(v)
    if min_value is not None:
        keep &= v >= min_value
    if max_value is not None:
        keep &= v <= max_value
    return keep


def parse_class_numbers(text: str, nr_classes: int) -> np.ndarray:
    """Selection mask ``(K,)`` from ``"1,3, 5-8"``; raises :class:`SelectionError` on bad entries."""
    sel = np.zeros(nr_classes, dtype=bool)
    for part in filter(None, (p.strip() for p in re.split(r"[,\s]+", text or ""))):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise SelectionError(f"class numbers: '{part}' is not a number or a range like 5-8")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo < 1 or hi > nr_classes or lo > hi:
            raise SelectionError(f"class numbers: '{part}' is outside 1-{nr_classes}")
        sel[lo - 1:hi] = True
    return sel


def regroup(
    group_numbers: np.ndarray,
    optics_groups: np.ndarray,
    group_scale: Mapping[int, float],
    nr_groups: int,
    min_group_size: int = MIN_GROUP_SIZE,
) -> np.ndarray:
    """New group ids ``(P,)`` (1-based) for the selected particles, about ``nr_groups`` groups.

    As RELION's "Regroup particles" (``regroupSelectedParticles``), particles of similar intensity scale end up
    together: within each optics group, particles are ordered by the
    rlnGroupScaleCorrection of their old group and cut into consecutive groups. Unlike
    RELION the cuts are placed so the number of groups is the request (optics groups share
    it in proportion to their particles, at least one each) and every group has about the
    same size; a cut moves to the nearest old-group boundary when that is within 20 % of
    the target size, so old groups stay whole where possible.
    Raises :class:`SelectionError` if a group would have fewer than ``min_group_size``
    particles.
    """
    groups = np.asarray(group_numbers, dtype=np.int64)
    optics = np.asarray(optics_groups, dtype=np.int64)
    n = groups.size
    if nr_groups < 1:
        raise SelectionError(f"number of groups must be at least 1 (got {nr_groups})")
    if n < nr_groups * min_group_size:
        raise SelectionError(
            f"{n} selected particles cannot form {nr_groups} groups of at least {min_group_size} "
            f"particles: ask for at most {max(n // min_group_size, 1)} groups")
    optics_ids, optics_counts = np.unique(optics, return_counts=True)
    share = _allocate(optics_counts, nr_groups, np.maximum(optics_counts // min_group_size, 1))
    out = np.zeros(n, dtype=np.int64)
    next_id = 1
    for og, n_og, m in zip(optics_ids, optics_counts, share):
        idx = np.nonzero(optics == og)[0]
        scale = np.array([float(group_scale.get(int(g), 1.0)) for g in groups[idx]])
        order = idx[np.lexsort((idx, groups[idx], scale))]
        cuts = _cuts(groups[order], int(m), min_group_size)
        sizes = np.diff(np.concatenate(([0], cuts, [n_og])))
        if sizes.min() < min_group_size:
            raise SelectionError(
                f"optics group {og} has {n_og} selected particles: a group of {sizes.min()} would "
                f"be below {min_group_size} particles; ask for fewer groups")
        local = np.searchsorted(cuts, np.arange(n_og), side="right")
        out[order] = next_id + local
        next_id += int(m)
    return out


def _allocate(counts: np.ndarray, total: int, cap: np.ndarray) -> np.ndarray:
    """Split ``total`` over bins in proportion to ``counts`` (largest remainder, 1…cap each)."""
    counts = np.asarray(counts, dtype=np.float64)
    want = counts / counts.sum() * total
    share = np.clip(np.floor(want).astype(int), 1, cap)
    while share.sum() < total and (share < cap).any():
        share[np.argmax(np.where(share < cap, want - share, -np.inf))] += 1
    while share.sum() > total and (share > 1).any():
        k = np.argmax(np.where(share > 1, share - want, -np.inf))
        share[k] -= 1
    return share


def _cuts(sorted_groups: np.ndarray, m: int, min_size: int) -> np.ndarray:
    """Start indices of groups 2…m over a list ordered by old group; snapped to old-group edges."""
    n = sorted_groups.size
    if m <= 1:
        return np.zeros(0, dtype=np.int64)
    target = n / m
    ideal = [int(round(j * target)) for j in range(1, m)] + [n]
    edges = np.nonzero(np.diff(sorted_groups) != 0)[0] + 1
    cuts: list[int] = []
    for j in range(m - 1):
        prev = cuts[-1] if cuts else 0
        cut = ideal[j]
        if edges.size:
            near = int(edges[np.argmin(np.abs(edges - ideal[j]))])
            # Snap only when neither neighbouring group would drop below the minimum size.
            if abs(near - ideal[j]) <= 0.2 * target and near - prev >= min_size and ideal[j + 1] - near >= min_size:
                cut = near
        cuts.append(cut)
    return np.asarray(cuts, dtype=np.int64)


def group_names(group_ids: np.ndarray, nr_groups: int) -> list[str]:
    """``group_<id>`` zero-padded to floor(log10(nr_groups))+1 digits, as RELION names them."""
    width = int(math.floor(math.log10(max(nr_groups, 1)))) + 1
    return [f"group_{int(g):0{width}d}" for g in group_ids]


def compact_group_numbers(group_numbers: Sequence[int] | np.ndarray) -> np.ndarray:
    """Renumber group ids 1…G in order of first appearance (consistent over a subset)."""
    g = np.asarray(group_numbers)
    _, first, inverse = np.unique(g, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(1, first.size + 1)
    return rank[inverse]
