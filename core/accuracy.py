"""Expected orientation accuracy of each class (rlnAccuracyRotations / rlnAccuracyTranslationsAngst, RELION's ``MlOptimiser::calculateExpectedAngularErrors``).

For a few particles (their CTF, group scale and noise spectrum) and each populated class,
the class is projected at a trial psi ``psi0`` and compared with a copy that is rotated
by a growing psi error (or shifted by a growing offset error, along x or y). The error
at which the two predictions become distinguishable,

    Σ_j scale²·CTF_j²·|P_j − P'_j|² / (2σ²_j) > 4.60517   (χ², p = 0.01),

summed over the current-size half-plane pixels (shell > 0), is that particle's accuracy;
errors are capped at 30° / 10 px. The per-class mean over the particles is the class's
accuracy; classes with pdf_class < 0.01 get 999.

The errors grow in RELION's steps (psi 0.05° up to 5°, offsets 0.1 px up to 2 px). Offset
errors need no new projection (a shift only changes phases), so all of them are
evaluated at once; psi errors are evaluated a block of steps at a time for the
(class, particle) pairs not yet decided, which gives RELION's first-exceeding error.

Example::

    psi0, axis = trial_poses(10, random_seed=1, iteration=3)
    acc = expected_accuracies(refs, pdf_class, ctf, sigma2, current_size=48,
                              psi0_deg=psi0, shift_axis=axis, pixel_size_A=2.0)
    acc.rot_deg, acc.trans_A                        # (K,), (K,)

:func:`class_average_accuracies` is the class ranker's simplified estimate from one class
average and a mean CTF², used where a Class2D run left no accuracies (999).

See also: :mod:`emclass2d.core.projector`, :mod:`emclass2d.core.estep` (pixel sets).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from emclass2d.core.backend import array_module, to_host
from emclass2d.core.fourier import rfft2_centered, shell_index
from emclass2d.core.estep.pixels import pixel_set
from emclass2d.core.projector import make_projector, project

#: χ² quantile of p = 0.01 for two degrees of freedom, -ln(0.01) (RELION's threshold).
SNR_THRESHOLD = 4.60517
#: Largest psi error considered (deg) and largest offset error (px).
MAX_PSI_ERROR_DEG = 30.0
MAX_SHIFT_ERROR_PX = 10.0
#: Classes below this fraction are not evaluated (999 is written).
MIN_PDF_CLASS = 0.01
#: Value written for classes that were not evaluated.
UNKNOWN = 999.0
#: Particles used (the first ones of the data set).
N_PARTICLES = 10
#: Psi errors evaluated per round; most pairs are decided in the first one or two.
_PSI_BLOCK = 8
#: Complex elements per projection call (bounds temporaries to a few tens of MB).
_CHUNK_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class Accuracies:
    """Per-class accuracies (host float64 arrays): rot_deg (K,), trans_A (K,); 999 = not evaluated."""

    rot_deg: np.ndarray
    trans_A: np.ndarray


def _psi_step(error_deg: float) -> float:
    for limit, step in ((0.2, 0.05), (1.0, 0.1), (2.0, 0.2), (5.0, 0.5), (10.0, 1.0), (20.0, 2.0)):
        if error_deg < limit:
            return step
    return 5.0


def _shift_step(error_px: float) -> float:
    for limit, step in ((1.0, 0.1), (2.0, 0.2), (5.0, 0.5)):
        if error_px < limit:
            return step
    return 1.0 if error_px < 10.0 else 2.0


def _schedule(step_of, cap: float) -> np.ndarray:
    """Errors tried in order, e_{i+1} = e_i + step(e_i), from the first step until >= cap."""
    out = []
    e = 0.0
    while e < cap:
        e = round(e + step_of(e), 9)  # rounding keeps 0.05-steps exact, so the step changes where intended
        out.append(e)
    return np.asarray(out, dtype=np.float64)


def psi_error_schedule(cap_deg: float = MAX_PSI_ERROR_DEG) -> np.ndarray:
    """Psi errors tried (deg): 0.05, 0.10, … growing to 5° steps, last one >= ``cap_deg``."""
    return _schedule(_psi_step, cap_deg)


def shift_error_schedule(cap_px: float = MAX_SHIFT_ERROR_PX) -> np.ndarray:
    """Offset errors tried (px): 0.1, 0.2, … growing to 2 px steps, last one >= ``cap_px``."""
    return _schedule(_shift_step, cap_px)


def trial_poses(n_particles: int, random_seed: int, iteration: int) -> tuple[np.ndarray, np.ndarray]:
    """Random start psi (deg, [0, 360)) and shift axis (0 = x, 1 = y) per particle, seeded."""
    rng = np.random.default_rng(np.random.SeedSequence([abs(int(random_seed)), int(iteration), 2131]))
    return rng.uniform(0.0, 360.0, size=n_particles), rng.integers(0, 2, size=n_particles)


def _project_rows(proj: Any, cls: Any, psi_deg: Any, pix: Any, r_limit: float, rows_per_call: int) -> Any:
    """Projections (R, J) of classes ``cls`` at ``psi_deg``, a bounded number of rows per call."""
    xp = array_module(proj.data)
    r = int(cls.shape[0])
    out = xp.empty((r, pix.n), dtype=proj.data.dtype)
    for s in range(0, r, rows_per_call):
        out[s: s + rows_per_call] = project(proj, cls[s: s + rows_per_call], psi_deg[s: s + rows_per_call],
                                            pix.kx, pix.ky, r_limit)
    return out


def first_exceeding(snr: Any, errors: np.ndarray, cap: float, threshold: float = SNR_THRESHOLD) -> Any:
    """Per row of ``snr`` (P, E), the first error whose SNR exceeds ``threshold``, capped at ``cap``."""
    xp = array_module(snr)
    above = snr > threshold
    first = xp.argmax(above, axis=1)
    err = xp.asarray(errors)[first]
    err = xp.where(above.any(axis=1), err, cap)
    return xp.minimum(err, cap)


def expected_accuracies(
    references: Any,
    pdf_class: Any,
    ctf: Any | None,
    sigma2_noise: Any,
    current_size: int,
    psi0_deg: Any,
    shift_axis: Any,
    pixel_size_A: float,
    scale: Any | None = None,
    padding_factor: int = 2,
    min_pdf: float = MIN_PDF_CLASS,
    threshold: float = SNR_THRESHOLD,
) -> Accuracies:
    """Expected psi and offset accuracy of each class (see the module docstring).

    references: (K, N, N) real-space class averages. pdf_class: (K,). ctf: (P, N, N//2+1)
    CTF in the FFTW half-plane layout of each particle (as applied to the reference: CTF²
    for CTF-premultiplied data), or None (no CTF). sigma2_noise: (P, N//2+1) noise power
    per shell of each particle's optics group. current_size: image size whose pixels
    count. psi0_deg, shift_axis: (P,) from :func:`trial_poses`. scale: (P,) group scale
    correction (1 if None). Returns host arrays.
    """
    xp = array_module(references)
    k_all, n, _ = references.shape
    pdf = np.asarray(to_host(pdf_class), dtype=np.float64)
    rot = np.full(k_all, UNKNOWN)
    trans = np.full(k_all, UNKNOWN)
    active = np.flatnonzero(pdf >= min_pdf)
    if active.size == 0:
        return Accuracies(rot, trans)
    size = int(min(current_size, n))
    pix = pixel_set(n, size, xp)
    proj = make_projector(xp.asarray(references, dtype=xp.float64), size, padding_factor)
    psi0 = xp.asarray(psi0_deg, dtype=xp.float64)
    p = int(psi0.shape[0])
    s2 = xp.asarray(sigma2_noise, dtype=xp.float64)[:, pix.shell]  # (P, J)
    use = (pix.shell[None, :] > 0) & (s2 > 0)
    a2 = xp.ones((p, pix.n), dtype=xp.float64)
    if ctf is not None:
        c = xp.asarray(ctf, dtype=xp.float64).reshape(p, -1)[:, pix.flat]
        a2 = c * c
    if scale is not None:
        a2 = a2 * (xp.asarray(scale, dtype=xp.float64) ** 2)[:, None]
    w = xp.where(use, a2 / (2.0 * xp.where(use, s2, 1.0)), 0.0)  # (P, J)

    psi_err = psi_error_schedule()
    sh_err = shift_error_schedule()
    r_limit = size / 2.0
    # every (class, particle) pair; the reference prediction at psi0
    cls = xp.asarray(np.repeat(active, p), dtype=xp.int64)
    part = xp.asarray(np.tile(np.arange(p), active.size), dtype=xp.int64)
    m = active.size * p
    rows_per_call = max(1, int(_CHUNK_ELEMENTS // max(pix.n, 1)))
    ref = _project_rows(proj, cls, psi0[part], pix, r_limit, rows_per_call)  # (M, J)
    wm = w[part]
    # shifts: |P·(1 − e^{-2πi k·t/N})|² = |P|²·2(1 − cos(2π k t/N)) for t along one axis
    power = (ref.real ** 2 + ref.imag ** 2) * wm  # (M, J)
    e_sh = xp.asarray(sh_err)
    gain = [2.0 * (1.0 - xp.cos((2.0 * np.pi / n) * kk.astype(xp.float64)[:, None] * e_sh[None, :]))
            for kk in (pix.kx, pix.ky)]  # (J, Es) per axis
    axis = xp.asarray(shift_axis, dtype=xp.int64)[part]
    snr_sh = xp.where(axis[:, None] == 0, power @ gain[0], power @ gain[1])  # (M, Es)
    err_sh = first_exceeding(snr_sh, sh_err, MAX_SHIFT_ERROR_PX, threshold)
    # psi: RELION's growing loop, evaluated a block of steps at a time for the pairs still below
    err_rot = xp.full(m, MAX_PSI_ERROR_DEG)
    pending = xp.arange(m)
    for b0 in range(0, psi_err.size, _PSI_BLOCK):
        if int(pending.shape[0]) == 0:
            break
        block = psi_err[b0: b0 + _PSI_BLOCK]
        nb = block.size
        psis = (psi0[part[pending]][:, None] + xp.asarray(block)[None, :]).reshape(-1)
        pr = _project_rows(proj, xp.repeat(cls[pending], nb), psis, pix, r_limit, rows_per_call)
        diff = pr.reshape(-1, nb, pix.n) - ref[pending][:, None, :]
        snr = ((diff.real ** 2 + diff.imag ** 2) * wm[pending][:, None, :]).sum(axis=2)  # (n_pending, nb)
        above = snr > threshold
        found = above.any(axis=1)
        err_rot[pending[found]] = xp.asarray(block)[xp.argmax(above[found], axis=1)]
        pending = pending[~found]
    err_rot = xp.minimum(err_rot, MAX_PSI_ERROR_DEG)
    rot_h = np.asarray(to_host(err_rot)).reshape(active.size, p)
    sh_h = np.asarray(to_host(err_sh)).reshape(active.size, p)
    rot[active] = rot_h.mean(axis=1)
    trans[active] = sh_h.mean(axis=1) * float(pixel_size_A)
    return Accuracies(rot, trans)


def class_average_accuracies(
    average: np.ndarray,
    ctf2: np.ndarray,
    sigma2_noise: np.ndarray,
    pixel_size_A: float,
    max_rotation_deg: float = 30.0,
    max_translation_px: float = 10.0,
) -> tuple[float, float]:
    """Rotational (deg) and translational (Å) accuracy of one class average, for class ranking.

    Smallest psi error (resp. shift along x and y, averaged) for which
    Σ CTF²·|P − P'|²/(2σ²) over the full Fourier plane exceeds 4.60517 (p = 0.01).
    ``ctf2`` is the mean squared CTF ``(N, N//2+1)`` of the class's particles and
    ``sigma2_noise`` the noise power per shell (``rlnSigma2Noise``, RELION's FFT scale).
    A simplified stand-in for RELION's re-estimation with the first 101 particles: one
    mean CTF² instead of per-particle CTFs. Capped at 30° / 10 px as RELION.
    """
    average = np.asarray(average, dtype=np.float64)
    n = average.shape[-1]
    shells = shell_index(n)
    sig = np.asarray(sigma2_noise, dtype=np.float64)
    s2 = sig[np.minimum(shells, sig.size - 1)]
    valid = (shells < min(sig.size, n // 2 + 1)) & (s2 > 0)
    w = np.where(valid, np.asarray(ctf2, dtype=np.float64) / np.where(valid, 2 * s2, 1.0), 0.0)
    w[:, 1:] *= 2.0  # both halves of the Fourier plane (column 0 counted once)
    ref = rfft2_centered(average)

    def chi2(other: np.ndarray) -> float:
        return float(np.sum(w * np.abs(ref - other) ** 2))

    rot = max_rotation_deg
    for ang in np.arange(0.05, max_rotation_deg + 1e-9, 0.05 if max_rotation_deg <= 1 else 0.25):
        rotated = ndimage.rotate(average, ang, reshape=False, order=1, mode="constant", cval=0.0)
        if chi2(rfft2_centered(rotated)) > SNR_THRESHOLD:
            rot = float(ang)
            break
    kx = np.arange(n // 2 + 1)[None, :] / n
    ky = np.fft.fftfreq(n)[:, None]
    shifts = []
    for freq in (kx, ky):
        found = max_translation_px
        for dx in np.arange(0.1, max_translation_px + 1e-9, 0.1):
            if chi2(ref * np.exp(-2j * np.pi * freq * dx)) > SNR_THRESHOLD:
                found = float(dx)
                break
        shifts.append(found)
    return rot, float(np.mean(shifts)) * pixel_size_A
