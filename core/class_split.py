"""Re-seeding an emptied class by splitting a heterogeneous one (split-and-merge EM).

Maximum-likelihood 2D classification has a known local optimum: in the first iterations a
few classes attract particles of two or three views ("attractor" classes) while the other
classes empty out; an empty class receives no more particles and never recovers. RELION's
VDAM copies the class with the largest gradient into an inactive class; two identical
copies then share the same particles and tend to collapse again.

Here the emptied class is re-seeded from the *particles* of a heterogeneous class instead:
its recently assigned particles are brought into the class frame with their current poses
(translate by +origin, rotate by psi; RELION's convention, ``relion_display
--apply_orient``); their departures from the CTF-modulated class average, up to the
current resolution and inside the mask, have principal components that show the main
variation inside the class (for an attractor class: the differences between the views it
mixes). A two-way split along it (2-means in the
leading components, started from the sign of the first) gives two subsets; each
subset's CTF-weighted average becomes one of the two classes. This is the split step of
split-and-merge EM (Ueda et al., Neural Computation 12, 2000) applied to aligned images.

Which class to split is decided by :func:`split_gain`: the leading eigenvalue of the
class's residual covariance against that of the same residuals turned by random angles
(same noise, no shared structure); a gain near 1 means the class holds one view plus
noise and splitting it would only split a view.

Example::

    aligned = class_frame_images(images, origin_px, psi_deg)
    feats, null = split_features(aligned, ctf_rot, reference, radius_px=23, max_shell=12)
    gain = split_gain(feats, null)                                # > 1.5: heterogeneous
    group = two_way_split(feats, seed=3)                          # (B,) bool
    sums = subset_sums(translated, ctf_rot, psi_deg, group)       # ReferenceSums of 2 classes
    refs = subset_averages(sums, max_shell=12)                    # (2, N, N)
"""
from __future__ import annotations

from typing import Any

import numpy as np

from emclass2d.core.backend import array_module, to_host
from emclass2d.core.center import rotate_images, translate_images
from emclass2d.core.fourier import frequency_indices, irfft2_centered, radial_average, rfft2_centered
from emclass2d.core.initial import ReferenceSums, add_reference_sums
from emclass2d.core.mask import soft_edge_weight

#: Leading components used by the 2-means split.
NR_SPLIT_COMPONENTS = 3
#: Fewest particles a subset may keep for its average to seed a class.
MIN_SUBSET = 10


def class_frame_images(images: Any, origin_px: Any, psi_deg: Any) -> Any:
    """Particles (B, N, N) brought onto their class: translated by +o, then rotated by psi."""
    xp = array_module(images)
    return rotate_images(translate_images(xp.asarray(images, dtype=xp.float32), origin_px), psi_deg)


def _band_components(images: Any, ctf: Any, max_shell: int) -> np.ndarray:
    """(B, 2·M) float64: real and imaginary parts of CTF·FT(images) up to ``max_shell``
    (the x = 0 duplicates and the origin left out)."""
    xp = array_module(images)
    n = images.shape[-1]
    f = rfft2_centered(images.astype(xp.float32)) * ctf
    kx, ky = frequency_indices(n, xp)
    keep = (kx * kx + ky * ky <= max_shell * max_shell) & ~((kx == 0) & (ky < 0)) & ~((kx == 0) & (ky == 0))
    sel = f[:, keep]
    return np.asarray(to_host(xp.concatenate([sel.real, sel.imag], axis=1).astype(xp.float64)))


