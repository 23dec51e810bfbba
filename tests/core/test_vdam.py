"""VDAM moments and reference update against a slow float64 reference written from RELION's ``MlOptimiser::maximizationGradientParameters``, ``BackProjector::reconstructGrad``, ``centerClasses``."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fixture_paths import RELION5_CLASS2D
from emclass2d.core.fourier import rfft2_centered
from emclass2d.core.vdam import (
    VdamState,
    centred_grid_to_fftw,
    centred_rows_to_fftw,
    fftw_to_centred_rows,
    average_to_padded_fourier,
    centring_applies,
    centring_min_shift_px,
    choose_class_replacement,
    copy_class_rows,
    padded_fourier_to_average,
    reconstruct_grad,
    replace_class,
    shift_first_moments,
    update_moments,
)

N, PF, P = 8, 2, 16
FIXTURE = RELION5_CLASS2D / "Class2D" / "job002"


# ---------------------------------------------------------------- slow reference
def kxy(row: int, col: int) -> tuple[int, int]:
    return col, (row if row <= P // 2 else row - P)


def shell_of(r2: int) -> int:
    return int(math.floor(math.sqrt(r2) / PF + 0.5))


def ref_dft_padded(img: np.ndarray, max_r2: int) -> np.ndarray:
    """Padded, centred, N-scaled half-plane transform by explicit sums."""
    pad = np.zeros((P, P))
    o = P // 2 - N // 2
    pad[o:o + N, o:o + N] = img
    out = np.zeros((P, P // 2 + 1), complex)
    pos = np.arange(P) - P // 2
    for row in range(P):
        for col in range(P // 2 + 1):
            kx, ky = kxy(row, col)
            if kx * kx + ky * ky > max_r2:
                continue
            e = np.exp(-2j * np.pi * (kx * pos[None, :] + ky * pos[:, None]) / P)
            out[row, col] = (pad * e).sum() * PF * PF / (P * P)
    return out


def ref_idft_to_average(f: np.ndarray) -> np.ndarray:
    pos = np.arange(P) - P // 2
    img = np.zeros((P, P))
    for row in range(P):
        for col in range(P // 2 + 1):
            kx, ky = kxy(row, col)
            term = (f[row, col] * np.exp(2j * np.pi * (kx * pos[None, :] + ky * pos[:, None]) / P)).real
            img += term if col in (0, P // 2) else 2 * term
    o = P // 2 - N // 2
    img = img[o:o + N, o:o + N] / (PF * PF)
    yy, xx = np.mgrid[0:N, 0:N] - N // 2
    r = np.sqrt(xx**2 + yy**2)
    radius, edge = N / 2, 3.0
    w = np.where(r < radius, 1.0, np.where(r > radius + edge, 0.0, 0.5 + 0.5 * np.cos(np.pi * (r - radius) / edge)))
    bg = ((1 - w) * img).sum() / (1 - w).sum()
    return w * img + (1 - w) * bg


def ref_iteration(avgs, m1a, m1b, m2, d1, w1, d2, w2, pdf, step, tau, current_size):
    """One VDAM reference update, element by element (RELION's ``MlOptimiser::maximizationGradientParameters``, ``BackProjector::reconstructGrad``)."""
    K = avgs.shape[0]
    m1a, m1b, m2 = m1a.copy(), m1b.copy(), m2.copy()
    R = int(math.floor(PF * (current_size // 2) + 0.5))
    max_r2 = R * R
    nsh = N // 2 + 1
    grad = np.zeros_like(m1a)
    noise = np.zeros((K, nsh))
    err = np.zeros(K)
    new_avgs = avgs.copy()
    fscs = np.zeros((K, nsh))
    for k in range(K):
        if not (pdf[k] > 0 and w1[k].sum() > 0):
            continue
        first_a, first_b = not np.any(m1a[k]), not np.any(m1b[k])
        nsum, ncnt, esum, ecnt = np.zeros(nsh), np.zeros(nsh), 0.0, 0
        for row in range(P):
            for col in range(P // 2 + 1):
                kx, ky = kxy(row, col)
                r2 = kx * kx + ky * ky
                if r2 >= max_r2:
                    continue
                g1 = d1[k, row, col] / max(1.0, w1[k, row, col])
                g2 = d2[k, row, col] / max(1.0, w2[k, row, col])
                m1a[k, row, col] = g1 if first_a else 0.9 * m1a[k, row, col] + 0.1 * g1
                m1b[k, row, col] = g2 if first_b else 0.9 * m1b[k, row, col] + 0.1 * g2
                m2[k, row, col] = 0.999 * m2[k, row, col] + 0.001 * abs(g2 - g1) ** 2 / (abs((g1 + g2) / 2) ** 2 + 1e-12)
                G = (m1a[k, row, col] + m1b[k, row, col]) / 2 / (math.sqrt(m2[k, row, col]) + 1e-12)
                grad[k, row, col] = G
                s = shell_of(r2)
                nsum[s] += abs(m1a[k, row, col] - m1b[k, row, col])
                ncnt[s] += 1
                esum += abs(G) ** 2
                ecnt += 1
        noise[k] = np.where(ncnt > 0, nsum / np.maximum(ncnt, 1), 0)
        err[k] = esum / ecnt * pdf[k]
        # reference update
        F = ref_dft_padded(avgs[k], max_r2)
        psum, pcnt = np.zeros(nsh), np.zeros(nsh)
        for row in range(P):
            for col in range(P // 2 + 1):
                kx, ky = kxy(row, col)
                if kx * kx + ky * ky < max_r2:
                    s = shell_of(kx * kx + ky * ky)
                    psum[s] += abs(F[row, col])
                    pcnt[s] += 1
        for s in range(nsh):
            if pcnt[s] > 0:
                prev = psum[s] / pcnt[s]
                snr = 2 * tau * prev / noise[k, s] if noise[k, s] > 0 else 0.0
                fscs[k, s] = min(max(snr / (1 + snr), 0.0), 1.0)
        lam = step * (1 - math.exp(-(3 * K + 10) * pdf[k]))
        for row in range(P):
            for col in range(P // 2 + 1):
                kx, ky = kxy(row, col)
                if kx * kx + ky * ky < max_r2:
                    f = fscs[k, shell_of(kx * kx + ky * ky)]
                    F[row, col] += lam * (f * grad[k, row, col] - (1 - f) * F[row, col])
        new_avgs[k] = ref_idft_to_average(F)
    return new_avgs, m1a, m1b, m2, grad, noise, err, fscs


# ---------------------------------------------------------------- inputs
def hermitian_x0(a: np.ndarray, real: bool) -> np.ndarray:
    """Make the x = 0 column obey F(0,-ky) = conj F(0,ky), as a real image's transform does."""
    a = a.copy()
    for ky in range(1, P // 2):
        a[..., P - ky, 0] = a[..., ky, 0] if real else np.conj(a[..., ky, 0])
    if not real:
        a[..., 0, 0] = a[..., 0, 0].real
    return a


def make_sums(rng, K, zero_classes=()):
    shape = (K, P, P // 2 + 1)
    out = []
    for _ in range(2):
        d = hermitian_x0(rng.normal(size=shape) + 1j * rng.normal(size=shape), real=False)
        w = hermitian_x0(rng.uniform(0.2, 3.0, size=shape), real=True)
        for k in zero_classes:
            d[k] = 0
            w[k] = 0
        out += [d, w]
    return out


def run_core(state, avgs, sums, pdf, step, tau, current_size):
    upd = update_moments(state, *sums, pdf, current_size, N)
    new, fsc = reconstruct_grad(avgs, upd.grad, upd.noise, pdf, step, tau, current_size, upd.active)
    return upd, new, fsc


# ---------------------------------------------------------------- tests
def test_two_iterations_match_float64_reference():
    rng = np.random.default_rng(11)
    K, cs = 2, 6
    avgs = rng.normal(size=(K, N, N))
    pdf = np.array([0.7, 0.3])
    state = VdamState.initial(K, P, dtype=np.float64)
    m1a, m1b, m2 = (np.asarray(a).copy() for a in (state.m1_half1, state.m1_half2, state.m2))
    for it, (step, tau) in enumerate([(0.9, 1.0), (0.6, 1.7)]):
        sums = make_sums(rng, K)
        upd, new, fsc = run_core(state, avgs, sums, pdf, step, tau, cs)
        ref = ref_iteration(avgs, m1a, m1b, m2, *sums, pdf, step, tau, cs)
        r_avgs, m1a, m1b, m2, r_grad, r_noise, r_err, r_fsc = ref
        np.testing.assert_allclose(upd.state.m1_half1, m1a, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(upd.state.m1_half2, m1b, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(upd.state.m2, m2, rtol=1e-10)
        np.testing.assert_allclose(upd.grad, r_grad, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(upd.noise, r_noise, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(upd.avg_class_error, r_err, rtol=1e-10)
        np.testing.assert_allclose(fsc, r_fsc, rtol=1e-10, atol=1e-13)
        # core.mask builds its soft-edge weights in float32, hence 1e-6 here (1e-10 above)
        np.testing.assert_allclose(new, r_avgs, rtol=1e-6, atol=1e-7)
        assert not np.allclose(new, avgs)  # the update did something
        assert upd.active.tolist() == [True, True]
        state, avgs = upd.state, new
    assert upd.state.m2_updated_r2.tolist() == [36, 36]


def test_float32_close_to_float64():
    rng = np.random.default_rng(5)
    K, cs = 2, 8
    avgs = rng.normal(size=(K, N, N))
    sums = make_sums(rng, K)
    pdf = np.array([0.5, 0.5])
    _, new64, _ = run_core(VdamState.initial(K, P, dtype=np.float64), avgs, sums, pdf, 0.9, 2.0, cs)
    sums32 = [s.astype(np.complex64 if np.iscomplexobj(s) else np.float32) for s in sums]
    _, new32, _ = run_core(VdamState.initial(K, P), avgs.astype(np.float32), sums32, pdf, 0.9, 2.0, cs)
    assert new32.dtype == np.float32
    np.testing.assert_allclose(new32, new64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("empty_pdf", [0.0, 1e-4])
def test_class_without_particles_is_replaced_by_largest_error_class(empty_pdf):
    rng = np.random.default_rng(2)
    K, cs = 3, 6
    avgs = rng.normal(size=(K, N, N))
    pdf = np.array([0.6 - empty_pdf, 0.4, empty_pdf])
    state = VdamState.initial(K, P, dtype=np.float64)
    state = update_moments(state, *make_sums(rng, K), np.array([0.5, 0.3, 0.2]), cs, N).state  # history
    zero = (2,) if empty_pdf == 0.0 else ()
    upd = update_moments(state, *make_sums(rng, K, zero_classes=zero), pdf, cs, N)
    assert upd.active.tolist() == [True, True, empty_pdf > 0]
    pair = choose_class_replacement(pdf, upd.avg_class_error, threshold=0.1)
    expand = int(np.argmax(upd.avg_class_error))
    assert pair == (2, expand) and expand != 2
    new_state = replace_class(upd.state, *pair)
    np.testing.assert_array_equal(new_state.m1_half1[2], 0.9 * upd.state.m1_half1[expand])
    np.testing.assert_array_equal(new_state.m1_half2[2], upd.state.m1_half2[expand])
    np.testing.assert_array_equal(new_state.m2[2], upd.state.m2[expand])
    np.testing.assert_array_equal(new_state.m1_half1[:2], upd.state.m1_half1[:2])
    model = copy_class_rows({"averages": avgs, "pdf_class": pdf}, *pair)
    assert model["pdf_class"][2] == pdf[expand] and pdf[2] == empty_pdf  # input untouched
    update = upd.active & (np.arange(K) != pair[0])
    new, _ = reconstruct_grad(model["averages"], upd.grad, upd.noise, model["pdf_class"], 0.6, 2.0, cs, update)
    np.testing.assert_array_equal(new[2], avgs[expand])  # copied, not updated this iteration
    assert not np.allclose(new[expand], avgs[expand])


def test_no_replacement_when_threshold_not_met():
    assert choose_class_replacement([0.5, 0.3, 0.2], [1.0, 2.0, 3.0], 0.1) is None  # 0.2 > 0.1/3
    assert choose_class_replacement([0.5, 0.49, 0.01], [1.0, 2.0, 3.0], 0.0) is None  # off
    assert choose_class_replacement([0.5, 0.49, 0.01], [1.0, 2.0, 3.0], 0.1) is None  # would copy onto itself
    assert choose_class_replacement([0.5, 0.49, 0.01], [1.0, 3.0, 2.0], 0.1) == (2, 1)


def test_moment_stack_layout_round_trip():
    rng = np.random.default_rng(4)
    K = 2
    shape = (K, P, P // 2 + 1)
    state = VdamState(
        m1_half1=(rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64),
        m1_half2=(rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64),
        m2=rng.uniform(1, 5, size=shape).astype(np.float32),
        m2_updated_r2=np.array([36, 0]),
    )
    s1, s2 = state.to_moment_stacks()
    assert s1.shape == (2 * K, P, 2 * (P // 2 + 1)) and s2.shape == (K, P, 2 * (P // 2 + 1))
    # FFTW row 3 (ky=+3) and row P-3 (ky=-3) sit at stack rows P/2+3 and P/2-3; half 2 of class 1 at K+1
    assert s1[1, P // 2 + 3, 4] == state.m1_half1[1, 3, 2].real and s1[1, P // 2 + 3, 5] == state.m1_half1[1, 3, 2].imag
    assert s1[K + 1, P // 2 - 3, 0] == state.m1_half2[1, P - 3, 0].real
    # m2 imaginary part: 0 where updated (r^2 < 36), 1 elsewhere (never-updated class: all 1)
    assert s2[0, P // 2, 2 * 5 + 1] == 0.0 and s2[0, P // 2, 2 * 6 + 1] == 1.0
    assert np.all(s2[1, :, 1::2] == 1.0)
    back = VdamState.from_moment_stacks(s1, s2)
    for a, b in ((back.m1_half1, state.m1_half1), (back.m1_half2, state.m1_half2), (back.m2, state.m2)):
        np.testing.assert_array_equal(a, b)
    assert back.m2_updated_r2.tolist() == [36, 0]
    with pytest.raises(ValueError, match="_1moment"):
        VdamState.from_moment_stacks(s1[:3], s2)


@pytest.mark.skipif(not FIXTURE.exists(), reason="RELION fixture not available")
def test_relion_moment_stacks_round_trip_bit_exact():
    mrcfile = pytest.importorskip("mrcfile")
    with mrcfile.open(FIXTURE / "run_it100_1moment.mrcs") as f1, mrcfile.open(FIXTURE / "run_it100_2moment.mrcs") as f2:
        s1, s2 = np.array(f1.data), np.array(f2.data)
    state = VdamState.from_moment_stacks(s1, s2)
    assert state.nr_classes == 4 and state.padded_size == 128
    assert state.m2_updated_r2.tolist() == [64 * 64] * 4  # r_max 32, pf 2
    m = state.m1_half1[0, :, 0]  # x = 0 column of a real image's transform is Hermitian
    np.testing.assert_allclose(m[1:64], np.conj(m[-1:-64:-1]))
    a, b = state.to_moment_stacks()
    np.testing.assert_array_equal(a, s1)
    np.testing.assert_array_equal(b, s2)


def test_shift_first_moments_matches_real_space_roll():
    rng = np.random.default_rng(8)
    img = np.zeros((2, P, P))
    img[:, 5:11, 4:12] = rng.normal(size=(2, 6, 8))
    f = rfft2_centered(img)
    state = VdamState(m1_half1=f, m1_half2=2 * f, m2=np.ones(f.shape), m2_updated_r2=np.zeros(2, np.int64))
    shifted = shift_first_moments(state, [(2.0, -1.0), (0.0, 0.0)])
    rolled = rfft2_centered(np.roll(img[0], shift=(-1, 2), axis=(0, 1)))  # dx = +2, dy = -1
    np.testing.assert_allclose(shifted.m1_half1[0], rolled, atol=1e-12)
    np.testing.assert_allclose(shifted.m1_half2[0], 2 * rolled, atol=1e-12)
    np.testing.assert_allclose(shifted.m1_half1[1], f[1], atol=1e-12)
    assert centring_min_shift_px(150.0, 3.0) == 2.0 and centring_min_shift_px(400.0, 1.0) == 4.0
    assert not centring_applies((1.5, 1.0), 150.0, 3.0) and centring_applies((1.5, 1.5), 150.0, 3.0)


def test_padded_round_trip_of_smooth_average():
    yy, xx = np.mgrid[0:N, 0:N] - N // 2
    blob = np.exp(-(xx**2 + yy**2) / (2 * 1.2**2))[None]
    f = average_to_padded_fourier(blob, 2.0, N)
    assert f.shape == (1, P, P // 2 + 1)
    assert f[0, 0, 0].real == pytest.approx(blob.sum() / N**2)  # N-box scale
    back = padded_fourier_to_average(f, N)
    np.testing.assert_allclose(back, blob, atol=2e-3)


@pytest.mark.gpu
def test_gpu_matches_cpu():
    from emclass2d.core.backend import cupy_or_none, to_device, to_host

    rng = np.random.default_rng(9)
    K, cs = 3, 6
    avgs = rng.normal(size=(K, N, N)).astype(np.float32)
    sums = [s.astype(np.complex64 if np.iscomplexobj(s) else np.float32) for s in make_sums(rng, K)]
    pdf = np.array([0.5, 0.3, 0.2])
    upd, new, fsc = run_core(VdamState.initial(K, P), avgs, sums, pdf, 0.9, 2.0, cs)
    state_gpu = VdamState.initial(K, P, xp=cupy_or_none())
    upd_g, new_g, fsc_g = run_core(state_gpu, to_device(avgs, "gpu"), [to_device(s, "gpu") for s in sums], pdf, 0.9, 2.0, cs)
    np.testing.assert_allclose(to_host(new_g), new, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(to_host(upd_g.state.m2), upd.state.m2, rtol=1e-5)
    np.testing.assert_allclose(to_host(fsc_g), fsc, rtol=1e-5, atol=1e-7)
    shifted = shift_first_moments(upd_g.state, np.ones((K, 2)))
    np.testing.assert_allclose(to_host(shifted.m1_half1), shift_first_moments(upd.state, np.ones((K, 2))).m1_half1, rtol=1e-4, atol=1e-6)
    s1, s2 = upd_g.state.to_moment_stacks()
    np.testing.assert_array_equal(s2, upd.state.to_moment_stacks()[1])


def test_centred_grids_convert_to_fftw_layout():
    rng = np.random.default_rng(6)
    f = rng.normal(size=(2, P, P // 2 + 1)) + 1j * rng.normal(size=(2, P, P // 2 + 1))
    centred = fftw_to_centred_rows(f)
    assert centred[0, P // 2 + 2, 3] == f[0, 2, 3] and centred[0, P // 2 - 2, 3] == f[0, P - 2, 3]
    np.testing.assert_array_equal(centred_rows_to_fftw(centred), f)
    np.testing.assert_array_equal(centred_grid_to_fftw(centred, P), f)
    guarded = np.zeros((2, P + 3, P // 2 + 2), complex)  # rows ky + P/2 + 1, ky in [-P/2-1, P/2+1]
    guarded[:, 1 : P + 1, : P // 2 + 1] = centred
    np.testing.assert_array_equal(centred_grid_to_fftw(guarded, P), f)
    with pytest.raises(ValueError, match="does not cover"):
        centred_grid_to_fftw(centred[:, :-4], P)
