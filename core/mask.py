"""Soft circular masks as RELION applies them to particles and class averages (``MlOptimiser::getFourierTransformsAndCtfs``, ``MlOptimiser::centerClasses``).

Example::

    w = soft_edge_weight(64, radius_px=25.0, edge_px=5.0)      # 1 inside, 0 outside
    masked = mask_particles(images, radius_px=25.0, edge_px=5.0)  # zero-mask: background mean fill
    flat = solvent_flatten(classes, radius_px=25.0, edge_px=5.0)  # outside -> 0
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from emclass2d.core.backend import array_module


def radius_map(n: int, xp: ModuleType = np, dtype: Any = None) -> Any:
    """Real-space distance in pixels of each element from the box centre ``(n//2, n//2)``.

    ``(n, n)`` on the device of ``xp``; float32 unless ``dtype`` says otherwise.
    """
    c = np.arange(n) - n // 2
    r = np.sqrt(c[:, None] ** 2 + c[None, :] ** 2)
    return xp.asarray(r, dtype=xp.float32 if dtype is None else dtype)


def soft_edge_weight(n: int, radius_px: float, edge_px: float, xp: ModuleType = np) -> Any:
    """Mask weight ``(n, n)``: 1 for r < radius, 0 for r > radius+edge, raised cosine between."""
    r = radius_map(n, xp)
    if edge_px <= 0:
        return (r < radius_px).astype(xp.float32)
    t = xp.clip((r - radius_px) / edge_px, 0.0, 1.0)
    return (0.5 + 0.5 * xp.cos(np.pi * t)).astype(xp.float32)


def mask_particles(images: Any, radius_px: float, edge_px: float, fill_images: Any | None = None) -> Any:
    """Soft-mask particle images ``(B, n, n)``; outside the mask use background or noise.

    Without ``fill_images`` the outside is the raised-cosine-weighted mean of each image's
    background (RELION ``--zero_mask``: ≈0 for normalised data, not literally zero). With
    ``fill_images`` (same shape, e.g. noise drawn from sigma2_noise) those pixels are used.
    """
    xp = array_module(images, fill_images)
    n = images.shape[-1]
    w = soft_edge_weight(n, radius_px, edge_px, xp)
    if fill_images is None:
        bg_w = 1.0 - w
        denom = float(xp.sum(bg_w)) if xp is np else xp.sum(bg_w)
        fill = (xp.sum(images * bg_w, axis=(-2, -1)) / denom)[..., None, None]
    else:
        fill = fill_images
    return (images * w + fill * (1.0 - w)).astype(images.dtype, copy=False)


def solvent_flatten(classes: Any, radius_px: float, edge_px: float) -> Any:
    """Multiply class averages by the soft disc (outside becomes exactly 0)."""
    xp = array_module(classes)
    w = soft_edge_weight(classes.shape[-1], radius_px, edge_px, xp)
    return (classes * w).astype(classes.dtype, copy=False)
