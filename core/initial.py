"""Start of a reference-free run: initial noise spectra, blob references, tau2 at it000.

Follows RELION's initialisation (``MlOptimiser::initialise``): the first ``nr_parts_sigma2noise`` particles
of each optics group (micrograph-sorted order) give the noise spectrum, sigma2 =
(mean of per-image power spectra - power spectrum of the average image)/2; the same
particles, CTF-weighted and randomly rotated, give a low-passed stage-2 reference per
class whose amplitudes seed random "blob" references (RELION 4+ default); tau2 at it000 is
T·(power spectrum of the reference)/2. Sums are accumulated batch by batch so the caller
streams particles; every function takes its array module from its inputs.

Example::

    noise = NoiseSums.zeros(n=64, n_optics_groups=1)
    refs = ReferenceSums.zeros(n=64, nr_classes=4)
    for batch in batches:                                   # first 1000 per optics group
        noise = add_noise_sums(noise, batch.images, batch.optics_group, radius_px=30, edge_px=5)
        refs = add_reference_sums(refs, batch.images, ctf, class_index, psi_deg)
    sigma2 = sigma2_noise_from_sums(noise)                  # (1, 33)
    stage2 = stage2_references(refs, default_ini_high_A(64, 3.0), 3.0)
    classes = blob_references(stage2, diameter_px=60, edge_px=5, ini_high_A=..., pixel_size_A=3.0, seed=0)
    tau2 = initial_tau2(classes, tau2_fudge=2.0)            # (4, 33)

See also: :mod:`emclass2d.core.mask` (zero-mask), :mod:`emclass2d.core.center`.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from emclass2d.core.backend import array_module, to_host
from emclass2d.core.center import rotate_images
from emclass2d.core.fourier import frequency_indices, irfft2_centered, radial_average, rfft2_centered
from emclass2d.core.mask import mask_particles, radius_map
from emclass2d.core.resolution import default_ini_high_A  # noqa: F401  (part of this module's API)

#: RELION ``--nr_parts_sigma2noise`` default: particles per optics group for the noise.
NR_PARTS_SIGMA2NOISE = 1000

#: Blobs per image in RELION's ``make_blobs_2d``.
NR_BLOBS = 40


# --------------------------------------------------------------------------- noise


@dataclass(frozen=True)
class NoiseSums:
    """Running sums for the initial noise: per optics group and shared average image.

    spectrum_sum: (G, N//2+1) float64, sum of per-image mean |F|² per shell.
    count: (G,) float64, images per optics group. image_sum: (N, N) float64.
    """

    spectrum_sum: Any
    count: Any
    image_sum: Any

    @staticmethod
    def zeros(n: int, n_optics_groups: int = 1, xp: ModuleType = np) -> "NoiseSums":
        return NoiseSums(xp.zeros((n_optics_groups, n // 2 + 1)), xp.zeros(n_optics_groups), xp.zeros((n, n)))


def power_spectrum(images: Any) -> Any:
    """Mean |F|² per integer shell 0…N/2 of real images (..., N, N); RELION FFT scale; float64."""
    n = images.shape[-1]
    f = rfft2_centered(images)
    return radial_average((f.real**2 + f.imag**2), n, n // 2 + 1)


def add_noise_sums(sums: NoiseSums, images: Any, optics_group: Any, radius_px: float | None = None,
                   edge_px: float = 5.0) -> NoiseSums:
    """Add a batch (B, N, N) on the model grid to the noise sums (returns new sums).

    optics_group: (B,) 0-based. With ``radius_px`` the images are first soft-masked with
    the background mean outside (RELION ``--zero_mask``); without, used as they are.
    """
    xp = array_module(images, sums.image_sum)
    imgs = images if radius_px is None else mask_particles(images, radius_px, edge_px)
    spectra = power_spectrum(imgs)
    g = xp.asarray(optics_group, dtype=xp.int64)
    ngroups = sums.count.shape[0]
    spectrum_sum = sums.spectrum_sum.copy()
    count = sums.count.copy()
    for k in range(ngroups):
        sel = g == k
        spectrum_sum[k] += spectra[sel].sum(axis=0)
        count[k] += sel.sum()
    image_sum = sums.image_sum + xp.asarray(imgs, dtype=xp.float64).sum(axis=0)
    return NoiseSums(spectrum_sum, count, image_sum)


def fill_negative(values: Any) -> Any:
    """Replace non-positive entries of each row by the previous positive one.

    A leading run takes the first positive value; an all-non-positive row is unchanged.
    (RELION replaces negative sigma2_noise by its neighbouring value.)
    """
    xp = array_module(values)
    v = np.array(to_host(values), dtype=np.float64)
    for row in v.reshape(-1, v.shape[-1]):
        pos = np.nonzero(row > 0)[0]
        if len(pos) == 0:
            continue
        row[: pos[0]] = row[pos[0]]
        for i in range(pos[0] + 1, len(row)):
            if row[i] <= 0:
                row[i] = row[i - 1]
    return xp.asarray(v)


def sigma2_noise_from_sums(sums: NoiseSums) -> Any:
    """Initial sigma2_noise (G, N//2+1): (mean spectrum − spectrum of average image)/2.

    The average image is over all groups (RELION ``setSigmaNoiseEstimatesAndSetAverageImage``);
    non-positive shells take a neighbouring positive value. Groups without images get 0.
    Raises ValueError when no image was added at all.
    """
    xp = array_module(sums.spectrum_sum)
    total = float(sums.count.sum())
    if total <= 0:
        raise ValueError("initial noise estimate: no particle images were accumulated")
    avg = sums.image_sum / total
    avg_spectrum = power_spectrum(avg[None])[0]
    mean_spectrum = sums.spectrum_sum / xp.maximum(sums.count, 1.0)[:, None]
    sigma2 = (mean_spectrum - avg_spectrum[None]) / 2.0
    sigma2 = fill_negative(sigma2)
    return xp.where((sums.count > 0)[:, None], sigma2, 0.0)


def average_image(sums: NoiseSums) -> Any:
    """Average (N, N) of the accumulated images (RELION writes it as the run's average)."""
    return sums.image_sum / max(float(sums.count.sum()), 1.0)


def check_background_normalisation(images: Any, radius_px: float, first_index: int = 0) -> str | None:
    """Warning text for the first image whose background is not normalised, else None.

    Background = pixels beyond ``radius_px`` (the particle radius) from the centre. An image
    fails when |mean/std| > 0.5 or std is outside [0.5, 2] (RELION warns once, in
    ``calculateSumOfPowerSpectraAndAverageImage``). ``first_index`` numbers the batch's
    first image (0-based) for the message.
    """
    xp = array_module(images)
    n = images.shape[-1]
    bg = radius_map(n, xp) > radius_px
    if not bool(bg.any()):
        return None
    vals = xp.asarray(images, dtype=xp.float64)[:, bg]
    mean = vals.mean(axis=1)
    std = vals.std(axis=1)
    bad = (xp.abs(mean) > 0.5 * std) | (std < 0.5) | (std > 2.0)
    hits = xp.nonzero(bad)[0]
    if len(hits) == 0:
        return None
    i = int(hits[0])
    return (
        f"particle {first_index + i + 1} has a background (outside a radius of {radius_px:.1f} px) "
        f"with mean {float(mean[i]):.3g} and standard deviation {float(std[i]):.3g}; "
        "particles are expected to be normalised to background mean 0 and standard deviation 1 "
        "(as Extract does, with 'Normalize particles?' on). Check the diameter and the "
        "normalisation of the input particles."
    )


# --------------------------------------------------------------------------- references


def lowpass_raised_cosine(images: Any, cutoff_A: float, pixel_size_A: float, width_shells: float = 2.0) -> Any:
    """Low-pass real images (..., N, N) with a raised cosine ``width_shells`` wide centred on the cut-off."""
    xp = array_module(images)
    n = images.shape[-1]
    f = rfft2_centered(images)
    out = irfft2_centered(f * lowpass_weight(n, cutoff_A, pixel_size_A, width_shells, xp), n)
    return out.astype(images.dtype, copy=False)


def lowpass_weight(n: int, cutoff_A: float, pixel_size_A: float, width_shells: float = 2.0, xp: ModuleType = np) -> Any:
    """Half-plane (N, N//2+1) raised-cosine low-pass weights (RELION ``lowPassFilterMap``)."""
    kx, ky = frequency_indices(n, xp)
    r = xp.sqrt(kx * kx + ky * ky)
    cut = n * pixel_size_A / cutoff_A
    lo, hi = cut - width_shells / 2.0, cut + width_shells / 2.0
    t = xp.clip((r - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return 0.5 + 0.5 * xp.cos(np.pi * t)


@dataclass(frozen=True)
class ReferenceSums:
    """CTF-weighted sums of randomly rotated particles per class (stage 1).

    data: (K, N, N//2+1) complex128, sum of CTF·F; weight: (K, N, N//2+1) float64, sum CTF².
    """

    data: Any
    weight: Any

    @staticmethod
    def zeros(n: int, nr_classes: int, xp: ModuleType = np) -> "ReferenceSums":
        return ReferenceSums(xp.zeros((nr_classes, n, n // 2 + 1), dtype=xp.complex128),
                             xp.zeros((nr_classes, n, n // 2 + 1)))


def add_reference_sums(sums: ReferenceSums, images: Any, ctf: Any, class_index: Any, psi_deg: Any) -> ReferenceSums:
    """Insert a batch into the stage-1 sums (returns new sums).

    images: (B, N, N) real; ctf: (B, N, N//2+1) of the *rotated* frame (compute it with
    ``defocus_angle + psi``, see :func:`rotated_defocus_angle`) or None for no CTF;
    class_index: (B,) 0-based (RELION: particle index mod K); psi_deg: (B,) random angles,
    the image is rotated counter-clockwise by psi before insertion.
    """
    xp = array_module(images, sums.weight)
    k = sums.data.shape[0]
    rot = rotate_images(xp.asarray(images, dtype=xp.float32), psi_deg)
    f = rfft2_centered(rot).astype(xp.complex128)
    c = xp.ones(f.shape) if ctf is None else xp.asarray(ctf, dtype=xp.float64)
    cls = xp.asarray(class_index, dtype=xp.int64)
    data = sums.data.copy()
    weight = sums.weight.copy()
    for j in range(k):
        sel = cls == j
        data[j] += (f[sel] * c[sel]).sum(axis=0)
        weight[j] += (c[sel] ** 2).sum(axis=0)
    return ReferenceSums(data, weight)


def rotated_defocus_angle(defocus_angle_deg: Any, psi_deg: Any) -> Any:
    """Astigmatism angle of an image rotated counter-clockwise by psi (for its CTF)."""
    return defocus_angle_deg + psi_deg


def stage2_references(sums: ReferenceSums, ini_high_A: float, pixel_size_A: float) -> Any:
    """Stage-1 reconstruction sum/weight, low-passed at ini_high (stage 2); (K, N, N) float32.

    As RELION's unregularised reconstruction (``MlOptimiser::maximization``, ``MlOptimiser::initialise``): data / max(weight,
    shell-mean weight/1000), so the low frequencies keep the full CTF-corrected amplitude
    (the stage-2 standard deviation sets the scale of the blob references). Only shells
    within radius round(N·px/ini_high)//2 are kept: RELION sizes this accumulator with
    the ini_high shell as if it were a box size.
    """
    xp = array_module(sums.weight)
    n = sums.weight.shape[-2]
    kx, ky = frequency_indices(n, xp)
    r2 = kx * kx + ky * ky
    shell = xp.minimum(xp.rint(xp.sqrt(r2.astype(xp.float64))).astype(xp.int64), n // 2)
    mean_w = radial_average(sums.weight, n, n // 2 + 1)  # (K, N//2+1)
    denom = xp.maximum(sums.weight, mean_w[:, shell] / 1000.0)
    f = xp.where(denom > 0, sums.data / xp.where(denom > 0, denom, 1.0), 0.0)
    r_max = int(round(n * pixel_size_A / ini_high_A)) // 2
    f = xp.where(r2 <= r_max * r_max, f, 0.0)
    f = f * lowpass_weight(n, ini_high_A, pixel_size_A, 2.0, xp)
    return irfft2_centered(f.astype(xp.complex64), n)


def make_blobs(amplitude_image: Any, diameter_px: float, rng: np.random.Generator) -> Any:
    """One blob image (N, N) float64: 40 Gaussian blobs around the centre (``make_blobs_2d``).

    Centres ~ normal(sd = diameter/7) about the box centre; amplitude = |amplitude_image|
    at the (rounded, clipped) centre pixel; blob = a·exp(-d²·(10/diameter)²).
    """
    xp = array_module(amplitude_image)
    n = amplitude_image.shape[-1]
    centres = rng.normal(0.0, diameter_px / 7.0, size=(NR_BLOBS, 2))
    ij = np.clip(np.rint(centres).astype(int) + n // 2, 0, n - 1)
    amp = xp.abs(xp.asarray(amplitude_image, dtype=xp.float64)[xp.asarray(ij[:, 1]), xp.asarray(ij[:, 0])])
    c = xp.arange(n, dtype=xp.float64) - n // 2
    y, x = xp.meshgrid(c, c, indexing="ij")
    out = xp.zeros((n, n))
    k2 = (10.0 / diameter_px) ** 2
    for b in range(NR_BLOBS):
        out += amp[b] * xp.exp(-((x - centres[b, 0]) ** 2 + (y - centres[b, 1]) ** 2) * k2)
    return out


def blob_references(stage2: Any, diameter_px: float, edge_px: float, ini_high_A: float, pixel_size_A: float,
                    seed: int) -> Any:
    """Initial class references (K, N, N) float32 from stage-2 references (RELION 4+ blobs).

    Per class: blob images A and B (:func:`make_blobs`), reference = A − B/2 rescaled to the
    stage-2 standard deviation, low-passed at ini_high, soft-masked at diameter/2 with
    ``edge_px`` (outside = background mean). Reproducible from ``seed`` (numpy Generator).
    """
    xp = array_module(stage2)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 271828]))
    refs = []
    for ref in stage2:
        a = make_blobs(ref, diameter_px, rng)
        b = make_blobs(ref, diameter_px, rng)
        blob = a - b / 2.0
        sd, sd_blob = float(ref.std()), float(blob.std())
        refs.append(blob * (sd / sd_blob) if sd_blob > 0 else blob)
    out = xp.stack(refs).astype(xp.float32)
    out = lowpass_raised_cosine(out, ini_high_A, pixel_size_A)
    return mask_particles(out, diameter_px / 2.0, edge_px)


def initial_tau2(references: Any, tau2_fudge: float) -> Any:
    """tau2 at it000 (K, N//2+1): T·(power spectrum of each reference)/2 (``initialiseDataVersusPrior``)."""
    return tau2_fudge * power_spectrum(references) / 2.0


def initial_ssnr(tau2: Any, sigma2_noise: Any, nr_particles: int, pdf_class: Any,
                 group_counts: Any | None = None) -> Any:
    """SSNR at it000 (K, N//2+1) = nr_particles·pdf_class·tau2 / mean sigma2_noise.

    sigma2_noise (G, N//2+1) is averaged over optics groups, weighted by ``group_counts``
    (particles per group) when given. Shells with zero noise get 0.
    """
    xp = array_module(tau2, sigma2_noise)
    s2 = xp.asarray(sigma2_noise, dtype=xp.float64)
    if s2.ndim == 2:
        w = xp.ones(s2.shape[0]) if group_counts is None else xp.asarray(group_counts, dtype=xp.float64)
        s2 = (s2 * w[:, None]).sum(axis=0) / xp.maximum(w.sum(), 1e-30)
    pdf = xp.asarray(pdf_class, dtype=xp.float64).reshape(-1, 1)
    safe = xp.where(s2 > 0, s2, 1.0)
    return xp.where(s2 > 0, nr_particles * pdf * tau2 / safe, 0.0)


def first_particles_per_group(optics_group: Any, nr_parts: int = NR_PARTS_SIGMA2NOISE) -> np.ndarray:
    """Indices (sorted) of the first ``nr_parts`` particles of each optics group, in table order."""
    g = np.asarray(to_host(optics_group))
    keep = np.zeros(len(g), dtype=bool)
    for k in np.unique(g):
        keep[np.nonzero(g == k)[0][:nr_parts]] = True
    return np.nonzero(keep)[0]
