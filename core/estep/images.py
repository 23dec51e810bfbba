"""Particle images as the E-step uses them: translated, masked, noise-filled, in Fourier space with CTFs.

As RELION's ``MlOptimiser::getFourierTransformsAndCtfs``: the old offset rounded to
whole pixels is applied first (trial translations are relative to it), the mask is
filled with noise or zeros, and the CTF and scale give the reference's expected image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from emclass2d.core.backend import array_module, to_host
from emclass2d.core.batch import ParticleBatch
from emclass2d.core.ctf import compute_ctf
from emclass2d.core.fourier import (frequency_grid, frequency_indices, irfft2_centered, rfft2_centered,
                                    round_half_away, shell_index)
from emclass2d.core.mask import mask_particles
from emclass2d.core.model import Model, Settings
from emclass2d.core.estep.setup import EStepSetup


def translate_integer(images: Any, shift_px: Any) -> Any:
    """out(r) = in(r − shift) for integer (x, y) shifts (B, 2); zeros enter, no wrap."""
    xp = array_module(images, shift_px)
    b, n, _ = images.shape
    idx = xp.arange(n)
    sy = idx[None, :] - shift_px[:, 1:2]
    sx = idx[None, :] - shift_px[:, 0:1]
    vy = (sy >= 0) & (sy < n)
    vx = (sx >= 0) & (sx < n)
    bi = xp.arange(b)[:, None, None]
    out = images[bi, xp.clip(sy, 0, n - 1)[:, :, None], xp.clip(sx, 0, n - 1)[:, None, :]]
    return out * (vy[:, :, None] & vx[:, None, :]).astype(images.dtype)


def noise_fill_images(sigma2_shell: Any, part_index: Any, random_seed: int, iteration: int, box: int,
                      sigma2_fudge: float, dtype: Any) -> Any:
    """Noise images (B, N, N) with Fourier components N(0, fudge·σ²[shell]) per component.

    Seeded per particle with (random_seed + part_index, iteration), so the fill does not
    depend on batch size or order. ``sigma2_shell``: (B, N//2+1) per particle.
    """
    xp = array_module(sigma2_shell)
    shells = shell_index(box, xp)
    nsh = box // 2 + 1
    parts = to_host(part_index).astype(np.int64)
    # only the draws are per particle (each has its own seeded generator); the rest is batched
    z = np.empty((len(parts), 2, box, box // 2 + 1), dtype=np.float64)
    for i, p in enumerate(parts):
        np.random.default_rng([abs(int(random_seed)) + int(p), int(iteration)]).standard_normal(out=z[i])
    z = xp.asarray(z)
    inside = shells < nsh
    s2 = xp.asarray(sigma2_shell, dtype=xp.float64) * sigma2_fudge
    sd = xp.where(inside[None], xp.sqrt(xp.maximum(s2[:, xp.where(inside, shells, 0)], 0.0)), 0.0)
    return irfft2_centered((z[:, 0] + 1j * z[:, 1]) * sd, box).astype(dtype)


@dataclass(frozen=True)
class _Prepared:
    xm: Any          # (B, N*(N//2+1)) masked transform, flat
    xn: Any          # unmasked transform, flat
    ctf_ref: Any     # (B, flat) CTF applied to the reference (CTF² for premultiplied data)
    ctf_bp: Any      # (B, flat) CTF applied to the data in back-projection (1 for premultiplied)
    ctf_w: Any       # (B, flat) CTF² entering the back-projection weight
    scale: Any       # (B,) s_g
    sigma2: Any      # (B, N//2+1) fudge·sigma2_noise of the particle's optics group
    spectrum: Any    # (B, N//2+1) power of the masked image per shell (x=0 duplicates once)
    xi2_high: Any    # (B,) power beyond the current size
    offset_round: Any  # (B, 2) int rounded old offset (px)


def _prepare(batch: ParticleBatch, sel: Any, model: Model, settings: Settings, setup: EStepSetup,
             fdt: Any) -> _Prepared:
    xp = array_module(batch.images)
    n = model.box
    px = model.pixel_size_A
    imgs = batch.images[sel].astype(fdt)
    optics = xp.asarray(batch.optics_group[sel], dtype=xp.int64)
    group = xp.asarray(batch.group[sel], dtype=xp.int64)
    if settings.do_norm:
        norm = xp.asarray(batch.norm_correction[sel], dtype=fdt)
        imgs = imgs * (model.avg_norm_correction / norm)[:, None, None]
    off_round = round_half_away(xp.asarray(batch.origin_px[sel], dtype=xp.float64))
    shifted = translate_integer(imgs, off_round)
    sigma2 = xp.asarray(model.sigma2_noise, dtype=xp.float64)[optics] * settings.sigma2_fudge
    radius = settings.diameter_A(n, px) / (2.0 * px)
    if settings.zero_mask:
        masked = mask_particles(shifted, radius, settings.width_mask_edge_px)
    else:
        noise = noise_fill_images(sigma2, batch.part_index[sel], settings.random_seed, setup.iteration, n, 1.0, fdt)
        masked = mask_particles(shifted, radius, settings.width_mask_edge_px, fill_images=noise)
    b = imgs.shape[0]
    xm = rfft2_centered(masked).reshape(b, -1)
    xn = rfft2_centered(shifted).reshape(b, -1)
    if settings.do_ctf:
        fx, fy = frequency_grid(n, px, xp)
        ctf = compute_ctf(
            fx, fy, xp.asarray(batch.defocus_u_A[sel]), xp.asarray(batch.defocus_v_A[sel]),
            xp.asarray(batch.defocus_angle_deg[sel]), xp.asarray(batch.voltage_kV[sel]),
            xp.asarray(batch.cs_mm[sel]), xp.asarray(batch.amplitude_contrast[sel]),
            phase_shift_deg=xp.asarray(batch.phase_shift_deg[sel]), bfactor_A2=xp.asarray(batch.ctf_bfactor_A2[sel]),
            scale=xp.asarray(batch.ctf_scale[sel]), intact_first_peak=settings.ctf_intact_first_peak,
            phase_flipped=settings.ctf_phase_flipped,
        ).reshape(b, -1).astype(fdt)
        premult = xp.asarray(batch.ctf_premultiplied[sel]).astype(bool)[:, None]
        ctf_ref = xp.where(premult, ctf * ctf, ctf)
        ctf_bp = xp.where(premult, xp.ones_like(ctf), ctf)
        ctf_w = ctf * ctf
    else:
        ctf_ref = ctf_bp = ctf_w = xp.ones((b, n * (n // 2 + 1)), dtype=fdt)
    scale = xp.asarray(model.scale, dtype=xp.float64)[group]
    # power spectrum of the masked image (shells 1..N/2, x = 0 duplicates once)
    nsh = n // 2 + 1
    shells = shell_index(n, xp).ravel()
    kx, ky = frequency_indices(n, xp)
    keep = (~((kx == 0) & (ky < 0))).ravel() & (shells > 0) & (shells < nsh)
    p = (xm.real.astype(xp.float64) ** 2 + xm.imag.astype(xp.float64) ** 2)[:, keep]
    idx = shells[keep][None, :] + nsh * xp.arange(b)[:, None]
    spectrum = xp.bincount(idx.ravel(), weights=p.ravel(), minlength=b * nsh).reshape(b, nsh)
    cur_half = setup.current_size // 2
    xi2_high = spectrum[:, cur_half + 1:].sum(axis=1)
    return _Prepared(xm=xm, xn=xn, ctf_ref=ctf_ref, ctf_bp=ctf_bp, ctf_w=ctf_w, scale=scale, sigma2=sigma2,
                     spectrum=spectrum, xi2_high=xi2_high, offset_round=off_round)
