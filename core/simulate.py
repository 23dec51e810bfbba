"""Simulated particle images with known truth, for tests, benchmarks and the demo.

A procedural pseudo-atomic molecule (a few thousand Gaussian "atoms" in asymmetric domains
and an arm; on request a ring of Cn-symmetric subunits or a featureless ellipsoid) is
projected along ``n_views`` well-separated directions, each view drawn with its own
frequency. Every particle is that projection rotated and shifted with RELION's
conventions (RELION's ``Euler_angles2matrix``, ``Projector::rotate2D``, ``shiftImageInFourierTransform``)::

    image(u) = projection_view(R(psi)·(u + o)),  R(psi) = [[cos, -sin], [sin, cos]],

``u = (x, y)`` logical pixel coordinates (x = column, y = row, origin at ``N//2``) and
``o`` the origin in pixels (rlnOriginX/YAngst / pixel size), so writing ``psi`` as
rlnAnglePsi and ``o·px`` as rlnOriginX/YAngst aligns the particle onto its view. Then the
CTF (RELION convention, per-micrograph defocus and astigmatism, small per-particle spread,
an unrecorded B-factor envelope), coloured noise at a chosen SNR, per-micrograph intensity
scale and noise level, and junk: ``empty`` (noise only), ``ice`` (balls and rings),
``carbon`` (a step edge), ``aggregate`` (2-4 overlapping molecules), ``broken`` (a
fragment). Images are normalised as RELION's Extract does: white particles, background
(outside 0.75 of the box diameter) mean 0 and standard deviation 1 per image.

SNR is the variance of the CTF-modulated noise-free signal of a good particle over the
box divided by the noise variance (micrograph-average).

Example::

    sim = simulate_particles(n=2000, box=64, pixel_size_A=3.0, n_views=6, snr=0.05, seed=1)
    sim.images.shape                      # (2000, 64, 64) float32
    sim.truth[["kind", "view", "psi_deg", "origin_x_px"]].head()
    sim.view_projections                  # (6, 64, 64) noise-free, centred, unrotated

Longer than most modules because a simulated data set is one piece of truth (molecules,
views, junk types, CTFs, offsets, noise); kept in one module so the conventions it must
share with the E-step are stated once.

See also: :mod:`emclass2d.core.ctf`, :mod:`emclass2d.core.metrics`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from emclass2d.core.center import logical_grid
from emclass2d.core.ctf import compute_ctf
from emclass2d.core.fourier import frequency_grid, irfft2_centered, rfft2_centered
from emclass2d.core.mask import radius_map

#: Junk categories, in the order used for ``junk_mix``.
JUNK_TYPES: tuple[str, ...] = ("empty", "ice", "carbon", "aggregate", "broken")

#: Default mix of junk categories (equal shares).
DEFAULT_JUNK_MIX: dict[str, float] = {name: 1.0 for name in JUNK_TYPES}

#: Side of a simulated micrograph in pixels (for rlnCoordinateX/Y).
MICROGRAPH_SIZE_PX = 4096

#: Particles generated per chunk; chunk i draws from its own child generator.
CHUNK = 512


@dataclass(frozen=True)
class Molecule:
    """Gaussian pseudo-atoms: coords_A (A, 3) centred, weights (A,), domain (A,) int."""

    coords_A: np.ndarray
    weights: np.ndarray
    domain: np.ndarray
    diameter_A: float


@dataclass(frozen=True)
class Simulation:
    """Simulated stack and its truth.

    images: (P, N, N) float32, normalised. truth: one row per particle (micrograph-sorted)
    with ``kind`` ("particle" or a junk type), ``view`` (-1 for junk), ``psi_deg``,
    ``origin_x_px``/``origin_y_px``, ``defocus_u_A``/``defocus_v_A``/``defocus_angle_deg``,
    ``micrograph`` (0-based), ``coordinate_x_px``/``coordinate_y_px``, ``scale``,
    ``noise_sd``, ``is_junk``. view_projections: (V, N, N) noise-free, CTF-free projections
    at psi = 0, o = 0 (what perfect class averages look like). view_euler_deg: (V, 2)
    (rot, tilt) of each view. optics: voltage_kV, cs_mm, amplitude_contrast, pixel_size_A.
    """

    images: np.ndarray
    truth: pd.DataFrame
    view_projections: np.ndarray
    view_euler_deg: np.ndarray
    molecule: Molecule
    optics: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- molecule


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
    ])


def _points_in_ellipsoid(rng: np.random.Generator, n: int, axes: np.ndarray) -> np.ndarray:
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    r = rng.random(n) ** (1.0 / 3.0)
    return d * r[:, None] * axes


def make_molecule(diameter_A: float, n_atoms: int = 3000, seed: int = 0) -> Molecule:
    """Procedural asymmetric protein-like body of ``n_atoms`` atoms, extent ``diameter_A``.

    A large core, two lobes, a knob and a bent arm, each randomly oriented (seeded), so
    that projections along different directions differ clearly. Atoms fill each domain
    uniformly (density like a protein), weights 1 ± 20 %.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7919]))
    # (centre, semi-axes) in units of the final radius, before jitter.
    domains = [
        ((0.00, 0.00, 0.00), (0.55, 0.30, 0.24)),
        ((0.40, 0.28, 0.06), (0.26, 0.22, 0.20)),
        ((-0.30, 0.26, -0.16), (0.22, 0.28, 0.18)),
        ((0.06, -0.36, 0.24), (0.17, 0.17, 0.22)),
    ]
    volumes = np.array([np.prod(a) for _, a in domains])
    arm_share = 0.08
    counts = np.floor((1 - arm_share) * n_atoms * volumes / volumes.sum()).astype(int)
    coords, dom = [], []
    for i, ((c, a), k) in enumerate(zip(domains, counts)):
        centre = np.asarray(c) + rng.normal(scale=0.03, size=3)
        pts = _points_in_ellipsoid(rng, int(k), np.asarray(a)) @ _random_rotation(rng).T
        coords.append(pts + centre)
        dom.append(np.full(int(k), i))
    # Bent arm: a tube along a quadratic curve leaving the core.
    k = n_atoms - int(counts.sum())
    t = rng.random(k)
    start, bend, end = np.array([-0.45, -0.1, 0.0]), np.array([-0.7, -0.3, 0.1]), np.array([-0.7, -0.55, 0.3])
    curve = ((1 - t) ** 2)[:, None] * start + (2 * t * (1 - t))[:, None] * bend + (t**2)[:, None] * end
    coords.append(curve + _points_in_ellipsoid(rng, k, np.array([0.09, 0.09, 0.09])))
    dom.append(np.full(k, len(domains)))
    xyz = np.concatenate(coords)
    weights = 1.0 + 0.2 * rng.uniform(-1, 1, size=len(xyz))
    xyz -= np.average(xyz, axis=0, weights=weights)
    xyz *= (0.5 * diameter_A) / np.max(np.linalg.norm(xyz, axis=1))
    return Molecule(coords_A=xyz, weights=weights, domain=np.concatenate(dom), diameter_A=float(diameter_A))


