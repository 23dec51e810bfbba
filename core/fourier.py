"""Fourier-space layout and transforms with RELION's conventions.

Real-space images are ``(..., N, N)`` with the origin at array element ``N//2`` (RELION's
"Xmipp origin"). Transforms are real-to-complex half-planes ``(..., N, N//2+1)`` in
FFTW layout (rows wrapped: row ``i`` has frequency ``i`` for ``i <= N/2`` else ``i-N``;
column ``j`` has frequency ``j``), forward transform divided by ``N*N`` and phase-centred
on the box centre (RELION's ``CenterFFTbySign``), inverse unscaled. With that scale white
real-space noise of variance ``s2`` has ``E|F|^2 = s2/N^2``, i.e. sigma2_noise per complex
component ``s2/(2 N^2)`` (RELION's ``FourierTransformer``).

Example::

    F = rfft2_centered(images)          # (B, N, N//2+1) complex64
    img = irfft2_centered(F, N)         # back, exact to float32 rounding
    shell = shell_index(N)              # (N, N//2+1) int, round(|k|)

See also: :mod:`emclass2d.core.ctf` (uses :func:`frequency_grid`).
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from emclass2d.core.backend import array_module


def rfft2_centered(images: Any) -> Any:
    """Forward half-plane FFT of ``(..., N, N)`` images, ÷N², phase origin at ``N//2``."""
    xp = array_module(images)
    n = images.shape[-1]
    shifted = xp.fft.ifftshift(images, axes=(-2, -1))
    out = xp.fft.rfft2(shifted, axes=(-2, -1)) / (n * n)
    return out.astype(xp.complex64 if images.dtype != xp.float64 else xp.complex128, copy=False)


def irfft2_centered(transforms: Any, n: int) -> Any:
    """Inverse of :func:`rfft2_centered` for an ``n``-pixel box."""
    xp = array_module(transforms)
    img = xp.fft.irfft2(transforms * (n * n), s=(n, n), axes=(-2, -1))
    img = xp.fft.fftshift(img, axes=(-2, -1))
    return img.astype(xp.float32 if transforms.dtype != xp.complex128 else xp.float64, copy=False)


def frequency_indices(n: int, xp: ModuleType = np) -> tuple[Any, Any]:
    """Integer frequencies ``(kx, ky)`` of the ``(n, n//2+1)`` half-plane (FFTW layout).

    ``ky`` of row ``i`` is ``i`` for ``i <= n/2`` else ``i - n`` (RELION takes the Nyquist
    row as +n/2); ``kx`` of column ``j`` is ``j``.
    """
    ky = np.arange(n)
    ky = np.where(ky <= n // 2, ky, ky - n)
    kx = np.arange(n // 2 + 1)
    KY, KX = np.meshgrid(ky, kx, indexing="ij")
    return xp.asarray(KX), xp.asarray(KY)


def frequency_grid(n: int, pixel_size_A: float, xp: ModuleType = np) -> tuple[Any, Any]:
    """Spatial frequencies ``(X, Y)`` in 1/Å of the half-plane of an ``n``-pixel box."""
    kx, ky = frequency_indices(n, xp)
    return kx / (n * pixel_size_A), ky / (n * pixel_size_A)


def shell_index(n: int, xp: ModuleType = np) -> Any:
    """Integer resolution shell ``round(sqrt(kx² + ky²))`` of each half-plane element."""
    kx, ky = frequency_indices(n, xp)
    return xp.rint(xp.sqrt(kx * kx + ky * ky)).astype(xp.int32)


def is_redundant(n: int, xp: ModuleType = np) -> Any:
    """Mask of half-plane elements duplicated by Hermitian symmetry (x = 0, y < 0).

    RELION excludes them from likelihood sums and counts the x = 0 column once.
    """
    kx, ky = frequency_indices(n, xp)
    return (kx == 0) & (ky < 0)


def window_fourier(transforms: Any, n_new: int) -> Any:
    """Crop (``n_new < n``) or zero-pad a half-plane transform to an ``n_new`` box.

    Keeps frequencies ``|ky| < n_new/2`` plus the +n_new/2 row and ``kx <= n_new/2``
    (RELION's ``windowFourierTransform``); values are unchanged (same scale convention).
    """
    xp = array_module(transforms)
    n = transforms.shape[-2]
    if n_new == n:
        return transforms
    out = xp.zeros(transforms.shape[:-2] + (n_new, n_new // 2 + 1), dtype=transforms.dtype)
    m = min(n, n_new)
    half = m // 2
    out[..., : half + 1, : half + 1] = transforms[..., : half + 1, : half + 1]
    out[..., n_new - half + 1 :, : half + 1] = transforms[..., n - half + 1 :, : half + 1]
    return out


def radial_average(values: Any, n: int, nshells: int | None = None) -> Any:
    """Mean of a real half-plane quantity per integer shell (0…n/2), x=0 duplicates skipped.

    ``values`` has shape ``(..., n, n//2+1)``; returns ``(..., nshells)`` float64.
    """
    xp = array_module(values)
    shells = shell_index(n, xp)
    keep = ~is_redundant(n, xp)
    nshells = nshells if nshells is not None else n // 2 + 1
    idx = xp.where(keep & (shells < nshells), shells, nshells)
    flat = values.reshape(values.shape[:-2] + (-1,)).astype(xp.float64)
    counts = xp.bincount(idx.ravel(), minlength=nshells + 1)[:nshells]
    lead = flat.shape[:-1]
    flat2 = flat.reshape(-1, flat.shape[-1])
    sums = xp.stack([xp.bincount(idx.ravel(), weights=row, minlength=nshells + 1)[:nshells] for row in flat2])
    out = sums / xp.maximum(counts, 1)
    return out.reshape(lead + (nshells,))


def round_half_away(x: Any) -> Any:
    """RELION's ``ROUND``: halves away from zero, as int64 (numpy's ``rint`` rounds half to even)."""
    xp = array_module(x)
    return (xp.sign(x) * xp.floor(xp.abs(x) + 0.5)).astype(xp.int64)
