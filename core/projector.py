"""Padded Fourier grids of the class averages: rotate ("project") and back-rotate (RELION's ``Projector::rotate2D``, ``Projector::computeFourierTransformMap``).

A class average is gridding pre-corrected (÷ sinc²), zero-padded to ``M = pf·N``,
transformed with RELION's scale (÷N², phase origin at the centre) and kept as a half-plane
grid with centred rows. :func:`project` samples it at ``pf·R(psi)·k`` (R counter-clockwise,
RELION's ``Euler_angles2matrix``, ``Projector::rotate2D``) with bilinear interpolation, using the Hermitian partner for x < 0, so that
``prediction(r) = class(R(psi)·r)`` in real space. :func:`back_project` is its adjoint
(bilinear "splatting"), used by the M-step.

Grid layout ``(K, M+3, M//2+2)``: row ``y + M//2 + 1`` holds frequency y in
``[-M/2-1, M/2+1]``, column x in ``[0, M/2+1]`` (one guard row/column each side so that
bilinear neighbours never leave the array).

Example::

    proj = make_projector(refs, current_size=64, padding_factor=2)   # refs (K, N, N)
    P = project(proj, class_index, psi_deg, kx, ky, r_limit=32)       # (R, J) complex
    back_project(data_grid, weight_grid, proj.padding_factor, class_index, psi_deg,
                 kx, ky, values, weights, r_max=32)

See also: :mod:`emclass2d.core.estep`, :mod:`emclass2d.core.mstep`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from emclass2d.core.backend import array_module
from emclass2d.core.fourier import rfft2_centered
from emclass2d.core.mask import radius_map


@dataclass(frozen=True)
class Projector:
    """Padded half-plane Fourier grids of K class averages.

    data: (K, M+3, M//2+2) complex, see the module docstring; zero beyond radius
    ``round(pf·r_max)`` (padded units). box: N; padding_factor: pf; r_max: current_size//2.
    """

    data: Any
    box: int
    padding_factor: int
    r_max: int

    @property
    def pad_size(self) -> int:
        return int(self.data.shape[-2]) - 3

    @property
    def center_row(self) -> int:
        return self.pad_size // 2 + 1


def padded_size(box: int, padding_factor: float = 2.0) -> int:
    """Padded box ``ROUND(pf·N)`` made even (RELION ``Projector::computeFourierTransformMap``).

    C ``ROUND``: halves away from zero, as RELION (Python's ``round`` would round half to even).
    """
    m = int(math.floor(padding_factor * box + 0.5))
    return m + (m % 2)


def gridding_correction(box: int, padding_factor: int, xp: Any = np) -> Any:
    """(N, N) sinc²(π·r/(pf·N)) with r the real-space radius in pixels (linear interpolation)."""
    r = radius_map(box, xp, dtype=np.float64)
    arg = np.pi * r / (padding_factor * box)
    safe = xp.where(arg > 0, arg, 1.0)
    sinc = xp.where(arg > 0, xp.sin(safe) / safe, 1.0)
    return sinc * sinc


def empty_grid(n_classes: int, box: int, padding_factor: int, xp: Any = np, dtype: Any = None) -> Any:
    """Zero grid ``(K, M+3, M//2+2)`` in the projector layout (complex128 by default)."""
    m = padded_size(box, padding_factor)
    return xp.zeros((n_classes, m + 3, m // 2 + 2), dtype=dtype or xp.complex128)


def grid_frequencies(box: int, padding_factor: int, xp: Any = np) -> tuple[Any, Any]:
    """Integer padded-grid frequencies ``(x, y)`` of each element of the grid layout."""
    m = padded_size(box, padding_factor)
    y = np.arange(m + 3) - (m // 2 + 1)
    x = np.arange(m // 2 + 2)
    yy, xx = np.meshgrid(y, x, indexing="ij")
    return xp.asarray(xx), xp.asarray(yy)


def fftw_to_grid(transforms: Any, m: int) -> Any:
    """FFTW-layout ``(..., M, M//2+1)`` half-planes -> grid layout ``(..., M+3, M//2+2)``."""
    xp = array_module(transforms)
    out = xp.zeros(transforms.shape[:-2] + (m + 3, m // 2 + 2), dtype=transforms.dtype)
    c = m // 2 + 1
    # rows 0..M/2 hold y = 0..+M/2 (RELION takes the Nyquist row as +M/2), rows > M/2 are negative
    out[..., c: c + m // 2 + 1, : m // 2 + 1] = transforms[..., : m // 2 + 1, :]
    out[..., c - m // 2 + 1: c, : m // 2 + 1] = transforms[..., m // 2 + 1:, :]
    return out


def grid_to_fftw(grid: Any, m: int) -> Any:
    """Grid layout -> FFTW layout ``(..., M, M//2+1)`` (guard rows/columns dropped)."""
    xp = array_module(grid)
    out = xp.zeros(grid.shape[:-2] + (m, m // 2 + 1), dtype=grid.dtype)
    c = m // 2 + 1
    out[..., : m // 2 + 1, :] = grid[..., c: c + m // 2 + 1, : m // 2 + 1]
    out[..., m // 2 + 1:, :] = grid[..., c - m // 2 + 1: c, : m // 2 + 1]
    return out


def make_projector(references: Any, current_size: int, padding_factor: int = 2) -> Projector:
    """Fourier grids of ``references`` (K, N, N) for projections up to radius current_size/2."""
    xp = array_module(references)
    k, n, _ = references.shape
    m = padded_size(n, padding_factor)
    corrected = references.astype(xp.float64) / gridding_correction(n, padding_factor, xp)
    padded = xp.zeros((k, m, m), dtype=xp.float64)
    start = m // 2 - n // 2
    padded[:, start: start + n, start: start + n] = corrected
    ft = rfft2_centered(padded) * (padding_factor ** 2)  # pf² makes the scale that of an N-box FFT
    grid = fftw_to_grid(ft, m)
    r_max = int(current_size // 2)
    gx, gy = grid_frequencies(n, padding_factor, xp)
    max_r2 = int(round(padding_factor * r_max)) ** 2
    grid = xp.where((gx * gx + gy * gy) <= max_r2, grid, 0)
    cdt = xp.complex128 if references.dtype == xp.float64 else xp.complex64
    return Projector(data=grid.astype(cdt), box=n, padding_factor=padding_factor, r_max=r_max)


def reference_power_spectrum(projector: Projector) -> Any:
    """tau2 (K, N//2+1): shell mean of |F|²/2 over padded voxels within pf·r_max (RELION's ``MlOptimiser::maximization``).

    Shell of a padded voxel = round(|v|/pf); shells beyond r_max are 0. Both halves of the
    x = 0 column count, as in RELION's FFTW-layout loop.
    """
    xp = array_module(projector.data)
    pf, n = projector.padding_factor, projector.box
    m = projector.pad_size
    ft = grid_to_fftw(projector.data, m)
    ky = np.arange(m)
    ky = np.where(ky <= m // 2, ky, ky - m)
    kx = np.arange(m // 2 + 1)
    r2 = ky[:, None] ** 2 + kx[None, :] ** 2
    inside = r2 <= int(round(pf * projector.r_max)) ** 2
    ires = np.rint(np.sqrt(r2) / pf).astype(np.int64)
    nsh = n // 2 + 1
    keep = inside & (ires < nsh)
    idx = xp.asarray(ires[keep])
    counts = xp.bincount(idx, minlength=nsh).astype(xp.float64)
    power = (xp.abs(ft[:, xp.asarray(keep)]) ** 2) / 2.0
    sums = xp.stack([xp.bincount(idx, weights=p, minlength=nsh) for p in power])
    tau2 = sums / xp.maximum(counts, 1.0)
    shell = xp.arange(nsh)
    return xp.where(shell[None, :] <= projector.r_max, tau2, 0.0)


def _bilinear_setup(padding_factor: int, psi_deg: Any, kx: Any, ky: Any, center_row: int, n_cols: int):
    """Rotated padded positions -> (flat base index, fx, fy, conjugate flag), shapes (R, J)."""
    xp = array_module(kx)
    psi = xp.deg2rad(xp.asarray(psi_deg, dtype=xp.float64))[:, None]
    c, s = xp.cos(psi), xp.sin(psi)
    kxf = kx.astype(xp.float64)[None, :]
    kyf = ky.astype(xp.float64)[None, :]
    # sample at A^-1·k = R(psi)·k (RELION's ``Euler_angles2matrix``, ``Projector::rotate2D``), in padded units
    xr = padding_factor * (c * kxf - s * kyf)
    yr = padding_factor * (s * kxf + c * kyf)
    conj = xr < 0
    xr = xp.where(conj, -xr, xr)
    yr = xp.where(conj, -yr, yr)
    x0 = xp.floor(xr)
    y0 = xp.floor(yr)
    fx = xr - x0
    fy = yr - y0
    row = y0.astype(xp.int64) + center_row
    base = row * n_cols + x0.astype(xp.int64)
    return base, fx, fy, conj


def project(projector: Projector, class_index: Any, psi_deg: Any, kx: Any, ky: Any, r_limit: float) -> Any:
    """Rotated class references at half-plane pixels: (R, J) complex.

    class_index, psi_deg: (R,) which class and rotation; kx, ky: (J,) integer frequencies
    of the pixels (N-box units). Pixels with kx²+ky² > r_limit² give 0 (RELION rotate2D).
    """
    xp = array_module(projector.data, kx)
    data = projector.data
    k, n_rows, n_cols = data.shape
    flat = data.reshape(-1)
    cls = xp.asarray(class_index, dtype=xp.int64)[:, None]
    base, fx, fy, conj = _bilinear_setup(projector.padding_factor, psi_deg, kx, ky,
                                         projector.center_row, n_cols)
    base = base + cls * (n_rows * n_cols)
    rdt = data.real.dtype
    fx, fy = fx.astype(rdt), fy.astype(rdt)
    v = ((1 - fx) * (1 - fy)) * flat[base] + (fx * (1 - fy)) * flat[base + 1] \
        + ((1 - fx) * fy) * flat[base + n_cols] + (fx * fy) * flat[base + n_cols + 1]
    v = xp.where(conj, xp.conj(v), v)
    inside = (kx.astype(xp.float64) ** 2 + ky.astype(xp.float64) ** 2) <= r_limit * r_limit
    return xp.where(inside[None, :], v, 0)


def scatter_add(target: Any, index: Any, values: Any) -> None:
    """``target[index] += values`` with repeated indices accumulated (in place, 1-D target).

    Complex targets are updated through their real view (two reals per element) so the same
    call works on CuPy, whose ``add.at`` is a scatter-add on real dtypes.
    """
    xp = array_module(target, values)
    if xp.iscomplexobj(target):
        tv = target.view(target.real.dtype)
        idx2 = xp.stack([2 * index, 2 * index + 1], axis=-1).reshape(-1)
        vals = xp.stack([values.real, values.imag], axis=-1).reshape(-1).astype(tv.dtype, copy=False)
        xp.add.at(tv, idx2, vals)
    else:
        xp.add.at(target, index, values.astype(target.dtype, copy=False))


def back_project(data_grid: Any, weight_grid: Any | None, padding_factor: int, class_index: Any,
                 psi_deg: Any, kx: Any, ky: Any, values: Any, weights: Any | None, r_max: float) -> None:
    """Add (R, J) Fourier values (and real weights) rotated back into the class grids, in place.

    Adjoint of :func:`project` (RELION ``BackProjector::backrotate2D``): each pixel's value
    is spread bilinearly onto the 4 neighbours of its rotated padded position, the
    Hermitian partner (conjugate at -position) used for x < 0; pixels of the duplicated
    x = 0 column (y < 0) and beyond r_max are skipped. ``data_grid`` (K, M+3, M//2+2)
    complex, ``weight_grid`` the same shape real (or None with ``weights`` None).
    """
    xp = array_module(data_grid, values)
    k, n_rows, n_cols = data_grid.shape
    m = n_rows - 3
    cls = xp.asarray(class_index, dtype=xp.int64)[:, None]
    base, fx, fy, conj = _bilinear_setup(padding_factor, psi_deg, kx, ky, m // 2 + 1, n_cols)
    base = base + cls * (n_rows * n_cols)
    kxf = kx.astype(xp.float64)
    kyf = ky.astype(xp.float64)
    use = ~((kx == 0) & (ky < 0)) & ((kxf * kxf + kyf * kyf) <= r_max * r_max)
    use_b = xp.broadcast_to(use[None, :], base.shape)
    base = base[use_b]
    fx, fy = fx[use_b], fy[use_b]
    vals = xp.where(conj, xp.conj(values), values)[use_b]
    w00, w01, w10, w11 = (1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy
    idx = xp.concatenate([base, base + 1, base + n_cols, base + n_cols + 1])
    flat = data_grid.reshape(-1)
    scatter_add(flat, idx, xp.concatenate([w00 * vals, w01 * vals, w10 * vals, w11 * vals]))
    if weight_grid is not None and weights is not None:
        wts = xp.broadcast_to(weights, values.shape)[use_b]
        scatter_add(weight_grid.reshape(-1), idx,
                    xp.concatenate([w00 * wts, w01 * wts, w10 * wts, w11 * wts]))
