"""M-step of 2D classification: class averages (MAP Wiener filter) and other parameters (RELION's ``MlOptimiser::maximization``).

The per-(class, fine psi) Fourier sums of the E-step are back-rotated into padded grids
once (:func:`back_rotate_stats`), then each class is reconstructed with the Wiener
filter ``F = data / max(weight + 1/(pf²·T·tau2), mean/1000)`` and brought back to real
space like RELION's ``windowToOridimRealSpace`` plus the sinc² gridding correction.
:func:`maximization_other_parameters` takes a momentum ``mu`` (0 for EM) so that the
gradient (VDAM) code can reuse it.

Example::

    model = maximization(model, stats, setup.tau2, settings)   # EM: references + the rest

See also: :mod:`emclass2d.core.estep` (produces the statistics),
:mod:`emclass2d.core.resolution` (uses the new SSNR).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from emclass2d.core.backend import array_module, to_host
from emclass2d.core.stats import BatchStats
from emclass2d.core.fourier import frequency_indices, irfft2_centered, shell_index
from emclass2d.core.mask import mask_particles
from emclass2d.core.model import Model, Settings
from emclass2d.core.projector import back_project, empty_grid, grid_frequencies, grid_to_fftw, gridding_correction, padded_size
from emclass2d.core.resolution import estimated_resolution_and_completeness


def back_rotate_stats(stats: BatchStats, box: int, padding_factor: int, half: int | None = None) -> tuple[Any, Any]:
    """Back-rotate the accumulated sums into padded grids (K, M+3, M//2+2).

    half: None sums the pseudo-halves; 0 or 1 selects one. Returns (data complex128,
    weight float64). Classes are processed one at a time to bound memory.
    """
    xp = array_module(stats.bp_data)
    data = stats.bp_data.sum(axis=0) if half is None else stats.bp_data[half]
    weight = stats.bp_weight.sum(axis=0) if half is None else stats.bp_weight[half]
    k, n_psi, _ = data.shape
    dgrid = empty_grid(k, box, padding_factor, xp, xp.complex128)
    wgrid = xp.zeros(dgrid.shape, dtype=xp.float64)
    r_max = stats.current_size / 2.0
    for c in range(k):
        if not bool(xp.any(weight[c] != 0)) and not bool(xp.any(data[c] != 0)):
            continue
        cls = xp.zeros(n_psi, dtype=xp.int64)
        back_project(dgrid[c: c + 1], wgrid[c: c + 1], padding_factor, cls, stats.psi_fine_deg,
                     stats.kx, stats.ky, data[c].astype(xp.complex128), weight[c].astype(xp.float64), r_max)
    return _hermitian_x0(dgrid, conj=True), _hermitian_x0(wgrid, conj=False)


def _hermitian_x0(grid: Any, conj: bool) -> Any:
    """Combine the x = 0 column with its Hermitian partner (RELION enforceHermitianSymmetry)."""
    xp = array_module(grid)
    m = grid.shape[-2] - 3
    c = m // 2 + 1
    out = grid.copy()
    pos = grid[:, c + 1:, 0]          # y = 1 .. M/2+1
    neg = grid[:, c - 1::-1, 0][:, : pos.shape[1]]  # y = -1 .. -(M/2+1)
    total = pos + (xp.conj(neg) if conj else neg)
    out[:, c + 1:, 0] = total
    out[:, c - 1::-1, 0][:, : pos.shape[1]] = xp.conj(total) if conj else total
    if conj:
        out[:, c, 0] = grid[:, c, 0].real
    return out


def npix_per_shell(box: int) -> np.ndarray:
    """(N//2+1,) half-plane pixels per shell of an N box, x = 0 column counted once."""
    kx, ky = frequency_indices(box)
    sh = shell_index(box)
    keep = (sh < box // 2 + 1) & ~((kx == 0) & (ky < 0))
    return np.bincount(sh[keep], minlength=box // 2 + 1).astype(np.float64)


def _grid_shells(box: int, padding_factor: int, r_max: int, xp: Any) -> tuple[Any, Any]:
    gx, gy = grid_frequencies(box, padding_factor, xp)
    r2 = gx * gx + gy * gy
    inside = r2 < int(round(r_max * padding_factor)) ** 2
    ires = xp.rint(xp.sqrt(r2.astype(xp.float64)) / padding_factor).astype(xp.int64)
    return inside, xp.minimum(ires, box // 2)


def ssnr_arrays(weight: Any, tau2: Any, tau2_fudge: float, padding_factor: int, box: int, r_max: int) -> tuple[Any, Any, Any]:
    """(ssnr, sigma2_ref, completeness), each (N//2+1,), of one class (RELION updateSSNRarrays).

    ratio_v = weight_v·pf²·T·tau2[shell]: rlnSsnrMap = shell mean of ratio (999 without
    voxels, 0 beyond r_max), rlnFourierCompleteness = fraction of ratio >= 1,
    rlnReferenceSigma2 = count/(pf²·Σweight).
    """
    xp = array_module(weight)
    nsh = box // 2 + 1
    inside, ires = _grid_shells(box, padding_factor, r_max, xp)
    idx = ires[inside]
    wv = weight[inside]
    pf2 = float(padding_factor) ** 2
    count = xp.bincount(idx, minlength=nsh).astype(xp.float64)
    sumw = xp.bincount(idx, weights=wv, minlength=nsh)
    ratio = wv * pf2 * tau2_fudge * tau2[idx]
    sum_ratio = xp.bincount(idx, weights=ratio, minlength=nsh)
    n_ge = xp.bincount(idx, weights=(ratio >= 1.0).astype(xp.float64), minlength=nsh)
    sigma2 = xp.where(sumw > 1e-10, count / (pf2 * xp.where(sumw > 1e-10, sumw, 1.0)), 0.0)
    ssnr = xp.where(count > 0, sum_ratio / xp.maximum(count, 1.0), 999.0)
    completeness = n_ge / xp.maximum(count, 1.0)
    shell = xp.arange(nsh)
    beyond = shell > r_max
    return xp.where(beyond, 0.0, ssnr), xp.where(beyond, 0.0, sigma2), xp.where(beyond, 0.0, completeness)


def wiener_reconstruct(data: Any, weight: Any, tau2: Any, tau2_fudge: float, padding_factor: int, box: int,
                       r_max: int, minres_map: int = 5) -> Any:
    """Real-space (N, N) float64 class average from one class's padded grids (RELION's ``MlOptimiser::maximization``)."""
    xp = array_module(data)
    inside, ires = _grid_shells(box, padding_factor, r_max, xp)
    nsh = box // 2 + 1
    pf2 = float(padding_factor) ** 2
    t = tau2[ires]
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_tau = xp.where(t > 0, 1.0 / (pf2 * tau2_fudge * xp.where(t > 0, t, 1.0)),
                           xp.where(weight > 0, 1.0 / (0.001 * xp.where(weight > 0, weight, 1.0)), 0.0))
    w = weight + xp.where(ires >= minres_map, inv_tau, 0.0)
    idx = ires[inside]
    count = xp.bincount(idx, minlength=nsh).astype(xp.float64)
    mean_w = xp.bincount(idx, weights=w[inside], minlength=nsh) / xp.maximum(count, 1.0)
    floor = mean_w[ires] / 1000.0
    denom = xp.maximum(w, floor)
    f = xp.where(inside & (denom > 0), data / xp.where(denom > 0, denom, 1.0), 0.0)
    m = padded_size(box, padding_factor)
    img = irfft2_centered(grid_to_fftw(f[None], m), m)[0].astype(xp.float64) / pf2
    start = m // 2 - box // 2
    img = img[start: start + box, start: start + box]
    img = mask_particles(img[None], box / 2.0, 3.0)[0]
    return img / gridding_correction(box, padding_factor, xp)


def maximization_references(model: Model, stats: BatchStats, tau2: Any, settings: Settings,
                            data_grid: Any | None = None, weight_grid: Any | None = None) -> Model:
    """New class averages and SSNR arrays (EM). ``tau2``: (K, N//2+1) from the E-step setup.

    Classes without particle weight in ``stats`` (or no grid weight) get an all-zero average and keep their old
    SSNR arrays. Pre-computed grids (from :func:`back_rotate_stats`) may be passed.
    Also sets tau2, estimated resolution and overall completeness per class.
    """
    xp = array_module(stats.bp_data)
    n, pf = model.box, model.padding_factor
    r_max = stats.current_size // 2
    if data_grid is None or weight_grid is None:
        data_grid, weight_grid = back_rotate_stats(stats, n, pf)
    tau2 = xp.asarray(tau2, dtype=xp.float64)
    refs = xp.zeros_like(model.references)
    ssnr = xp.array(model.data_vs_prior, dtype=xp.float64, copy=True)
    sig = xp.array(model.sigma2_ref, dtype=xp.float64, copy=True)
    comp = xp.array(model.fourier_completeness, dtype=xp.float64, copy=True)
    pdf = to_host(stats.wsum_pdf_class)  # RELION: wsum_model.pdf_class decides which classes are empty
    t_fudge = settings.tau2_fudge
    for k in range(model.n_classes):
        wk = weight_grid[k]
        if pdf[k] <= 0 or not bool(xp.any(wk > 0)):
            continue
        s, g, c = ssnr_arrays(wk, tau2[k], t_fudge, pf, n, r_max)
        ssnr[k], sig[k], comp[k] = s, g, c
        refs[k] = wiener_reconstruct(data_grid[k], wk, tau2[k], t_fudge, pf, n, r_max,
                                     settings.minres_map).astype(refs.dtype)
    res_A, overall = estimated_resolution_and_completeness(ssnr, comp, n, model.pixel_size_A)
    return replace(model, references=refs, data_vs_prior=ssnr, sigma2_ref=sig, fourier_completeness=comp,
                   tau2=tau2, estimated_resolution_A=res_A, overall_completeness=overall,
                   tau2_fudge=float(t_fudge), current_size=int(stats.current_size))


def _fill_zero_shells(s2: np.ndarray) -> np.ndarray:
    out = s2.copy()
    for i in range(1, out.shape[-1]):
        if out[i] < 1e-30:
            out[i] = out[i - 1]
    return out


def maximization_other_parameters(model: Model, stats: BatchStats, settings: Settings, mu: float = 0.0) -> Model:
    """pdf_class, class offsets, sigma2_offset, sigma2_noise, norm, scale, LL, Pmax (RELION's ``MlOptimiser::maximization``, ``maximizationOtherParameters`` with ``--mu``).

    new = mu·old + (1 − mu)·estimate (mu = 0 for EM). prior_offset_A is the true class
    mean offset in Å (RELION stores it multiplied by pdf_class).
    """
    xp = array_module(stats.wsum_pdf_class)
    f64 = xp.float64
    wk = xp.asarray(stats.wsum_pdf_class, dtype=f64)
    total = float(wk.sum())
    if total <= 0:
        raise ValueError("maximization: the statistics hold no particle weight")
    mix = lambda old, est: mu * xp.asarray(old, dtype=f64) + (1.0 - mu) * est  # noqa: E731
    pdf = mix(model.pdf_class, wk / total)
    pdf = pdf / pdf.sum()
    pdf_dir = mix(model.pdf_direction, wk / total)
    mean_off = xp.where(wk[:, None] > 0, stats.wsum_prior_offset_A / xp.where(wk > 0, wk, 1.0)[:, None], 0.0)
    prior_off = mix(model.prior_offset_A, mean_off)
    s2off = float(model.sigma2_offset_A2)
    if not settings.fix_sigma_offset:
        s2off = max(mu * s2off + (1.0 - mu) * float(stats.wsum_sigma2_offset_A2) / (2.0 * total),
                    settings.min_sigma2_offset_A2)
    sigma2 = xp.asarray(model.sigma2_noise, dtype=f64)
    if not settings.fix_sigma_noise:
        npix = npix_per_shell(model.box)
        wsum = to_host(stats.wsum_sigma2_noise)
        sumw = to_host(stats.sumw_optics)
        new = to_host(sigma2).copy()
        for g in range(new.shape[0]):
            if sumw[g] <= 0:
                continue
            est = _fill_zero_shells(wsum[g] / (2.0 * sumw[g] * np.maximum(npix, 1.0)))
            new[g] = mu * new[g] + (1.0 - mu) * est
        sigma2 = xp.asarray(new)
    avg_norm = float(model.avg_norm_correction)
    if settings.do_norm and stats.n_particles > 0:
        avg_norm = mu * avg_norm + (1.0 - mu) * float(stats.sum_norm_correction) / stats.n_particles
    scale = xp.asarray(model.scale, dtype=f64)
    if settings.do_scale and scale.shape[0] > 1:
        xa, aa = to_host(stats.scale_xa), to_host(stats.scale_aa)
        old = to_host(scale)
        est = np.where(aa > 0, xa / np.where(aa > 0, aa, 1.0), old)
        s = mu * old + (1.0 - mu) * est
        med = float(np.median(s))
        s = np.clip(s, med / 5.0, 5.0 * med)
        counts = to_host(stats.n_particles_group)
        mean = float((s * counts).sum() / counts.sum()) if counts.sum() > 0 else float(s.mean())
        scale = xp.asarray(s / mean)
    n_part = max(stats.n_particles, 1)
    return replace(model, pdf_class=pdf, pdf_direction=pdf_dir, prior_offset_A=prior_off, sigma2_offset_A2=s2off,
                   sigma2_noise=sigma2, avg_norm_correction=avg_norm, scale=scale,
                   log_likelihood=float(stats.log_likelihood), ave_pmax=float(stats.sum_pmax) / n_part)


def maximization(model: Model, stats: BatchStats, tau2: Any, settings: Settings, mu: float = 0.0) -> Model:
    """Full EM M-step: references and SSNR arrays, then the other parameters."""
    m = maximization_references(model, stats, tau2, settings)
    return maximization_other_parameters(m, stats, settings, mu=mu)
