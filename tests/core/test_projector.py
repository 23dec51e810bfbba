"""Padded Fourier projector: rotation accuracy, adjointness of back-projection, tau2."""
from __future__ import annotations

import numpy as np

from emclass2d.core.backend import to_host
from emclass2d.core.estep import pixel_set
from emclass2d.core.projector import (
    Projector, back_project, empty_grid, make_projector, project, reference_power_spectrum,
)


def _blob_image(n: int) -> np.ndarray:
    c = np.arange(n) - n // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    return (np.exp(-((x - 3) ** 2 + (y + 2) ** 2) / 8.0) - 0.6 * np.exp(-((x + 4) ** 2 + (y - 1) ** 2) / 5.0))


def _dtft(img: np.ndarray, qx: np.ndarray, qy: np.ndarray) -> np.ndarray:
    """Direct Fourier sum with the phase origin at the box centre, ÷N² (RELION scale)."""
    n = img.shape[0]
    c = np.arange(n) - n // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    ph = np.exp(-2j * np.pi * (qx[:, None] * x.ravel()[None, :] + qy[:, None] * y.ravel()[None, :]) / n)
    return ph @ img.ravel() / (n * n)


def test_projection_matches_direct_rotation(xp):
    n = 32
    img = _blob_image(n)
    proj = make_projector(xp.asarray(img[None]), current_size=n, padding_factor=2)
    pix = pixel_set(n, n, xp)
    kx, ky = to_host(pix.kx).astype(float), to_host(pix.ky).astype(float)
    low = (kx ** 2 + ky ** 2) <= (n / 4) ** 2
    for psi in (0.0, 37.0, 181.5, -75.0):
        p = to_host(project(proj, xp.asarray([0]), xp.asarray([psi]), pix.kx, pix.ky, n / 2))[0]
        a = np.deg2rad(psi)
        qx = np.cos(a) * kx - np.sin(a) * ky   # sample at R(psi)·k (RELION's ``Euler_angles2matrix``, ``Projector::rotate2D``)
        qy = np.sin(a) * kx + np.cos(a) * ky
        ref = _dtft(img, qx, qy)
        err = np.linalg.norm((p - ref)[low]) / np.linalg.norm(ref[low])
        assert err < 0.02, (psi, err)


def test_back_projection_is_adjoint(xp):
    rng = np.random.default_rng(3)
    n, k, pf = 16, 2, 2
    grid = empty_grid(k, n, pf, np)
    grid = grid + rng.standard_normal(grid.shape) + 1j * rng.standard_normal(grid.shape)
    proj = Projector(data=xp.asarray(grid), box=n, padding_factor=pf, r_max=n // 2)
    pix = pixel_set(n, 12, xp)  # no duplicated x = 0 pixels, inside radius 6
    r_lim = 6.0
    cls = xp.asarray([0, 1, 1, 0, 1])
    psi = xp.asarray([0.0, 33.3, 190.0, -91.0, 270.0])
    v = rng.standard_normal((5, pix.n)) + 1j * rng.standard_normal((5, pix.n))
    inside = to_host(pix.kx) ** 2 + to_host(pix.ky) ** 2 <= r_lim ** 2
    v[:, ~inside] = 0.0  # back_project skips these, project returns 0 there
    fwd = to_host(project(proj, cls, psi, pix.kx, pix.ky, r_lim))
    lhs = np.real(np.vdot(v, fwd))
    out = xp.zeros(grid.shape, dtype=xp.complex128)
    back_project(out, None, pf, cls, psi, pix.kx, pix.ky, xp.asarray(v), None, r_lim)
    rhs = np.real(np.vdot(to_host(out), grid))
    assert abs(lhs - rhs) < 1e-9 * abs(lhs)


def test_back_projection_weights_sum_to_count(xp):
    n, pf = 16, 2
    pix = pixel_set(n, 12, xp)
    data = xp.zeros((1,) + empty_grid(1, n, pf, np).shape[1:], dtype=xp.complex128)
    wgt = xp.zeros(data.shape, dtype=xp.float64)
    psi = xp.asarray([10.0, 100.0])
    ones = xp.ones((2, pix.n))
    back_project(data, wgt, pf, xp.asarray([0, 0]), psi, pix.kx, pix.ky, ones.astype(xp.complex128), ones, 6.0)
    inside = (to_host(pix.kx) ** 2 + to_host(pix.ky) ** 2) <= 36
    assert float(to_host(wgt).sum()) == np.float64(2 * inside.sum())


def test_tau2_is_shell_power():
    n = 32
    img = _blob_image(n)
    proj = make_projector(img[None], current_size=20, padding_factor=2)
    tau2 = reference_power_spectrum(proj)[0]
    assert tau2.shape == (17,)
    assert np.all(tau2[11:] == 0)
    # shell 0 of the padded grid: voxels with round(r/2) == 0 (r <= 1), |F|²/2 averaged
    assert tau2[0] > 0 and tau2[1] > 0 and np.all(tau2[:10] >= 0)
    # pre-correction is ~1 near the centre: the DC voxel is the image sum ÷N²
    assert np.isclose(to_host(proj.data)[0, proj.center_row, 0].real, img.sum() / n ** 2, rtol=2e-2)
