"""M-step: reconstruction chain, SSNR bookkeeping, other parameters, resolution and sizes."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from emclass2d.core.backend import to_host
from emclass2d.core.estep import BatchStats, pixel_set
from emclass2d.core.model import Model, Settings
from emclass2d.core.mstep import (
    back_rotate_stats, maximization_other_parameters, maximization_references, npix_per_shell,
    ssnr_arrays,
)
from emclass2d.core.projector import make_projector, project, reference_power_spectrum
from emclass2d.core.resolution import (
    default_ini_high_A, estimated_resolution_and_completeness, image_sizes, initial_resolution,
    update_current_resolution,
)

N = 32


def _refs():
    c = np.arange(N) - N // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    a = np.exp(-((x - 3) ** 2 / 12 + (y + 2) ** 2 / 5)) - 0.5 * np.exp(-((x + 4) ** 2 + (y - 4) ** 2) / 6)
    b = np.exp(-((x + 1) ** 2 + (y - 2) ** 2) / 9)
    return np.stack([a, b, np.zeros_like(a)])


def _stats(xp, data, weight, psi, pix, cur, k=3, n_optics=1, n_groups=1):
    z = lambda *s: xp.zeros(s)  # noqa: E731
    return BatchStats(bp_data=data, bp_weight=weight, wsum_sigma2_noise=z(n_optics, N // 2 + 1),
                      sumw_optics=z(n_optics), wsum_pdf_class=xp.asarray([2.0, 1.0, 0.0]), wsum_prior_offset_A=z(k, 2),
                      wsum_sigma2_offset_A2=xp.asarray(0.0), scale_xa=z(n_groups), scale_aa=z(n_groups),
                      n_particles_group=z(n_groups), sum_norm_correction=xp.asarray(0.0),
                      log_likelihood=xp.asarray(0.0), sum_pmax=xp.asarray(0.0), n_particles=3,
                      psi_fine_deg=psi, kx=pix.kx, ky=pix.ky, current_size=cur)


def test_reconstruction_recovers_noise_free_class(xp):
    refs = _refs()
    proj = make_projector(xp.asarray(refs), N, 2)
    pix = pixel_set(N, N, xp)
    psi = xp.asarray(np.arange(0, 360, 7.5))
    k, npsi = 3, int(psi.shape[0])
    cls = xp.repeat(xp.arange(k), npsi)
    p = project(proj, cls, xp.tile(psi, k), pix.kx, pix.ky, N / 2).reshape(1, k, npsi, -1)
    w = xp.full(p.shape, 50.0)
    w[:, 2] = 0.0
    stats = _stats(xp, p * w, w, psi, pix, N)
    model = dataclasses.replace(Model.empty(3, N, 2.0, xp=xp), references=xp.asarray(refs.astype(np.float32)))
    tau2 = reference_power_spectrum(proj) * 1e6  # weak prior
    out = maximization_references(model, stats, tau2, Settings())
    got = to_host(out.references)
    r = np.hypot(*np.meshgrid(np.arange(N) - N // 2, np.arange(N) - N // 2))
    inside = r < N / 2 - 4
    for i in range(2):
        err = np.linalg.norm((got[i] - refs[i])[inside]) / np.linalg.norm(refs[i][inside])
        assert err < 0.03, err
    assert np.all(got[2] == 0)  # empty class
    assert float(to_host(out.data_vs_prior)[0, 3]) > 1


def test_ssnr_arrays_match_direct_loop():
    rng = np.random.default_rng(0)
    pf, r_max = 2, 10
    grid_shape = (2 * N + 3, N + 2)
    w = rng.uniform(0, 3, grid_shape)
    tau2 = rng.uniform(0.1, 1.0, N // 2 + 1)
    ssnr, sig, comp = ssnr_arrays(w, tau2, 2.0, pf, N, r_max)
    m = 2 * N
    sums, cnt, ge, sw = np.zeros(17), np.zeros(17), np.zeros(17), np.zeros(17)
    for i in range(grid_shape[0]):
        for j in range(grid_shape[1]):
            y, x = i - (m // 2 + 1), j
            if x * x + y * y < (pf * r_max) ** 2:
                sh = int(np.rint(np.sqrt(x * x + y * y) / pf))
                ratio = w[i, j] * pf * pf * 2.0 * tau2[sh]
                sums[sh] += ratio
                cnt[sh] += 1
                ge[sh] += ratio >= 1
                sw[sh] += w[i, j]
    ok = np.arange(17) <= r_max
    assert np.allclose(ssnr[ok], sums[ok] / cnt[ok])
    assert np.allclose(comp[ok], ge[ok] / cnt[ok])
    assert np.allclose(sig[ok], cnt[ok] / (pf * pf * sw[ok]))
    assert np.all(ssnr[~ok] == 0)


def test_back_rotation_of_halves_sums():
    rng = np.random.default_rng(1)
    pix = pixel_set(N, 16, np)
    psi = np.array([0.0, 45.0])
    d = rng.standard_normal((2, 3, 2, pix.n)) + 0j
    w = rng.uniform(0, 1, (2, 3, 2, pix.n))
    st = _stats(np, d, w, psi, pix, 16)
    d_all, w_all = back_rotate_stats(st, N, 2)
    d0, w0 = back_rotate_stats(st, N, 2, half=0)
    d1, w1 = back_rotate_stats(st, N, 2, half=1)
    assert np.allclose(d_all, d0 + d1) and np.allclose(w_all, w0 + w1)
    # x = 0 column Hermitian after enforcement
    c = N + 1
    assert np.allclose(d_all[:, c + 3, 0], np.conj(d_all[:, c - 3, 0]))
    assert np.allclose(w_all[:, c + 3, 0], w_all[:, c - 3, 0])


def test_other_parameters():
    k, ns = 3, N // 2 + 1
    model = dataclasses.replace(Model.empty(k, N, 2.0, n_optics=2, n_groups=3), scale=np.array([1.0, 1.0, 1.0]),
                                sigma2_noise=np.full((2, ns), 7.0), sigma2_offset_A2=50.0)
    wsum = np.ones((2, ns))
    wsum[0, 5] = 0.0  # zero shell -> previous shell's value
    st = BatchStats(bp_data=np.zeros((1, k, 1, 1), complex), bp_weight=np.zeros((1, k, 1, 1)),
                    wsum_sigma2_noise=wsum, sumw_optics=np.array([4.0, 0.0]), wsum_pdf_class=np.array([3.0, 1.0, 0.0]),
                    wsum_prior_offset_A=np.array([[3.0, -6.0], [1.0, 1.0], [0.0, 0.0]]),
                    wsum_sigma2_offset_A2=np.array(4.0), scale_xa=np.array([1.0, 30.0, 1.0]),
                    scale_aa=np.array([1.0, 1.0, 2.0]), n_particles_group=np.array([2.0, 1.0, 1.0]),
                    sum_norm_correction=np.array(4.4), log_likelihood=np.array(-12.0), sum_pmax=np.array(2.0),
                    n_particles=4, psi_fine_deg=np.zeros(1), kx=np.zeros(1), ky=np.zeros(1), current_size=N)
    s = Settings(do_norm=True, do_scale=True)
    m = maximization_other_parameters(model, st, s)
    assert np.allclose(m.pdf_class, [0.75, 0.25, 0.0])
    assert np.allclose(m.prior_offset_A, [[1.0, -2.0], [1.0, 1.0], [0.0, 0.0]])
    assert m.sigma2_offset_A2 == 2.0  # 4/(2·4) = 0.5 -> lower bound 2
    npix = npix_per_shell(N)
    assert npix[0] == 1 and npix.sum() == sum(1 for i in range(N) for j in range(N // 2 + 1)
                                               if round(np.hypot(j, i if i <= N // 2 else i - N)) <= N // 2
                                               and not (j == 0 and (i if i <= N // 2 else i - N) < 0))
    exp = 1.0 / (2 * 4.0 * npix)
    exp[5] = exp[4]
    assert np.allclose(m.sigma2_noise[0], exp) and np.all(m.sigma2_noise[1] == 7.0)
    assert m.avg_norm_correction == pytest.approx(1.1)
    # raw scales 1, 30, 0.5; median 1 -> clamp 30 to 5; count-weighted mean (2·1 + 5 + 0.5)/4
    raw = np.array([1.0, 5.0, 0.5])
    assert np.allclose(m.scale, raw / ((2 * 1.0 + 5.0 + 0.5) / 4))
    assert m.log_likelihood == -12.0 and m.ave_pmax == 0.5
    m9 = maximization_other_parameters(model, st, s, mu=0.9)
    assert np.allclose(m9.sigma2_noise[0], 0.9 * 7.0 + 0.1 * exp)
    assert np.allclose(m9.pdf_class, (0.9 / 3 + 0.1 * np.array([0.75, 0.25, 0.0])) / (0.9 + 0.1))


def test_resolution_and_sizes():
    assert default_ini_high_A(64, 2.0) == pytest.approx(128 / 4)
    res = initial_resolution(64, 2.0, 32.0)
    assert res == pytest.approx(4 / 128)
    cur, coarse = image_sizes(res, 64, 2.0, 10, 12.0, 100.0, 1)
    assert cur == 28
    assert coarse == min(2 * int(np.ceil(128 / ((12 / 360) * np.pi * 100 / 1.5))), 28)
    assert image_sizes(res, 64, 2.0, 10, 12.0, 100.0, 1, strict_highres_exp_A=20.0)[1] == 2 * round(128 / 20)
    assert image_sizes(0.2, 64, 2.0, 10, 12.0, 100.0, 0) == (64, 64)
    ssnr = np.full((2, 33), 5.0)
    ssnr[0, 9:] = 0.5
    ssnr[1, 12:] = 0.5
    assert update_current_resolution(ssnr, 64, 2.0) == pytest.approx(11 / 128)
    ssnr[:, 3:] = 0.1
    assert update_current_resolution(ssnr, 64, 2.0) == pytest.approx(5 / 128)  # minres_map floor
    comp = np.ones((2, 33))
    comp[:, 2] = 0.0
    r, o = estimated_resolution_and_completeness(ssnr, comp, 64, 2.0)
    assert np.allclose(r, 128 / 2)
    # ball of radius 2 in a 3-wide cube: 27 points, those with round(r) == 2 have completeness 0
    g = np.arange(-1, 2)
    rr = np.rint(np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2))
    assert np.allclose(o, (rr < 2).sum() / 27)