def split_features(aligned: Any, ctf_class_frame: Any | None, reference: Any, radius_px: float, max_shell: int,
                   edge_px: float = 3.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Feature vectors (B, 2·M) float64 of the particles' departures from their class average, and a null.

    Per particle (class frame): the prediction P = CTF·reference; the residual
    X − s·P with s the least-squares scale (so differences in contrast between particles
    of one view are not mistaken for a second view), soft-masked at ``radius_px``; its
    transform times the CTF (a matched filter: each frequency weighted by how much signal
    the particle holds there), up to ``max_shell``. A class of one view gives noise-like
    features; one mixing views gives features with the views' differences in common.

    The null features are the same residuals each rotated by a random angle first: the
    noise (stationary, in a round mask) keeps its statistics while differences shared by
    many particles no longer line up, which is what :func:`split_gain` compares against.
    """
    xp = array_module(aligned, reference)
    b, n = aligned.shape[0], aligned.shape[-1]
    w = soft_edge_weight(n, radius_px, edge_px, xp)
    ctf = xp.ones((b, n, n // 2 + 1), dtype=xp.float32) if ctf_class_frame is None else xp.asarray(ctf_class_frame)
    pred = irfft2_centered(ctf * rfft2_centered(xp.asarray(reference, dtype=xp.float32))[None], n)
    xw, pw = aligned * w, pred * w
    pp = xp.sum(pw * pw, axis=(-2, -1))
    scale = xp.where(pp > 0, xp.sum(xw * pw, axis=(-2, -1)) / xp.where(pp > 0, pp, 1.0), 0.0)
    residual = xw - scale[:, None, None] * pw
    angles = np.random.default_rng(seed).uniform(0.0, 360.0, size=b)
    turned = rotate_images(residual, xp.asarray(angles))
    return _band_components(residual, ctf, max_shell), _band_components(turned, ctf, max_shell)


def _centred_svd(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SVD of the features centred and scaled to unit variance per component.

    The noise in the components is far from white (coloured noise, CTF weighting);
    standardising makes pure noise isotropic, so its eigenvalues follow the
    Marchenko-Pastur law that :func:`split_gain` compares against.
    """
    x = features - features.mean(axis=0, keepdims=True)
    sd = x.std(axis=0, keepdims=True)
    x = x / np.where(sd > 0, sd, 1.0)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    return u, s, vt


def split_gain(features: np.ndarray, null_features: np.ndarray) -> float:
    """Leading eigenvalue of the (standardised) features over that of the null features; 0 if too few rows.

    About 1 for a class of one view (its departures from the average are noise), well
    above 1 where a shared difference (a second view) runs through the class.
    """
    b = features.shape[0]
    if b < 2 * MIN_SUBSET or features.shape[1] < 2:
        return 0.0
    _, s, _ = _centred_svd(features)
    _, s0, _ = _centred_svd(null_features)
    return float((s[0] / s0[0]) ** 2) if s0[0] > 0 else 0.0


def two_way_split(features: np.ndarray, seed: int = 0, n_iter: int = 20) -> np.ndarray:
    """Two groups (B,) bool by 2-means in the leading components, started from the sign of the first.

    Deterministic for a given ``seed`` (only ties of the start use it).
    """
    b = features.shape[0]
    u, s, _ = _centred_svd(features)
    c = min(NR_SPLIT_COMPONENTS, u.shape[1])
    z = u[:, :c] * s[:c]
    rng = np.random.default_rng(seed)
    group = z[:, 0] > 0
    if group.all() or not group.any():
        group = rng.random(b) < 0.5
    for _ in range(n_iter):
        if group.all() or not group.any():
            break
        ca, cb = z[group].mean(axis=0), z[~group].mean(axis=0)
        new = np.sum((z - ca) ** 2, axis=1) < np.sum((z - cb) ** 2, axis=1)
        if np.array_equal(new, group):
            break
        group = new
    return group


def subset_sums(translated: Any, ctf_rotated: Any | None, psi_deg: Any, group: Any) -> ReferenceSums:
    """CTF-weighted sums of the two subsets (class 0 = ``group``, class 1 = the rest).

    ``translated``: particles translated by +o (not yet rotated); ``ctf_rotated``: their
    CTFs in the class frame (defocus angle + psi) or None.
    """
    xp = array_module(translated)
    n = translated.shape[-1]
    cls = xp.where(xp.asarray(group), 0, 1)
    return add_reference_sums(ReferenceSums.zeros(n, 2, xp), translated, ctf_rotated, cls, psi_deg)


def subset_averages(sums: ReferenceSums, max_shell: int, wiener: float = 0.1) -> Any:
    """Averages (2, N, N) of :func:`subset_sums`: data / (weight + wiener·shell-mean weight), low-passed.

    Frequencies beyond ``max_shell`` are zeroed with a raised-cosine edge of 2 shells, so
    the averages carry no more resolution than the model has.
    """
    xp = array_module(sums.weight)
    n = sums.weight.shape[-2]
    kx, ky = frequency_indices(n, xp)
    r = xp.sqrt((kx * kx + ky * ky).astype(xp.float64))
    shell = xp.minimum(xp.rint(r).astype(xp.int64), n // 2)
    mean_w = radial_average(sums.weight, n, n // 2 + 1)
    denom = sums.weight + wiener * mean_w[:, shell]
    f = xp.where(denom > 0, sums.data / xp.where(denom > 0, denom, 1.0), 0.0)
    t = xp.clip((r - (max_shell - 1.0)) / 2.0, 0.0, 1.0)
    f = f * (0.5 + 0.5 * xp.cos(np.pi * t))
    return irfft2_centered(f.astype(xp.complex64), n)


def match_power(images: Any, target: Any, radius_px: float) -> Any:
    """Scale each image (K, N, N) so its power inside ``radius_px`` equals that of ``target`` (N, N)."""
    xp = array_module(images, target)
    n = images.shape[-1]
    w = soft_edge_weight(n, radius_px, 0.0, xp)
    tp = xp.sqrt(xp.sum((target * w) ** 2))
    ip = xp.sqrt(xp.sum((images * w) ** 2, axis=(-2, -1)))
    scale = xp.where(ip > 0, tp / xp.where(ip > 0, ip, 1.0), 1.0)
    return (images * scale[:, None, None]).astype(images.dtype)


__all__ = ["class_frame_images", "split_features", "split_gain", "two_way_split", "subset_sums", "subset_averages",
           "match_power", "MIN_SUBSET", "NR_SPLIT_COMPONENTS"]
