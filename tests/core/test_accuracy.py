"""Expected orientation accuracies (core/accuracy.py) against a slow float64 loop and sanity cases."""
from __future__ import annotations

import numpy as np
import pytest

from emclass2d.core.accuracy import (MAX_PSI_ERROR_DEG, MAX_SHIFT_ERROR_PX, expected_accuracies, psi_error_schedule,
                                     shift_error_schedule, trial_poses)
from emclass2d.core.backend import to_host
from emclass2d.core.ctf import compute_ctf
from emclass2d.core.fourier import frequency_grid
from emclass2d.core.projector import make_projector, project


def _blobs(n: int, centres, sigma: float, amp: float = 1.0) -> np.ndarray:
    c = np.arange(n) - n // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    img = np.zeros((n, n))
    for (cx, cy), a in centres:
        img += a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma ** 2))
    return amp * img


def _case(n: int = 16, p: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    refs = np.stack([
        _blobs(n, [((2, 1), 1.0), ((-3, 2), 0.7), ((1, -3), 0.5)], 1.2, 3.0),
        _blobs(n, [((0, 0), 1.0), ((3, 3), 0.6)], 1.8, 1.0),
        rng.normal(size=(n, n)),
    ])
    fx, fy = frequency_grid(n, 4.0)
    ctf = np.stack([compute_ctf(fx, fy, 15000.0 + 2000 * i, 14000.0 + 2000 * i, 30.0 * i, 300.0, 2.7, 0.1)
                    for i in range(p)])
    sigma2 = np.tile(np.linspace(1e-4, 2.5e-5, n // 2 + 1), (p, 1)) * (1 + 0.1 * np.arange(p))[:, None]
    return refs, ctf, sigma2


def _brute_force(refs, pdf, ctf, sigma2, size, psi0, axis, px, scale):
    """RELION's loop, one particle and class at a time, pixels enumerated one by one (float64)."""
    k, n, _ = refs.shape
    proj = make_projector(refs.astype(np.float64), size, 2)
    pixels = []
    for iy in range(n):
        ky = iy if iy <= n // 2 else iy - n
        for kx in range(n // 2 + 1):
            r = int(round(np.sqrt(kx * kx + ky * ky)))
            in_window = kx <= size // 2 and -size // 2 < ky <= size // 2
            if in_window and 0 < r <= size // 2 and not (kx == 0 and ky < 0):
                pixels.append((iy, kx, ky, r))
    kxs = np.array([q[1] for q in pixels])
    kys = np.array([q[2] for q in pixels])

    def predict(c, psi, i):
        f = project(proj, np.array([c]), np.array([psi]), kxs, kys, size / 2.0)[0]
        return f * np.array([ctf[i][q[0], q[1]] for q in pixels]) * scale[i]

    def snr(f1, f2, i):
        return sum(abs(f1[j] - f2[j]) ** 2 / (2 * sigma2[i][q[3]]) for j, q in enumerate(pixels))

    rot = np.full(k, 999.0)
    trans = np.full(k, 999.0)
    for c in range(k):
        if pdf[c] < 0.01:
            continue
        errs_r, errs_t = [], []
        for i in range(len(psi0)):
            f1 = predict(c, psi0[i], i)
            e = 0.0
            while True:
                e = round(e + (0.05 if e < 0.2 else 0.1 if e < 1 else 0.2 if e < 2 else 0.5 if e < 5
                               else 1.0 if e < 10 else 2.0 if e < 20 else 5.0), 9)
                if snr(f1, predict(c, psi0[i] + e, i), i) > 4.60517 or e >= 30.0:
                    break
            errs_r.append(min(e, 30.0))
            e = 0.0
            while True:
                e = round(e + (0.1 if e < 1 else 0.2 if e < 2 else 0.5 if e < 5 else 1.0 if e < 10 else 2.0), 9)
                t = (e, 0.0) if axis[i] == 0 else (0.0, e)
                f2 = f1 * np.exp(-2j * np.pi * (kxs * t[0] + kys * t[1]) / n)
                if snr(f1, f2, i) > 4.60517 or e >= 10.0:
                    break
            errs_t.append(min(e, 10.0))
        rot[c] = np.mean(errs_r)
        trans[c] = np.mean(errs_t) * px
    return rot, trans


def test_schedules_grow_as_relion():
    psi = psi_error_schedule()
    assert psi[:5].tolist() == [0.05, 0.1, 0.15, 0.2, 0.3]
    assert np.all(np.diff(psi) > 0) and psi[-1] >= MAX_PSI_ERROR_DEG and psi[-2] < MAX_PSI_ERROR_DEG
    assert set(np.round(np.diff(psi), 6)) == {0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0}
    sh = shift_error_schedule()
    assert sh[:3].tolist() == [0.1, 0.2, 0.3]
    assert sh[-1] >= MAX_SHIFT_ERROR_PX and np.diff(sh).max() <= 2.0 + 1e-12


def test_matches_brute_force_float64(xp):
    refs, ctf, sigma2 = _case()
    pdf = np.array([0.6, 0.395, 0.005])  # third class below 0.01: not evaluated
    psi0, axis = trial_poses(3, random_seed=5, iteration=2)
    axis = np.array([0, 1, 0])
    scale = np.array([1.0, 0.9, 1.1])
    for size in (16, 10):
        acc = expected_accuracies(xp.asarray(refs), pdf, xp.asarray(ctf), xp.asarray(sigma2), size,
                                  psi0, axis, pixel_size_A=4.0, scale=scale)
        rot, trans = _brute_force(refs, pdf, ctf, sigma2, size, psi0, axis, 4.0, scale)
        np.testing.assert_allclose(to_host(acc.rot_deg), rot, rtol=1e-9)
        np.testing.assert_allclose(to_host(acc.trans_A), trans, rtol=1e-9)
        assert acc.rot_deg[2] == 999.0 and acc.trans_A[2] == 999.0
        # the case is informative: errors strictly inside the caps
        assert np.all((rot[:2] > 0.05) & (rot[:2] < 30)) and np.all((trans[:2] > 0.2) & (trans[:2] < 40))


def test_sharper_stronger_class_is_more_accurate():
    n = 32
    sharp = _blobs(n, [((5, 2), 1.0), ((-6, 4), 0.8), ((2, -7), 0.6), ((-3, -3), 0.5)], 1.0, 1.0)
    blurred = _blobs(n, [((5, 2), 1.0), ((-6, 4), 0.8), ((2, -7), 0.6), ((-3, -3), 0.5)], 3.0, 0.3)
    refs = np.stack([sharp, blurred])
    fx, fy = frequency_grid(n, 3.0)
    ctf = np.stack([compute_ctf(fx, fy, 12000.0 + 1500 * i, 12000.0 + 1500 * i, 0.0, 300.0, 2.7, 0.1) for i in range(10)])
    sigma2 = np.full((10, n // 2 + 1), 2e-5)
    psi0, axis = trial_poses(10, 1, 1)
    acc = expected_accuracies(refs, np.array([0.5, 0.5]), ctf, sigma2, n, psi0, axis, pixel_size_A=3.0)
    assert acc.rot_deg[0] < acc.rot_deg[1]
    assert acc.trans_A[0] < acc.trans_A[1]
    # more noise -> larger (or equal, if capped) errors
    noisy = expected_accuracies(refs, np.array([0.5, 0.5]), ctf, 16 * sigma2, n, psi0, axis, pixel_size_A=3.0)
    assert np.all(noisy.rot_deg >= acc.rot_deg) and noisy.rot_deg[0] > acc.rot_deg[0]
    assert np.all(noisy.trans_A >= acc.trans_A) and noisy.trans_A[0] > acc.trans_A[0]
    # fewer pixels (lower current size) -> less information -> larger psi error
    low = expected_accuracies(refs, np.array([0.5, 0.5]), ctf, sigma2, 12, psi0, axis, pixel_size_A=3.0)
    assert low.rot_deg[0] > acc.rot_deg[0]


def test_empty_class_and_no_signal_caps():
    n = 16
    refs = np.zeros((2, n, n))
    refs[0] = _blobs(n, [((2, 1), 1.0)], 1.5, 1e-6)  # nearly no signal: hits the caps
    sigma2 = np.full((4, n // 2 + 1), 1e-3)
    psi0, axis = trial_poses(4, 0, 0)
    acc = expected_accuracies(refs, np.array([1.0, 0.0]), None, sigma2, n, psi0, axis, pixel_size_A=2.0)
    assert acc.rot_deg[0] == pytest.approx(30.0) and acc.trans_A[0] == pytest.approx(20.0)
    assert acc.rot_deg[1] == 999.0 and acc.trans_A[1] == 999.0


def test_trial_poses_seeded():
    a = trial_poses(10, 3, 4)
    b = trial_poses(10, 3, 4)
    c = trial_poses(10, 3, 5)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and not np.array_equal(a[0], c[0])
    assert a[0].min() >= 0 and a[0].max() < 360 and set(a[1].tolist()) <= {0, 1}