def make_symmetric_molecule(diameter_A: float, order: int, n_atoms: int = 3000, seed: int = 0) -> Molecule:
    """Ring of ``order`` identical subunits around the z axis (Cn symmetry), extent ``diameter_A``.

    Each subunit is two fused ellipsoids (randomly shaped and tilted, seeded) repeated by
    rotations of 360°/order about z, so the projection along z (tilt 0, a "top view") has
    ``order``-fold in-plane symmetry: its psi is only defined modulo 360°/order, and for
    large orders hardly at all. Domain = subunit index (fragments are 1-2 subunits).
    """
    if order < 2:
        raise ValueError(f"make_symmetric_molecule: order must be >= 2 (got {order})")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(order), 6007]))
    per = max(n_atoms // order, 2)
    radius = rng.uniform(0.35, 0.6)
    # Subunits sized to touch their neighbours (half the chord between adjacent centres).
    size = float(np.clip(radius * np.sin(np.pi / order), 0.1, 0.35))
    parts = []
    body_axes = size * rng.uniform(0.9, 1.3, 3)
    knob = (radius * rng.uniform(0.5, 1.1), rng.uniform(-0.15, 0.15), rng.uniform(-0.3, 0.3))
    for share, centre, axes in ((0.65, (radius, 0.0, 0.0), body_axes), (0.35, knob, size * rng.uniform(0.6, 0.9, 3))):
        pts = _points_in_ellipsoid(rng, max(int(share * per), 1), axes) @ _random_rotation(rng).T
        parts.append(pts + np.asarray(centre))
    unit = np.concatenate(parts)
    unit_w = 1.0 + 0.2 * rng.uniform(-1, 1, size=len(unit))
    coords, weights, dom = [], [], []
    for k in range(order):
        a = 2 * np.pi * k / order
        rz = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
        coords.append(unit @ rz.T)
        weights.append(unit_w)
        dom.append(np.full(len(unit), k))
    xyz = np.concatenate(coords)
    xyz[:, 2] -= xyz[:, 2].mean()  # centred on the axis by construction; centre along z too
    xyz *= (0.5 * diameter_A) / np.max(np.linalg.norm(xyz, axis=1))
    return Molecule(coords_A=xyz, weights=np.concatenate(weights), domain=np.concatenate(dom),
                    diameter_A=float(diameter_A))


def make_round_molecule(diameter_A: float, axes_ratio: tuple[float, float] = (1.0, 1.0), n_atoms: int = 3000,
                        seed: int = 0) -> Molecule:
    """Featureless uniform ellipsoid (a round or elongated particle with no internal detail).

    Semi-axes ``(1, axes_ratio[0], axes_ratio[1])`` × ``diameter_A/2`` along x, y, z: (1, 1)
    gives a ball (every view a disc, psi undefined), others ellipses. Domain = octant, so
    fragments are pieces of the body.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 15485863]))
    axes = 0.5 * float(diameter_A) * np.array([1.0, float(axes_ratio[0]), float(axes_ratio[1])])
    xyz = _points_in_ellipsoid(rng, int(n_atoms), axes)
    domain = ((xyz[:, 0] > 0).astype(int) + 2 * (xyz[:, 1] > 0) + 4 * (xyz[:, 2] > 0)).astype(int)
    weights = 1.0 + 0.2 * rng.uniform(-1, 1, size=len(xyz))
    return Molecule(coords_A=xyz, weights=weights, domain=domain, diameter_A=float(diameter_A))


def euler_matrix(rot_deg: float, tilt_deg: float, psi_deg: float = 0.0) -> np.ndarray:
    """RELION's ZYZ rotation matrix A(rot, tilt, psi); a projection keeps rows 0, 1 of A·r."""
    a, b, g = np.deg2rad([rot_deg, tilt_deg, psi_deg])
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.array([
        [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
        [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
        [sc, ss, cb],
    ])


def choose_views(n_views: int, seed: int) -> np.ndarray:
    """``(n_views, 2)`` (rot, tilt) in degrees of well-separated projection directions.

    Farthest-point selection on random directions, measuring the angle between axes (a
    direction and its opposite give mirror images, which would look alike).
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 104729]))
    cand = rng.normal(size=(4000, 3))
    cand /= np.linalg.norm(cand, axis=1, keepdims=True)
    chosen = [0]
    dist = np.arccos(np.clip(np.abs(cand @ cand[0]), 0, 1))
    for _ in range(1, n_views):
        j = int(np.argmax(dist))
        chosen.append(j)
        dist = np.minimum(dist, np.arccos(np.clip(np.abs(cand @ cand[j]), 0, 1)))
    d = cand[chosen]
    tilt = np.rad2deg(np.arccos(np.clip(d[:, 2], -1, 1)))
    rot = np.rad2deg(np.arctan2(d[:, 1], d[:, 0]))
    return np.stack([rot, tilt], axis=1)


def atom_sigma_px(pixel_size_A: float) -> float:
    """Gaussian width of an atom in pixels: 2 Å, at least one pixel (no aliasing)."""
    return max(1.0, 2.0 / pixel_size_A)


def project_atoms(coords_A: np.ndarray, rotation: np.ndarray, pixel_size_A: float) -> np.ndarray:
    """Projected (x, y) atom positions in pixels, ``(A·r)[:2] / px``; shape (A, 2)."""
    return (coords_A @ rotation.T)[:, :2] / pixel_size_A


def evaluate_projection(xy_px: np.ndarray, weights: np.ndarray, sigma_px: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sum of 2-D Gaussians ``w·exp(-|p - a|²/(2σ²))`` at points (x, y) (any shape), float64."""
    out = np.zeros(np.broadcast(x, y).shape)
    for (ax, ay), w in zip(xy_px, weights):
        out += w * np.exp(-((x - ax) ** 2 + (y - ay) ** 2) / (2 * sigma_px**2))
    return out


def render_fine(xy_px: np.ndarray, weights: np.ndarray, sigma_px: float, half_extent_px: int, oversample: int) -> np.ndarray:
    """Projection on a grid ``oversample`` times finer than the pixels, (M, M) float32.

    Fine element ``j`` sits at logical ``(j - M//2)/oversample`` pixels, ``M = 2·half·os``.
    Atoms are spread bilinearly onto the fine grid, then convolved with the Gaussian in
    Fourier space (the grid's margin keeps wrap-around negligible); the spreading widens
    each atom by a variance of 1/(6·os²) px², well below a percent.
    """
    m = 2 * half_extent_px * oversample
    fx = xy_px[:, 0] * oversample + m // 2
    fy = xy_px[:, 1] * oversample + m // 2
    x0, y0 = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
    wx, wy = fx - x0, fy - y0
    grid = np.zeros(m * m)
    for dy, wyy in ((0, 1 - wy), (1, wy)):
        for dx, wxx in ((0, 1 - wx), (1, wx)):
            iy, ix = y0 + dy, x0 + dx
            ok = (iy >= 0) & (iy < m) & (ix >= 0) & (ix < m)
            grid += np.bincount((iy * m + ix)[ok], weights=(weights * wyy * wxx)[ok], minlength=m * m)
    f = np.fft.rfft2(grid.reshape(m, m))
    ky = np.fft.fftfreq(m)[:, None]
    kx = np.fft.rfftfreq(m)[None, :]
    s_fine = sigma_px * oversample
    # Gaussian of unit peak: its transform is 2π·s²·exp(-2π²s²|k|²) on a unit grid.
    f *= 2 * np.pi * s_fine**2 * np.exp(-2 * np.pi**2 * s_fine**2 * (kx**2 + ky**2))
    return np.fft.irfft2(f, s=(m, m)).astype(np.float32)


def sample_sources(sources: np.ndarray, oversample: int, source_index: np.ndarray, x_px: np.ndarray, y_px: np.ndarray) -> np.ndarray:
    """Bilinear samples of fine renders ``sources`` (S, M, M) at logical pixel positions.

    source_index (B,) picks each particle's render; x_px, y_px (B, N, N). Zero outside.
    """
    s, m = sources.shape[0], sources.shape[-1]
    fx = np.clip(x_px * oversample + m // 2, -1.0, m)
    fy = np.clip(y_px * oversample + m // 2, -1.0, m)
    x0 = np.floor(fx)
    y0 = np.floor(fy)
    wx = (fx - x0).astype(np.float32)
    wy = (fy - y0).astype(np.float32)
    # Pad by one zero pixel on each side: indices -1 and m read zeros.
    padded = np.zeros((s, m + 2, m + 2), dtype=np.float32)
    padded[:, 1:-1, 1:-1] = sources
    flat = padded.ravel()
    w = m + 2
    base = (source_index.astype(np.int64) * w * w)[:, None, None]
    ix0 = x0.astype(np.int64) + 1
    iy0 = y0.astype(np.int64) + 1
    ix1 = np.minimum(ix0 + 1, m + 1)
    iy1 = np.minimum(iy0 + 1, m + 1)
    f00 = flat[base + iy0 * w + ix0]
    f01 = flat[base + iy0 * w + ix1]
    f10 = flat[base + iy1 * w + ix0]
    f11 = flat[base + iy1 * w + ix1]
    return (f00 + (f01 - f00) * wx) * (1 - wy) + (f10 + (f11 - f10) * wx) * wy


def particle_positions(n: int, psi_deg: np.ndarray, origin_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``R(psi)·(u + o)`` (x, y), each (B, n, n), where particle images sample."""
    gx, gy = logical_grid(n)
    a = np.deg2rad(np.asarray(psi_deg, dtype=np.float64))[:, None, None]
    c, s = np.cos(a).astype(np.float32), np.sin(a).astype(np.float32)
    ux = gx[None] + np.asarray(origin_px[:, 0], dtype=np.float32)[:, None, None]
    uy = gy[None] + np.asarray(origin_px[:, 1], dtype=np.float32)[:, None, None]
    return c * ux - s * uy, s * ux + c * uy


def noise_power_shape(n: int) -> np.ndarray:
    """Relative noise power per half-plane element (N, N//2+1), mean 1 over the full plane.

    A low-frequency rise and a gentle fall-off towards Nyquist, like a detector with
    beam-induced motion blur; the shape is what matters, not the exact law.
    """
    def law(s: np.ndarray) -> np.ndarray:
        return (1.0 + 1.5 * np.exp(-((s / 0.05) ** 2))) * (1.0 - 0.45 * np.minimum(s / 0.5, 1.0) ** 2)

    fy = np.fft.fftfreq(n)[:, None]
    full = law(np.sqrt(fy**2 + np.fft.fftfreq(n)[None, :] ** 2))
    half = law(np.sqrt(fy**2 + np.fft.rfftfreq(n)[None, :] ** 2))
    return half / full.mean()


def _exact_counts(total: int, weights: Sequence[float]) -> np.ndarray:
    """Split ``total`` into integer counts proportional to ``weights`` (largest remainder)."""
    w = np.asarray(weights, dtype=np.float64)
    raw = total * w / w.sum()
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def normalise_background(images: np.ndarray, bg_radius_px: float) -> np.ndarray:
    """RELION Extract normalisation: background (r > bg_radius_px) to mean 0, sd 1."""
    n = images.shape[-1]
    bg = radius_map(n) > bg_radius_px
    vals = images[:, bg]
    mean = vals.mean(axis=1)
    sd = vals.std(axis=1)
    sd = np.where(sd > 0, sd, 1.0)
    return ((images - mean[:, None, None]) / sd[:, None, None]).astype(np.float32)


# --------------------------------------------------------------------------- driver


def simulate_particles(
    n: int = 5000,
    box: int = 64,
    pixel_size_A: float = 3.0,
    n_views: int = 8,
    view_weights: Sequence[float] | None = None,
    snr: float | None = 0.05,
    junk_fraction: float = 0.15,
    junk_mix: Mapping[str, float] | None = None,
    n_micrographs: int = 50,
    seed: int = 0,
    *,
    particle_diameter_A: float | None = None,
    n_atoms: int = 3000,
    molecule_seed: int = 0,
    molecule: Molecule | None = None,
    view_euler_deg: np.ndarray | None = None,
    shift_sd_px: float = 1.5,
    defocus_range_A: tuple[float, float] = (10000.0, 25000.0),
    max_astigmatism_A: float = 1000.0,
    defocus_spread_A: float = 100.0,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    envelope_bfactor_A2: float = 60.0,
    apply_ctf: bool = True,
    normalise: bool = True,
) -> Simulation:
    """Simulate ``n`` particle images of a ``box``-pixel box with known truth.

    view_weights: relative frequency of each view (default spans 10x, geometric).
    snr: signal variance / noise variance (see module docstring); None adds no noise.
    junk_fraction: share of junk; junk_mix: relative shares per :data:`JUNK_TYPES` name
    (exact counts, largest remainder). particle_diameter_A: molecule extent (default
    0.6 of the box). Micrograph-sorted order; reproducible from ``seed``. Without noise
    pass ``normalise=False`` (the background would have zero variance).
    molecule: project this body instead of the default asymmetric one (e.g. from
    :func:`make_symmetric_molecule` or :func:`make_round_molecule`; its diameter is the
    particle's). view_euler_deg: ``(n_views, 2)`` (rot, tilt) of the views instead of
    :func:`choose_views` (e.g. tilt 0 for the top view of a symmetric molecule).
    Raises ValueError for bad arguments (names the argument).
    """
    if n < 1 or box < 16 or box % 2:
        raise ValueError(f"simulate: need n >= 1 and an even box >= 16 (got n={n}, box={box})")
    if not 0.0 <= junk_fraction <= 1.0:
        raise ValueError(f"simulate: junk_fraction must be in [0, 1] (got {junk_fraction})")
    if snr is not None and snr <= 0:
        raise ValueError(f"simulate: snr must be > 0 or None (got {snr})")
    mix = dict(DEFAULT_JUNK_MIX if junk_mix is None else junk_mix)
    unknown = set(mix) - set(JUNK_TYPES)
    if unknown:
        raise ValueError(f"simulate: unknown junk types {sorted(unknown)}; expected some of {JUNK_TYPES}")
    if view_weights is None:
        view_weights = np.geomspace(1.0, 0.1, n_views) if n_views > 1 else [1.0]
    if len(view_weights) != n_views:
        raise ValueError(f"simulate: view_weights has {len(view_weights)} entries for n_views={n_views}")
    px = float(pixel_size_A)
    if view_euler_deg is not None and np.shape(view_euler_deg) != (n_views, 2):
        raise ValueError(f"simulate: view_euler_deg must have shape ({n_views}, 2) (got {np.shape(view_euler_deg)})")
    diameter_A = particle_diameter_A if particle_diameter_A is not None else 0.6 * box * px
    if molecule is not None:
        diameter_A = molecule.diameter_A
    root = np.random.SeedSequence([int(seed), 31337])
    seq_setup, seq_chunks = root.spawn(2)
    rng = np.random.default_rng(seq_setup)

    # ---- sources: view projections, aggregate members, fragments (fine renders)
    mol = molecule if molecule is not None else make_molecule(diameter_A, n_atoms=n_atoms, seed=molecule_seed)
    sigma_px = atom_sigma_px(px)
    oversample = int(np.clip(512 // box, 2, 4))
    half = int(np.ceil(0.5 * diameter_A / px + 4 * sigma_px + 2))
    euler = choose_views(n_views, seed) if view_euler_deg is None else np.asarray(view_euler_deg, dtype=np.float64)
    n_agg_src, n_frag_src = 12, 8
    rotations = [euler_matrix(r, t) for r, t in euler]
    rotations += [_random_rotation(rng) for _ in range(n_agg_src)]
    sources = [render_fine(project_atoms(mol.coords_A, r, px), mol.weights, sigma_px, half, oversample) for r in rotations]
    n_dom = int(mol.domain.max()) + 1
    for _ in range(n_frag_src):
        keep = np.isin(mol.domain, rng.choice(n_dom, size=int(rng.integers(1, 3)), replace=False))
        xy = project_atoms(mol.coords_A[keep], _random_rotation(rng), px)
        xy -= np.average(xy, axis=0, weights=mol.weights[keep])  # fragments come centred
        sources.append(render_fine(xy, mol.weights[keep], sigma_px, half, oversample))
    sources_arr = np.stack(sources)
    peak = float(np.mean([s.max() for s in sources_arr[:n_views]]))
    sources_arr /= peak  # a good particle's projection peaks at about 1
    agg_base, frag_base = n_views, n_views + n_agg_src

    # ---- who is what, where, with which CTF (micrograph-sorted order)
    n_junk = int(round(n * junk_fraction))
    junk_counts = _exact_counts(n_junk, [mix.get(k, 0.0) for k in JUNK_TYPES]) if n_junk else np.zeros(len(JUNK_TYPES), int)
    view_counts = _exact_counts(n - n_junk, view_weights)
    kind = np.array(["particle"] * (n - n_junk) + sum(([k] * int(c) for k, c in zip(JUNK_TYPES, junk_counts)), []), dtype=object)
    view = np.concatenate([np.repeat(np.arange(n_views), view_counts), np.full(n_junk, -1)])
    perm = rng.permutation(n)
    kind, view = kind[perm], view[perm]
    per_mic = rng.multinomial(n, np.full(n_micrographs, 1.0 / n_micrographs))
    mic = np.repeat(np.arange(n_micrographs), per_mic)
    mic_du = rng.uniform(*defocus_range_A, size=n_micrographs)
    mic_dv = mic_du - rng.uniform(0, max_astigmatism_A, size=n_micrographs)
    mic_ang = rng.uniform(0, 180, size=n_micrographs)
    mic_scale = rng.lognormal(0.0, 0.2, size=n_micrographs)
    mic_noise = rng.lognormal(0.0, 0.15, size=n_micrographs)
    dz = rng.normal(0.0, defocus_spread_A, size=n)
    psi = rng.uniform(-180.0, 180.0, size=n)
    origin = np.clip(rng.normal(0.0, shift_sd_px, size=(n, 2)), -2.5 * shift_sd_px, 2.5 * shift_sd_px)
    coords = rng.uniform(box / 2, MICROGRAPH_SIZE_PX - box / 2, size=(n, 2))
    truth = pd.DataFrame({
        "kind": kind.astype(str),
        "view": view.astype(np.int64),
        "is_junk": kind != "particle",
        "psi_deg": psi,
        "origin_x_px": origin[:, 0],
        "origin_y_px": origin[:, 1],
        "defocus_u_A": mic_du[mic] + dz,
        "defocus_v_A": mic_dv[mic] + dz,
        "defocus_angle_deg": mic_ang[mic],
        "micrograph": mic.astype(np.int64),
        "coordinate_x_px": coords[:, 0],
        "coordinate_y_px": coords[:, 1],
        "scale": mic_scale[mic],
    })

    # ---- per-particle junk/aggregate parameters (drawn up front: chunking-independent)
    agg_members = rng.integers(2, 5, size=n)
    agg_src = rng.integers(0, n_agg_src, size=(n, 4)) + agg_base
    agg_psi = rng.uniform(-180, 180, size=(n, 4))
    agg_dir = rng.uniform(0, 2 * np.pi, size=(n, 4))
    agg_len = rng.uniform(0.3, 0.55, size=(n, 4)) * diameter_A / px
    agg_len[:, 0] = 0.0
    frag_src = rng.integers(0, n_frag_src, size=n) + frag_base
    junk_par = rng.random(size=(n, 6))

    # ---- signal and noise scale
    fx, fy = frequency_grid(box, px)
    gx, gy = logical_grid(box)
    ctf_mid = compute_ctf(fx, fy, np.mean(defocus_range_A), np.mean(defocus_range_A), 0.0,
                          voltage_kV, cs_mm, amplitude_contrast, bfactor_A2=envelope_bfactor_A2)
    views_clean = sample_sources(sources_arr, oversample, np.arange(n_views), np.broadcast_to(gx, (n_views, box, box)), np.broadcast_to(gy, (n_views, box, box)))
    modulated = irfft2_centered(rfft2_centered(views_clean) * (ctf_mid if apply_ctf else 1.0), box)
    signal_var = float(np.mean(modulated.var(axis=(-2, -1))))
    noise_sd = 0.0 if snr is None else np.sqrt(signal_var / snr)
    truth["noise_sd"] = noise_sd * mic_noise[mic]
    colour = np.sqrt(noise_power_shape(box)).astype(np.float32)

    par = {"kind": kind, "view": view, "psi": psi, "origin": origin, "frag_src": frag_src,
           "agg_members": agg_members, "agg_src": agg_src, "agg_psi": agg_psi, "agg_dir": agg_dir,
           "agg_len": agg_len, "junk_par": junk_par, "scale": truth["scale"].to_numpy(),
           "du": truth["defocus_u_A"].to_numpy(), "dv": truth["defocus_v_A"].to_numpy(),
           "ang": truth["defocus_angle_deg"].to_numpy(), "noise_sd": truth["noise_sd"].to_numpy()}
    # Signal reaching the box edge gets its CTF on a 2x box, so no wrap-around fringes.
    wide_all = np.isin(kind, ("ice", "carbon", "aggregate"))
    images = np.empty((n, box, box), dtype=np.float32)
    chunk_seqs = seq_chunks.spawn((n + CHUNK - 1) // CHUNK)
    for c, start in enumerate(range(0, n, CHUNK)):
        rows = np.arange(start, min(n, start + CHUNK))
        out = np.empty((len(rows), box, box), dtype=np.float32)
        for local in (np.nonzero(~wide_all[rows])[0], np.nonzero(wide_all[rows])[0]):
            if len(local) == 0:
                continue
            idx = rows[local]
            size = 2 * box if wide_all[idx[0]] else box
            signal = _render_chunk({k: v[idx] for k, v in par.items()}, sources_arr, oversample, box, size)
            signal *= par["scale"][idx, None, None].astype(np.float32)
            if apply_ctf:
                sfx, sfy = frequency_grid(size, px)
                ctf = compute_ctf(sfx, sfy, par["du"][idx], par["dv"][idx], par["ang"][idx], voltage_kV, cs_mm,
                                  amplitude_contrast, bfactor_A2=envelope_bfactor_A2)
                signal = irfft2_centered(rfft2_centered(signal) * ctf, size)
            lo = size // 2 - box // 2
            out[local] = signal[:, lo:lo + box, lo:lo + box]
        if snr is not None:
            white = np.random.default_rng(chunk_seqs[c]).standard_normal(size=out.shape, dtype=np.float32)
            white *= par["noise_sd"][rows, None, None].astype(np.float32)
            out += irfft2_centered(rfft2_centered(white) * colour, box)
        images[rows] = normalise_background(out, 0.375 * box) if normalise else out
    optics = {"voltage_kV": voltage_kV, "cs_mm": cs_mm, "amplitude_contrast": amplitude_contrast, "pixel_size_A": px}
    return Simulation(images=images, truth=truth, view_projections=views_clean.astype(np.float32),
                      view_euler_deg=euler, molecule=mol, optics=optics)


def _render_chunk(par: dict[str, np.ndarray], sources: np.ndarray, oversample: int, box: int, size: int) -> np.ndarray:
    """Noise-free, CTF-free signal (B, size, size) float32 of particles described by ``par``.

    Geometry is relative to a ``box``-pixel box; ``size >= box`` is the grid drawn (same
    centre), larger when the CTF must be applied without wrap-around.
    """
    kind, origin = par["kind"], par["origin"]
    out = np.zeros((len(kind), size, size), dtype=np.float32)
    placed = (kind == "particle") | (kind == "broken")
    if placed.any():
        idx = np.nonzero(placed)[0]
        src = np.where(kind[idx] == "particle", par["view"][idx], par["frag_src"][idx])
        x, y = particle_positions(size, par["psi"][idx], origin[idx])
        out[idx] = sample_sources(sources, oversample, src, x, y)
    agg = np.nonzero(kind == "aggregate")[0]
    for m in range(4):
        sel = agg[par["agg_members"][agg] > m]
        if len(sel) == 0:
            continue
        direction = np.stack([np.cos(par["agg_dir"][sel, m]), np.sin(par["agg_dir"][sel, m])], axis=1)
        off = origin[sel] + direction * par["agg_len"][sel, m:m + 1]
        x, y = particle_positions(size, par["agg_psi"][sel, m], off)
        out[sel] += sample_sources(sources, oversample, par["agg_src"][sel, m], x, y)
    junk_par = par["junk_par"]
    gx, gy = logical_grid(size)
    ice = np.nonzero(kind == "ice")[0]
    if len(ice):
        p = junk_par[ice]
        cx = ((p[:, 0] - 0.5) * box)[:, None, None]
        cy = ((p[:, 1] - 0.5) * box)[:, None, None]
        d = np.sqrt((gx[None] - cx) ** 2 + (gy[None] - cy) ** 2)
        radius = ((0.15 + 0.45 * p[:, 2]) * box)[:, None, None]
        amp = (1.0 + 2.0 * p[:, 3])[:, None, None]
        ball = np.sqrt(np.maximum(radius**2 - d**2, 0.0)) / radius
        width = (1.5 + 2.5 * p[:, 5])[:, None, None]
        ring = np.exp(-((d - radius) ** 2) / (2 * width**2))
        out[ice] = (amp * np.where((p[:, 4] < 0.5)[:, None, None], ball, ring)).astype(np.float32)
    carbon = np.nonzero(kind == "carbon")[0]
    if len(carbon):
        p = junk_par[carbon]
        ang = (2 * np.pi * p[:, 0])[:, None, None]
        offset = ((p[:, 1] - 0.5) * 0.6 * box)[:, None, None]
        width = (0.5 + 1.5 * p[:, 2])[:, None, None]
        amp = (0.5 + 1.5 * p[:, 3])[:, None, None]
        t = (gx[None] * np.cos(ang) + gy[None] * np.sin(ang) - offset) / width
        out[carbon] = (amp / (1.0 + np.exp(-np.clip(t, -50, 50)))).astype(np.float32)
    return out
