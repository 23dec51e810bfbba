"""Pixel sets of the E-step: the half-plane Fourier pixels within a size, and their phase factors.

Example::

    pix = pixel_set(box=64, size=32)       # the pixels of a 32-px window of a 64-px transform
    phi = phase_factors(pix, translations_px, 64, np.complex64)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from emclass2d.core.backend import array_module
from emclass2d.core.fourier import frequency_indices, shell_index


@dataclass(frozen=True)
class PixelSet:
    """Half-plane pixels of an N box used at image size ``size`` (RELION Mresol).

    flat: (J,) index into the (N, N//2+1) half-plane; kx, ky: (J,) integer frequencies;
    shell: (J,) round(|k|). Pixels: window of ``size`` (|ky| < size/2 plus the +size/2 row,
    kx <= size/2), shell <= size/2, the duplicated x = 0, y < 0 half excluded, origin kept.
    """

    flat: Any
    kx: Any
    ky: Any
    shell: Any
    size: int

    @property
    def n(self) -> int:
        return int(self.flat.shape[0])


def pixel_set(box: int, size: int, xp: Any = np) -> PixelSet:
    """The :class:`PixelSet` of an N = ``box`` transform windowed to ``size``."""
    kx, ky = frequency_indices(box)
    shell = shell_index(box)
    half = size // 2
    keep = (kx <= half) & (ky > -half) & (ky <= half) & (shell <= half) & ~((kx == 0) & (ky < 0))
    flat = np.flatnonzero(keep.ravel())
    return PixelSet(flat=xp.asarray(flat), kx=xp.asarray(kx.ravel()[flat]), ky=xp.asarray(ky.ravel()[flat]),
                    shell=xp.asarray(shell.ravel()[flat]), size=int(size))


def phase_factors(pix: PixelSet, translations_px: Any, box: int, dtype: Any) -> Any:
    """(T, J) exp(-2πi k·t/N): multiplying a transform by it shifts the image by +t."""
    xp = array_module(pix.kx)
    t = xp.asarray(translations_px, dtype=xp.float64)
    arg = (-2.0 * np.pi / box) * (t[:, 0:1] * pix.kx[None, :] + t[:, 1:2] * pix.ky[None, :])
    return (xp.cos(arg) + 1j * xp.sin(arg)).astype(dtype)
