"""Current resolution and image sizes (RELION's ``MlOptimiser::updateCurrentResolution``, ``MlOptimiser::initialise``) and per-class resolution (RELION's ``MlModel::write``).

Example::

    res = initial_resolution(box=64, pixel_size_A=2.0, ini_high_A=default_ini_high_A(64, 2.0))
    cur, coarse = image_sizes(res, box=64, pixel_size_A=2.0, incr_size=10, psi_step_deg=12.0,
                              particle_diameter_A=100.0, oversampling=1)
    res = update_current_resolution(model.data_vs_prior, box=64, pixel_size_A=2.0)

See also: :mod:`emclass2d.core.mstep` (produces rlnSsnrMap).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from emclass2d.core.backend import array_module, to_host


def default_ini_high_A(box: int, pixel_size_A: float) -> float:
    """RELION's default ``--ini_high``: the resolution of shell round(0.07·N), in Å."""
    shell = max(1, int(round(0.07 * box)))
    return box * pixel_size_A / shell


def resolution_of_shell(shell: int, box: int, pixel_size_A: float) -> float:
    """Spatial frequency (1/Å) of an integer shell."""
    return shell / (box * pixel_size_A)


def shell_of_resolution(resolution_inv_A: float, box: int, pixel_size_A: float) -> int:
    """round(res·N·px) (RELION getPixelFromResolution)."""
    return int(round(resolution_inv_A * box * pixel_size_A))


def initial_resolution(box: int, pixel_size_A: float, ini_high_A: float) -> float:
    """current_resolution (1/Å) before iteration 1: shell round(N·px/ini_high)."""
    maxres = int(round(box * pixel_size_A / ini_high_A))
    return resolution_of_shell(maxres, box, pixel_size_A)


def update_current_resolution(ssnr: Any, box: int, pixel_size_A: float, minres_map: int = 5,
                              do_map: bool = True) -> float:
    """current_resolution (1/Å) after an M-step (RELION updateCurrentResolution).

    maxres = (first shell >= 1 with rlnSsnrMap < 1) − 1, maximised over classes, at least
    ``minres_map``; N/2 without MAP. ``ssnr``: (K, N//2+1).
    """
    nsh = box // 2 + 1
    if not do_map:
        return resolution_of_shell(box // 2, box, pixel_size_A)
    s = to_host(ssnr).reshape(-1, nsh)
    maxres = 0
    for row in s:
        below = np.flatnonzero(row[1:] < 1.0)
        mr = int(below[0]) if below.size else nsh - 1  # first shell below 1 is below[0]+1
        maxres = max(maxres, mr)
    maxres = max(maxres, minres_map)
    return resolution_of_shell(maxres, box, pixel_size_A)


def image_sizes(current_resolution: float, box: int, pixel_size_A: float, incr_size: int, psi_step_deg: float,
                particle_diameter_A: float, oversampling: int, strict_highres_exp_A: float = -1.0,
                max_coarse_size: int = -1) -> tuple[int, int]:
    """(current_size, coarse_size) (RELION updateImageSizeAndResolutionPointers).

    current_size = min(2·(maxres + incr_size), N); coarse size from the coarse psi step
    and the particle diameter (2·ceil(N·px/coarse_res), coarse_res =
    (psi_step/360)·π·diameter/1.5) or 2·round(N·px/strict_highres_exp); capped by
    current_size.
    """
    maxres = shell_of_resolution(current_resolution, box, pixel_size_A) + incr_size
    current = min(2 * maxres, box)
    if strict_highres_exp_A > 0:
        coarse = 2 * int(round(box * pixel_size_A / strict_highres_exp_A))
    elif oversampling > 0:
        rotated_distance = (psi_step_deg / 360.0) * math.pi * particle_diameter_A
        coarse_res = rotated_distance / 1.5
        coarse = 2 * int(math.ceil(pixel_size_A * box / coarse_res))
        if max_coarse_size > 0:
            coarse = min(coarse, max_coarse_size)
    else:
        coarse = current
    return int(current), int(min(coarse, current))


def estimated_resolution_and_completeness(ssnr: Any, completeness: Any, box: int,
                                          pixel_size_A: float) -> tuple[Any, Any]:
    """Per class rlnEstimatedResolution (Å) and rlnOverallFourierCompleteness (RELION's ``MlModel::write``).

    maxres = last shell before the first shell (from 0) with SSNR < 1; resolution
    N·px/maxres (999 when maxres = 0); completeness = mean of the per-shell completeness
    over the integer points of a 3-D ball of radius maxres in a (2·maxres−1)-wide cube.
    """
    xp = array_module(ssnr)
    s = to_host(ssnr)
    c = to_host(completeness)
    k, nsh = s.shape
    res = np.full(k, 999.0)
    overall = np.zeros(k)
    for i in range(k):
        below = np.flatnonzero(s[i] < 1.0)
        maxres = (int(below[0]) - 1) if below.size else nsh - 1
        maxres = max(maxres, 0)
        if maxres > 0:
            res[i] = box * pixel_size_A / maxres
        half = maxres - 1
        if half < 0:
            continue
        g = np.arange(-half, half + 1)
        r = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)
        ires = np.rint(r).astype(np.int64)
        sel = ires[ires <= maxres]
        if sel.size:
            overall[i] = float(c[i][np.minimum(sel, nsh - 1)].mean())
    return xp.asarray(res), xp.asarray(overall)
