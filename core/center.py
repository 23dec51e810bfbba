"""Centring of class averages and sub-pixel image warps (RELION's ``MlOptimiser::centerClasses``, ``shiftImageInFourierTransform``).

Coordinates are RELION's logical ones: ``x`` = column, ``y`` = row, origin at array element
``N//2``. A translation by ``t`` means ``out(r) = in(r - t)`` (content moves by ``+t``),
bilinear, with zeros entering at the border (no wrap), as RELION's ``translate(...,
DONT_WRAP)``. ``--center_classes`` moves each class so that the centre of mass of its
positive pixels lands on the box centre.

Example::

    com = center_of_mass_positive(classes)            # (K, 2) (x, y) px
    centred, shifts_px = center_classes(classes, max_shift_px=5.0)
    moved = translate_images(images, np.array([[1.5, -0.25]]))   # by +x 1.5, -y 0.25
    F2 = shift_fourier(F, np.array([[1.5, -0.25]]), n=64)        # same shift, Fourier side

See also: :mod:`emclass2d.core.mask` (solvent flattening after centring).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from emclass2d.core.backend import array_module
from emclass2d.core.fourier import frequency_indices


def logical_grid(n: int, xp: Any = np) -> tuple[Any, Any]:
    """``(x, y)`` logical pixel coordinates (float32, ``(n, n)``), origin at ``n//2``."""
    c = xp.arange(n, dtype=xp.float32) - (n // 2)
    y, x = xp.meshgrid(c, c, indexing="ij")
    return x, y


def sample_bilinear(images: Any, x: Any, y: Any) -> Any:
    """Bilinear samples of ``images`` at logical positions; zeros outside the box.

    images: (B, N, N) real. x, y: (B, ...) or (1, ...), logical coordinates in pixels
    (origin at ``N//2``). Returns (B, ...) in the images' dtype. Positions outside
    the box read zero-valued neighbours, so content fades to zero within one pixel of the
    border (RELION's DONT_WRAP).
    """
    xp = array_module(images, x, y)
    b, n = images.shape[0], images.shape[-1]
    padded = xp.zeros((b, n + 2, n + 2), dtype=images.dtype)
    padded[:, 1:-1, 1:-1] = images
    # Array index in the padded frame, clipped so far-away points read the zero border.
    fx = xp.clip(xp.asarray(x, dtype=xp.float32) + (n // 2 + 1), 0.0, n + 1.0)
    fy = xp.clip(xp.asarray(y, dtype=xp.float32) + (n // 2 + 1), 0.0, n + 1.0)
    fx, fy = xp.broadcast_arrays(fx, fy)
    shape = (b,) + fx.shape[1:]
    fx = xp.broadcast_to(fx, shape)
    fy = xp.broadcast_to(fy, shape)
    x0 = xp.floor(fx)
    y0 = xp.floor(fy)
    wx = (fx - x0).astype(images.dtype)
    wy = (fy - y0).astype(images.dtype)
    ix0 = x0.astype(xp.int64)
    iy0 = y0.astype(xp.int64)
    ix1 = xp.minimum(ix0 + 1, n + 1)
    iy1 = xp.minimum(iy0 + 1, n + 1)
    flat = padded.reshape(b, -1)
    w = n + 2

    def gather(iy: Any, ix: Any) -> Any:
        idx = (iy * w + ix).reshape(b, -1)
        return xp.take_along_axis(flat, idx, axis=1).reshape(shape)

    top = gather(iy0, ix0) * (1 - wx) + gather(iy0, ix1) * wx
    bottom = gather(iy1, ix0) * (1 - wx) + gather(iy1, ix1) * wx
    return (top * (1 - wy) + bottom * wy).astype(images.dtype, copy=False)


def translate_images(images: Any, shifts_px: Any) -> Any:
    """Translate each image by its own sub-pixel vector: ``out(r) = in(r - t)``.

    images: (B, N, N); shifts_px: (B, 2) or (2,) as (x, y) in pixels. Bilinear, zeros
    enter from the border (no wrap).
    """
    xp = array_module(images, shifts_px)
    n = images.shape[-1]
    t = xp.asarray(shifts_px, dtype=xp.float32).reshape(-1, 2)
    t = xp.broadcast_to(t, (images.shape[0], 2))
    gx, gy = logical_grid(n, xp)
    return sample_bilinear(images, gx[None] - t[:, 0, None, None], gy[None] - t[:, 1, None, None])


def rotate_images(images: Any, angle_deg: Any) -> Any:
    """Rotate each image counter-clockwise (x towards y) about the box centre.

    ``out(u) = in(R(-a)·u)`` with ``R(a) = [[cos, -sin], [sin, cos]]`` acting on (x, y);
    images (B, N, N), angle_deg (B,) or scalar. Bilinear, zeros outside.
    """
    xp = array_module(images, angle_deg)
    n = images.shape[-1]
    a = xp.deg2rad(xp.asarray(angle_deg, dtype=xp.float64).reshape(-1))
    a = xp.broadcast_to(a, (images.shape[0],))
    c = xp.cos(a).astype(xp.float32)[:, None, None]
    s = xp.sin(a).astype(xp.float32)[:, None, None]
    gx, gy = logical_grid(n, xp)
    return sample_bilinear(images, c * gx[None] + s * gy[None], -s * gx[None] + c * gy[None])


def center_of_mass_positive(images: Any) -> Any:
    """Centre of mass ``(x, y)`` in pixels of the positive pixels of each image.

    images: (K, N, N); returns (K, 2) float64, origin at the box centre. Negative pixels are
    ignored (RELION's ``centerClasses``); an image with no positive pixel gives (0, 0).
    """
    xp = array_module(images)
    n = images.shape[-1]
    gx, gy = logical_grid(n, xp)
    pos = xp.maximum(xp.asarray(images, dtype=xp.float64), 0.0)
    total = pos.sum(axis=(-2, -1))
    safe = xp.where(total > 0, total, 1.0)
    cx = (pos * gx).sum(axis=(-2, -1)) / safe
    cy = (pos * gy).sum(axis=(-2, -1)) / safe
    return xp.stack([xp.where(total > 0, cx, 0.0), xp.where(total > 0, cy, 0.0)], axis=-1)


def clip_length(vectors: Any, max_length: float) -> Any:
    """Scale vectors ``(..., 2)`` longer than ``max_length`` down to that length."""
    xp = array_module(vectors)
    length = xp.sqrt((vectors * vectors).sum(axis=-1, keepdims=True))
    factor = xp.where(length > max_length, max_length / xp.maximum(length, 1e-30), 1.0)
    return vectors * factor


def center_classes(classes: Any, max_shift_px: float) -> tuple[Any, Any]:
    """Move each class's positive centre of mass to the box centre (``--center_classes``).

    classes: (K, N, N). The centre of mass is clipped to length ``max_shift_px`` (RELION
    uses the current offset range in pixels), then each class is translated by minus it.
    Returns ``(centred, shifts_px)`` with ``shifts_px`` (K, 2) the (x, y) translation
    applied (``centred(r) = classes(r - shift)``, i.e. ``shift = -clipped com``).
    """
    com = clip_length(center_of_mass_positive(classes), float(max_shift_px))
    shifts = -com
    return translate_images(classes, shifts), shifts


def shift_fourier(transforms: Any, shifts_px: Any, n: int) -> Any:
    """Translate half-plane transforms by ``t`` pixels via phase factors ``exp(-2πi k·t/n)``.

    transforms: (B, n, n//2+1) complex (phase origin at the box centre, as
    :func:`emclass2d.core.fourier.rfft2_centered`); shifts_px: (B, 2) or (2,) as (x, y).
    Equivalent to a cyclic real-space shift by ``+t`` (``out(r) = in(r - t)``).
    """
    xp = array_module(transforms, shifts_px)
    kx, ky = frequency_indices(n, xp)
    t = xp.asarray(shifts_px, dtype=xp.float64).reshape(-1, 2)
    phase = -2.0 * np.pi * (kx[None] * t[:, 0, None, None] + ky[None] * t[:, 1, None, None]) / n
    factor = xp.exp(1j * phase)
    ctype = transforms.dtype if xp.iscomplexobj(transforms) else xp.complex64
    return (transforms * factor).astype(ctype, copy=False)
