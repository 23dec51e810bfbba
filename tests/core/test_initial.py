"""Initial noise spectra, blob references, tau2 at it000 and the background check (RELION's ``MlOptimiser::initialise``)."""
from __future__ import annotations

import numpy as np
import pytest

from emclass2d.core.fourier import irfft2_centered
from emclass2d.core.initial import (
    NoiseSums,
    ReferenceSums,
    add_noise_sums,
    add_reference_sums,
    blob_references,
    check_background_normalisation,
    default_ini_high_A,
    fill_negative,
    first_particles_per_group,
    initial_ssnr,
    initial_tau2,
    lowpass_raised_cosine,
    sigma2_noise_from_sums,
    stage2_references,
)


def brute_spectrum(img: np.ndarray) -> np.ndarray:
    """float64 per-shell mean |F|² by an explicit DFT with phase origin at N//2, ÷N².

    Half-plane elements kx = 0..N/2, ky wrapped (Nyquist row +N/2); the x = 0, ky < 0
    duplicates are skipped; shell = round(|k|) up to N/2.
    """
    n = img.shape[0]
    idx = np.arange(n) - n // 2
    sums = np.zeros(n // 2 + 1)
    counts = np.zeros(n // 2 + 1)
    for ky in range(-n // 2 + 1, n // 2 + 1):
        for kx in range(0, n // 2 + 1):
            if kx == 0 and ky < 0:
                continue
            shell = int(np.rint(np.hypot(kx, ky)))
            if shell > n // 2:
                continue
            phase = np.exp(-2j * np.pi * (kx * idx[None, :] + ky * idx[:, None]) / n)
            f = (img * phase).sum() / n**2
            sums[shell] += abs(f) ** 2
            counts[shell] += 1
    return sums / counts


def brute_sigma2(images: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    spectra = np.array([brute_spectrum(im) for im in images.astype(np.float64)])
    avg = brute_spectrum(images.astype(np.float64).mean(axis=0))
    out = np.array([(spectra[groups == g].mean(axis=0) - avg) / 2 for g in range(n_groups)])
    return fill_negative(out)


def test_noise_estimate_matches_float64_brute_force_over_batches() -> None:
    rng = np.random.default_rng(0)
    images = (rng.normal(size=(12, 8, 8)) + 0.5 * rng.normal(size=(1, 8, 8))).astype(np.float32)
    groups = np.array([0, 1] * 6)
    sums = NoiseSums.zeros(8, 2)
    for start in (0, 5):  # two uneven batches
        sl = slice(start, start + 5 if start == 0 else 12)
        sums = add_noise_sums(sums, images[sl], groups[sl])
    got = sigma2_noise_from_sums(sums)
    assert got.shape == (2, 5)
    assert got == pytest.approx(brute_sigma2(images, groups, 2), rel=1e-5)


def test_white_noise_gives_s2_over_2n2_per_shell() -> None:
    rng = np.random.default_rng(1)
    s, n = 2.0, 32
    sums = NoiseSums.zeros(n, 1)
    for _ in range(4):
        sums = add_noise_sums(sums, (s * rng.normal(size=(500, n, n))).astype(np.float32), np.zeros(500, int))
    sigma2 = sigma2_noise_from_sums(sums)[0]
    expected = s**2 / (2 * n * n)
    assert sigma2[1:] == pytest.approx(np.full(n // 2, expected), rel=0.08)
    assert sigma2[1:].mean() == pytest.approx(expected, rel=0.01)


def test_zero_mask_lowers_the_noise_estimate() -> None:
    rng = np.random.default_rng(2)
    imgs = rng.normal(size=(200, 32, 32)).astype(np.float32)
    plain = sigma2_noise_from_sums(add_noise_sums(NoiseSums.zeros(32), imgs, np.zeros(200, int)))
    masked = sigma2_noise_from_sums(add_noise_sums(NoiseSums.zeros(32), imgs, np.zeros(200, int), radius_px=8, edge_px=3))
    ratio = masked[0, 2:].mean() / plain[0, 2:].mean()
    # fraction of the box inside a soft disc of radius ~9.5 px: ~0.28
    assert 0.2 < ratio < 0.4


def test_fill_negative_takes_neighbouring_positive_value() -> None:
    got = fill_negative(np.array([[-1.0, 2.0, -3.0, 4.0, 0.0], [1.0, 1.5, 2.0, 2.5, 3.0]]))
    assert got.tolist() == [[2.0, 2.0, 2.0, 4.0, 4.0], [1.0, 1.5, 2.0, 2.5, 3.0]]


def test_no_images_is_an_error() -> None:
    with pytest.raises(ValueError, match="no particle images"):
        sigma2_noise_from_sums(NoiseSums.zeros(8))


def test_default_ini_high_and_first_particles() -> None:
    assert default_ini_high_A(64, 3.0) == pytest.approx(48.0)  # shell round(4.48) = 4
    assert default_ini_high_A(200, 1.0) == pytest.approx(200 / 14)
    g = np.array([0, 1, 0, 0, 1, 2, 0])
    assert first_particles_per_group(g, 2).tolist() == [0, 1, 2, 4, 5]


def stage2_from(images: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sums = ReferenceSums.zeros(images.shape[-1], k)
    sums = add_reference_sums(sums, images, None, np.arange(len(images)) % k, rng.uniform(0, 360, len(images)))
    return stage2_references(sums, 20.0, 2.0)


def _lowpassed_within(img: np.ndarray, r_max: int, ini_high_A: float, px: float) -> np.ndarray:
    """float64 reference: keep |k| <= r_max, raised-cosine low-pass (2 shells wide) at ini_high."""
    n = img.shape[0]
    f = np.fft.fft2(np.fft.ifftshift(img.astype(np.float64)))
    k = np.fft.fftfreq(n) * n
    r = np.hypot(k[None, :], k[:, None])
    cut = n * px / ini_high_A
    w = 0.5 + 0.5 * np.cos(np.pi * np.clip((r - (cut - 1.0)) / 2.0, 0.0, 1.0))
    return np.fft.fftshift(np.fft.ifft2(f * w * (r <= r_max)).real)


def test_stage2_without_ctf_is_the_low_passed_image_within_the_accumulator_radius() -> None:
    n = 32
    c = np.arange(n) - n // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    disc = np.exp(-(x**2 + y**2) / 20.0).astype(np.float32)  # rotation-invariant
    sums = add_reference_sums(ReferenceSums.zeros(n, 1), disc[None], None, np.array([0]), np.array([90.0]))
    got = stage2_references(sums, 10.0, 2.0)[0]
    # RELION's ``MlOptimiser::initialise``: accumulator "box" round(N·px/ini_high) = 6 -> radius 3 shells; no damping (weight 1)
    assert got == pytest.approx(_lowpassed_within(disc, 3, 10.0, 2.0), abs=1e-5)


def test_stage2_is_fully_ctf_corrected_at_low_frequency() -> None:
    # RELION reconstructs data/max(weight, shell mean/1000): a small CTF at low frequency
    # (amplitude contrast) must not damp the stage-2 amplitude (RELION's ``MlOptimiser::maximization``, ``MlOptimiser::initialise``)
    n = 32
    rng = np.random.default_rng(3)
    f = rng.normal(size=(n, n // 2 + 1)) + 1j * rng.normal(size=(n, n // 2 + 1))
    ctf = np.full((n, n // 2 + 1), 0.05)
    ctf[:, 8:] = 1.0  # well-sampled high frequencies raise the global mean weight
    sums = ReferenceSums((ctf * ctf * f)[None] * 7.0, (ctf**2)[None] * 7.0)  # Σ CTF·(CTF·F), Σ CTF²
    got = stage2_references(sums, 8.0, 2.0)[0]
    want = irfft2_centered(f.astype(np.complex128), n)
    want = _lowpassed_within(want, int(round(n * 2.0 / 8.0)) // 2, 8.0, 2.0)
    assert got.std() == pytest.approx(want.std(), rel=1e-4)
    assert got == pytest.approx(want, abs=1e-4 * want.std())


def test_blob_references_reproducible_masked_and_scaled() -> None:
    rng = np.random.default_rng(5)
    n = 32
    c = np.arange(n) - n // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    imgs = (np.exp(-((x - 2) ** 2 + y**2) / 18.0)[None] + 0.3 * rng.normal(size=(40, n, n))).astype(np.float32)
    stage2 = stage2_from(imgs, 3)
    a = blob_references(stage2, diameter_px=20.0, edge_px=3.0, ini_high_A=20.0, pixel_size_A=2.0, seed=11)
    b = blob_references(stage2, diameter_px=20.0, edge_px=3.0, ini_high_A=20.0, pixel_size_A=2.0, seed=11)
    other = blob_references(stage2, diameter_px=20.0, edge_px=3.0, ini_high_A=20.0, pixel_size_A=2.0, seed=12)
    assert a.shape == (3, n, n) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert not np.allclose(a, other)
    assert not np.allclose(a[0], a[1])  # classes differ
    r = np.hypot(x, y)
    outside = a[:, r > 10.0 + 3.0 + 0.5]
    assert np.ptp(outside, axis=1).max() < 1e-6  # a constant (background mean) outside
    assert (a[:, r < 8].std(axis=1) > 0.2 * stage2.std(axis=(1, 2))).all()


def test_tau2_is_fudge_times_half_power_spectrum() -> None:
    rng = np.random.default_rng(6)
    refs = rng.normal(size=(2, 8, 8)).astype(np.float32)
    tau2 = initial_tau2(refs, tau2_fudge=2.0)
    assert tau2 == pytest.approx(np.array([brute_spectrum(r.astype(np.float64)) for r in refs]), rel=1e-5)
    ssnr = initial_ssnr(tau2, np.full((1, 5), 0.5), nr_particles=100, pdf_class=np.array([0.25, 0.75]))
    assert ssnr == pytest.approx(np.array([25, 75])[:, None] * tau2 / 0.5)


def test_background_check_flags_first_bad_image() -> None:
    rng = np.random.default_rng(7)
    imgs = rng.normal(size=(6, 32, 32)).astype(np.float32)
    assert check_background_normalisation(imgs, radius_px=10) is None
    bad = imgs.copy()
    bad[4] += 1.0  # mean/std = 1 > 0.5
    bad[5] *= 3.0
    msg = check_background_normalisation(bad, radius_px=10, first_index=100)
    assert msg is not None and "particle 105 " in msg and "mean" in msg
    small = imgs * 0.3
    assert "particle 1 " in check_background_normalisation(small, radius_px=10)


@pytest.mark.gpu
def test_gpu_matches_cpu() -> None:
    from emclass2d.core.backend import get_xp, to_device, to_host

    cp = get_xp("gpu")
    rng = np.random.default_rng(9)
    imgs = rng.normal(size=(20, 16, 16)).astype(np.float32)
    g = np.arange(20) % 2
    cpu = sigma2_noise_from_sums(add_noise_sums(NoiseSums.zeros(16, 2), imgs, g, radius_px=6, edge_px=2))
    gpu = sigma2_noise_from_sums(add_noise_sums(NoiseSums.zeros(16, 2, xp=cp), to_device(imgs, "gpu"),
                                                to_device(g, "gpu"), radius_px=6, edge_px=2))
    assert to_host(gpu) == pytest.approx(cpu, rel=1e-4)
    stage2 = stage2_from(imgs, 2)
    a = blob_references(stage2, 10.0, 2.0, 20.0, 2.0, seed=1)
    b = blob_references(to_device(stage2, "gpu"), 10.0, 2.0, 20.0, 2.0, seed=1)
    assert to_host(b) == pytest.approx(a, abs=1e-4)
    assert check_background_normalisation(to_device(imgs * 3, "gpu"), 6.0) == check_background_normalisation(imgs * 3, 6.0)
