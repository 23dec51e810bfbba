"""E-step of 2D classification for one batch of particles, as matrix products (facts 2.1-2.7).

For particle images X (Fourier, per pixel j), translations t (phase factors), classes k
and psis, the negative log-likelihood is

    D = Σ_j w_j |X_j φ_j(t) - a_j P_kψ,j|² + Xi2_high/2,   w_j = 1/(2 σ²_j), a_j = s_g·CTF_j
      = Σ_j w_j|X_j|²  -  2 Re[(w a X φ(t)) · conj(P_kψ)]  +  (w a²)·|P_kψ|² + Xi2_high/2,

so the cross term between all (particle, translation) rows and all (class, psi) columns
is one GEMM (written as a real GEMM over the real view of the complex arrays, real and
imaginary parts interleaved, which equals the real part of the complex product at half
the cost) and the reference power term a second real GEMM. The search is RELION's two-pass adaptive one: a coarse pass at the
coarse image size over everything, a significance threshold at ``adaptive_fraction``,
then the oversampled children of the significant coarse samples only, at the current size.
That fine pass is evaluated in one of two ways with the same results (a speed choice per
particle, :data:`DENSE_FRACTION`): *gathered* (each particle's significant psis ×
translations, padded to the largest set of a sub-chunk, batched GEMMs) when few samples
are significant, or *dense* (all fine psis of the involved classes × all fine
translations as the coarse pass's two GEMMs, masked to the children of the significant
samples; the statistics as GEMMs over particle × translation) when posteriors are flat,
as in the first iterations. Sufficient statistics are accumulated per (class, fine psi)
on the current-size pixel set; the M-step back-rotates them once per iteration.
Projections and phase factors shared by all batches of an iteration are kept in
``EStepSetup.cache`` when they fit a quarter of the memory budget.

Offset prior: RELION mixes pixel and Å units in it (facts 2.5); here every offset
(rounded old offset + trial translation, class centre) is converted to Å before the
Gaussian is evaluated, which equals RELION at 1 Å/pixel. The class centre is RELION's
stored rlnClassPriorOffsetX/Y value, i.e. ``prior_offset_A * pdf_class``.

Example::

    setup = prepare_iteration(model, settings, sampling, iteration=1)
    total = None
    for batch in batches:
        stats, res = expectation_batch(batch, model, settings, setup)
        total = stats if total is None else total + stats

See also: :mod:`emclass2d.core.mstep` (consumes :class:`BatchStats`),
:mod:`emclass2d.core.sampling`, :mod:`emclass2d.core.projector`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from emclass2d.core.backend import array_module, to_host
from emclass2d.core.batch import ParticleBatch
from emclass2d.core.ctf import compute_ctf
from emclass2d.core.fourier import frequency_grid, frequency_indices, irfft2_centered, rfft2_centered, round_half_away, shell_index
from emclass2d.core.mask import mask_particles
from emclass2d.core.model import Model, Settings
from emclass2d.core.projector import Projector, make_projector, project, reference_power_spectrum
from emclass2d.core.sampling import Sampling

#: Largest particle count of one padded gathered fine-pass GEMM (bounds the padding waste).
_SUB = 24
#: Default peak temporary memory of one :func:`expectation_batch` call (bytes).
DEFAULT_MEMORY_BUDGET = 512 * 1024 * 1024


# ----------------------------------------------------------------------------- pixel sets
@dataclass(frozen=True)
class PixelSet:
    """Half-plane pixels of an N box used at image size ``size`` (RELION Mresol).

    flat: (J,) index into the (N, N//2+1) half-plane; kx, ky: (J,) integer frequencies;
    shell: (J,) round(|k|). Pixels: window of ``size`` (|ky| < size/2 plus the +size/2 row,
    kx <= size/2), shell <= size/2, the duplicated x = 0, y < 0 half excluded, origin kept.
    """

    flat: Any
    kx: Any
    ky: Any
    shell: Any
    size: int

    @property
    def n(self) -> int:
        return int(self.flat.shape[0])


def pixel_set(box: int, size: int, xp: Any = np) -> PixelSet:
    """The :class:`PixelSet` of an N = ``box`` transform windowed to ``size``."""
    kx, ky = frequency_indices(box)
    shell = shell_index(box)
    half = size // 2
    keep = (kx <= half) & (ky > -half) & (ky <= half) & (shell <= half) & ~((kx == 0) & (ky < 0))
    flat = np.flatnonzero(keep.ravel())
    return PixelSet(flat=xp.asarray(flat), kx=xp.asarray(kx.ravel()[flat]), ky=xp.asarray(ky.ravel()[flat]),
                    shell=xp.asarray(shell.ravel()[flat]), size=int(size))


def phase_factors(pix: PixelSet, translations_px: Any, box: int, dtype: Any) -> Any:
    """(T, J) exp(-2πi k·t/N): multiplying a transform by it shifts the image by +t."""
    xp = array_module(pix.kx)
    t = xp.asarray(translations_px, dtype=xp.float64)
    arg = (-2.0 * np.pi / box) * (t[:, 0:1] * pix.kx[None, :] + t[:, 1:2] * pix.ky[None, :])
    return (xp.cos(arg) + 1j * xp.sin(arg)).astype(dtype)


# ----------------------------------------------------------------------------- setup
@dataclass(frozen=True)
class EStepSetup:
    """Per-iteration E-step state: projector grids, tau2, sizes, pixel sets, sampling grids.

    tau2: (K, N//2+1) power spectrum of the current references (rlnReferenceTau2; the
    M-step's Wiener prior). psi_fine_deg: (n_psi_fine,) flat fine psis (index
    ipsi_coarse·2^o + i); trans_fine_px: (n_trans_fine,) flat fine translations.
    """

    projector: Projector
    tau2: Any
    sampling: Sampling
    iteration: int
    current_size: int
    coarse_size: int
    fine_size: int
    pix_coarse: PixelSet
    pix_fine: PixelSet
    pix_current: PixelSet
    psi_coarse_deg: Any
    psi_fine_deg: Any
    trans_coarse_px: Any
    trans_fine_px: Any
    #: projections and phase factors shared by the batches of the iteration (filled lazily)
    cache: dict = field(default_factory=dict, repr=False, compare=False)


def prepare_iteration(model: Model, settings: Settings, sampling: Sampling, iteration: int) -> EStepSetup:
    """Build the projector at ``model.current_size`` and everything shared by all batches.

    Call once per iteration after ``model.current_size``/``coarse_size`` and the sampling
    perturbation are set (RELION ``expectationSetup`` / ``setFourierTransformMaps``).
    """
    xp = array_module(model.references)
    n = model.box
    cur = int(model.current_size)
    coarse = int(min(model.coarse_size, cur))
    if sampling.oversampling == 0 and settings.strict_highres_exp_A <= 0:
        coarse = cur  # a single pass at the current size (facts 2.10)
    fine = coarse if settings.strict_highres_exp_A > 0 else cur
    proj = make_projector(model.references, cur, model.padding_factor)
    tau2 = reference_power_spectrum(proj)
    return EStepSetup(
        projector=proj, tau2=tau2, sampling=sampling, iteration=int(iteration),
        current_size=cur, coarse_size=coarse, fine_size=fine,
        pix_coarse=pixel_set(n, coarse, xp), pix_fine=pixel_set(n, fine, xp), pix_current=pixel_set(n, cur, xp),
        psi_coarse_deg=xp.asarray(sampling.coarse_psi_deg()),
        psi_fine_deg=xp.asarray(sampling.fine_psi_deg().reshape(-1)),
        trans_coarse_px=xp.asarray(sampling.coarse_translations_px()),
        trans_fine_px=xp.asarray(sampling.fine_translations_px().reshape(-1, 2)),
    )


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class BatchStats:
    """Sufficient statistics of processed particles (summable with ``+``).

    bp_data: (H, K, n_psi_fine, J) complex, Σ w·(CTF·s/σ²)·X(t) (or the residual
    X(t) − CTF·s·P) per class and fine psi on the current-size pixel set; H = 2 with
    pseudo-halves (part_index even -> 0, odd -> 1), else 1. bp_weight: same shape, real,
    Σ w·(CTF·s)²/σ². wsum_sigma2_noise: (n_optics, N//2+1); sumw_optics: (n_optics,);
    wsum_pdf_class: (K,); wsum_prior_offset_A: (K, 2) Σ w·offset (Å);
    wsum_sigma2_offset_A2: Σ w·|offset − centre|² (Å²); scale_xa, scale_aa,
    n_particles_group: (n_groups,); sum_norm_correction, log_likelihood, sum_pmax: scalars;
    n_particles: int. psi_fine_deg, kx, ky, current_size describe the bp arrays (not summed).
    """

    bp_data: Any
    bp_weight: Any
    wsum_sigma2_noise: Any
    sumw_optics: Any
    wsum_pdf_class: Any
    wsum_prior_offset_A: Any
    wsum_sigma2_offset_A2: Any
    scale_xa: Any
    scale_aa: Any
    n_particles_group: Any
    sum_norm_correction: Any
    log_likelihood: Any
    sum_pmax: Any
    n_particles: int
    psi_fine_deg: Any
    kx: Any
    ky: Any
    current_size: int

    _META = ("psi_fine_deg", "kx", "ky", "current_size")

    def __add__(self, other: "BatchStats") -> "BatchStats":
        return merge_stats(self, other)


def merge_stats(a: BatchStats, b: BatchStats) -> BatchStats:
    """Sum of two :class:`BatchStats` (float64/complex128 accumulators)."""
    if a.current_size != b.current_size or a.bp_data.shape != b.bp_data.shape:
        raise ValueError("cannot merge statistics of different image sizes or sampling")
    xp = array_module(a.bp_data, b.bp_data)
    out = {}
    for f in fields(BatchStats):
        name = f.name
        va, vb = getattr(a, name), getattr(b, name)
        if name in BatchStats._META:
            out[name] = va
        elif name == "n_particles":
            out[name] = va + vb
        elif name == "bp_data":
            out[name] = va.astype(xp.complex128) + vb
        else:
            out[name] = xp.asarray(va, dtype=xp.float64) + vb
    return BatchStats(**out)


@dataclass(frozen=True)
class ParticleResults:
    """Per-particle E-step results, in batch order (device arrays).

    class_index (B,) 0-based best class; psi_deg (B,); origin_px (B, 2) absolute best
    offset (rounded old + trial) in pixels; dll (B,) rlnLogLikeliContribution; pmax (B,);
    n_significant (B,) rlnNrOfSignificantSamples; norm_correction (B,) new rlnNormCorrection.
    """

    class_index: Any
    psi_deg: Any
    origin_px: Any
    dll: Any
    pmax: Any
    n_significant: Any
    norm_correction: Any


# ----------------------------------------------------------------------------- image preparation
def translate_integer(images: Any, shift_px: Any) -> Any:
    """out(r) = in(r − shift) for integer (x, y) shifts (B, 2); zeros enter, no wrap."""
    xp = array_module(images, shift_px)
    b, n, _ = images.shape
    idx = xp.arange(n)
    sy = idx[None, :] - shift_px[:, 1:2]
    sx = idx[None, :] - shift_px[:, 0:1]
    vy = (sy >= 0) & (sy < n)
    vx = (sx >= 0) & (sx < n)
    bi = xp.arange(b)[:, None, None]
    out = images[bi, xp.clip(sy, 0, n - 1)[:, :, None], xp.clip(sx, 0, n - 1)[:, None, :]]
    return out * (vy[:, :, None] & vx[:, None, :]).astype(images.dtype)


def noise_fill_images(sigma2_shell: Any, part_index: Any, random_seed: int, iteration: int, box: int,
                      sigma2_fudge: float, dtype: Any) -> Any:
    """Noise images (B, N, N) with Fourier components N(0, fudge·σ²[shell]) per component.

    Seeded per particle with (random_seed + part_index, iteration), so the fill does not
    depend on batch size or order. ``sigma2_shell``: (B, N//2+1) per particle.
    """
    xp = array_module(sigma2_shell)
    shells = shell_index(box, xp)
    nsh = box // 2 + 1
    parts = to_host(part_index).astype(np.int64)
    # only the draws are per particle (each has its own seeded generator); the rest is batched
    z = np.empty((len(parts), 2, box, box // 2 + 1), dtype=np.float64)
    for i, p in enumerate(parts):
        np.random.default_rng([abs(int(random_seed)) + int(p), int(iteration)]).standard_normal(out=z[i])
    z = xp.asarray(z)
    inside = shells < nsh
    s2 = xp.asarray(sigma2_shell, dtype=xp.float64) * sigma2_fudge
    sd = xp.where(inside[None], xp.sqrt(xp.maximum(s2[:, xp.where(inside, shells, 0)], 0.0)), 0.0)
    return irfft2_centered((z[:, 0] + 1j * z[:, 1]) * sd, box).astype(dtype)


@dataclass(frozen=True)
class _Prepared:
    xm: Any          # (B, N*(N//2+1)) masked transform, flat
    xn: Any          # unmasked transform, flat
    ctf_ref: Any     # (B, flat) CTF applied to the reference (CTF² for premultiplied data)
    ctf_bp: Any      # (B, flat) CTF applied to the data in back-projection (1 for premultiplied)
    ctf_w: Any       # (B, flat) CTF² entering the back-projection weight
    scale: Any       # (B,) s_g
    sigma2: Any      # (B, N//2+1) fudge·sigma2_noise of the particle's optics group
    spectrum: Any    # (B, N//2+1) power of the masked image per shell (x=0 duplicates once)
    xi2_high: Any    # (B,) power beyond the current size
    offset_round: Any  # (B, 2) int rounded old offset (px)


def _prepare(batch: ParticleBatch, sel: Any, model: Model, settings: Settings, setup: EStepSetup,
             fdt: Any) -> _Prepared:
    xp = array_module(batch.images)
    n = model.box
    px = model.pixel_size_A
    imgs = batch.images[sel].astype(fdt)
    optics = xp.asarray(batch.optics_group[sel], dtype=xp.int64)
    group = xp.asarray(batch.group[sel], dtype=xp.int64)
    if settings.do_norm:
        norm = xp.asarray(batch.norm_correction[sel], dtype=fdt)
        imgs = imgs * (model.avg_norm_correction / norm)[:, None, None]
    off_round = round_half_away(xp.asarray(batch.origin_px[sel], dtype=xp.float64))
    shifted = translate_integer(imgs, off_round)
    sigma2 = xp.asarray(model.sigma2_noise, dtype=xp.float64)[optics] * settings.sigma2_fudge
    radius = settings.diameter_A(n, px) / (2.0 * px)
    if settings.zero_mask:
        masked = mask_particles(shifted, radius, settings.width_mask_edge_px)
    else:
        noise = noise_fill_images(sigma2, batch.part_index[sel], settings.random_seed, setup.iteration, n, 1.0, fdt)
        masked = mask_particles(shifted, radius, settings.width_mask_edge_px, fill_images=noise)
    b = imgs.shape[0]
    xm = rfft2_centered(masked).reshape(b, -1)
    xn = rfft2_centered(shifted).reshape(b, -1)
    if settings.do_ctf:
        fx, fy = frequency_grid(n, px, xp)
        ctf = compute_ctf(
            fx, fy, xp.asarray(batch.defocus_u_A[sel]), xp.asarray(batch.defocus_v_A[sel]),
            xp.asarray(batch.defocus_angle_deg[sel]), xp.asarray(batch.voltage_kV[sel]),
            xp.asarray(batch.cs_mm[sel]), xp.asarray(batch.amplitude_contrast[sel]),
            phase_shift_deg=xp.asarray(batch.phase_shift_deg[sel]), bfactor_A2=xp.asarray(batch.ctf_bfactor_A2[sel]),
            scale=xp.asarray(batch.ctf_scale[sel]), intact_first_peak=settings.ctf_intact_first_peak,
            phase_flipped=settings.ctf_phase_flipped,
        ).reshape(b, -1).astype(fdt)
        premult = xp.asarray(batch.ctf_premultiplied[sel]).astype(bool)[:, None]
        ctf_ref = xp.where(premult, ctf * ctf, ctf)
        ctf_bp = xp.where(premult, xp.ones_like(ctf), ctf)
        ctf_w = ctf * ctf
    else:
        ctf_ref = ctf_bp = ctf_w = xp.ones((b, n * (n // 2 + 1)), dtype=fdt)
    scale = xp.asarray(model.scale, dtype=xp.float64)[group]
    # power spectrum of the masked image (shells 1..N/2, x = 0 duplicates once)
    nsh = n // 2 + 1
    shells = shell_index(n, xp).ravel()
    kx, ky = frequency_indices(n, xp)
    keep = (~((kx == 0) & (ky < 0))).ravel() & (shells > 0) & (shells < nsh)
    p = (xm.real.astype(xp.float64) ** 2 + xm.imag.astype(xp.float64) ** 2)[:, keep]
    idx = shells[keep][None, :] + nsh * xp.arange(b)[:, None]
    spectrum = xp.bincount(idx.ravel(), weights=p.ravel(), minlength=b * nsh).reshape(b, nsh)
    cur_half = setup.current_size // 2
    xi2_high = spectrum[:, cur_half + 1:].sum(axis=1)
    return _Prepared(xm=xm, xn=xn, ctf_ref=ctf_ref, ctf_bp=ctf_bp, ctf_w=ctf_w, scale=scale, sigma2=sigma2,
                     spectrum=spectrum, xi2_high=xi2_high, offset_round=off_round)


# ----------------------------------------------------------------------------- helpers
def _ri(z: Any) -> Any:
    """Complex (..., J) -> its real view (..., 2J) (re, im interleaved), so Re(a·conj(b))
    is a real dot product and real weights times it a real GEMM; contiguous copy if needed."""
    xp = array_module(z)
    return xp.ascontiguousarray(z).view(z.real.dtype)


def _power(z: Any) -> Any:
    """|z|² of a complex array in its real dtype."""
    return z.real * z.real + z.imag * z.imag


def _project_chunked(setup: EStepSetup, cls: Any, psi: Any, pix: PixelSet, r_limit: float, cdt: Any,
                     budget: int) -> Any:
    xp = array_module(cls)
    r = int(cls.shape[0])
    out = xp.empty((r, pix.n), dtype=cdt)
    per_row = max(1, pix.n * 80)
    step = max(1, budget // (4 * per_row))
    for s in range(0, r, step):
        out[s: s + step] = project(setup.projector, cls[s: s + step], psi[s: s + step], pix.kx, pix.ky, r_limit)
    return out


def _threshold(weights_sorted_desc: Any, total: Any, fraction: float, maxsig: int) -> tuple[Any, Any]:
    """RELION significance: smallest weight whose cumulative sum (from the largest) exceeds
    fraction·total; count of included samples, capped at maxsig if > 0. Returns (thr, count)."""
    xp = array_module(weights_sorted_desc)
    cs = xp.cumsum(weights_sorted_desc, axis=1)
    exceeded = cs > (fraction * total)[:, None]
    s = weights_sorted_desc.shape[1]
    count = xp.where(exceeded.any(axis=1), xp.argmax(exceeded, axis=1) + 1, s)
    if maxsig > 0:
        count = xp.minimum(count, maxsig)
    thr = xp.take_along_axis(weights_sorted_desc, (count - 1)[:, None], axis=1)[:, 0]
    return thr, count


def _shared(setup: EStepSetup, key: tuple, make: Any, keep_bytes: int) -> Any:
    """``setup.cache[key]``, computed by ``make()`` and kept for later batches if it is small."""
    hit = setup.cache.get(key)
    if hit is not None:
        return hit
    value = make()
    if int(sum(v.nbytes for v in (value if isinstance(value, tuple) else (value,)))) <= keep_bytes:
        setup.cache[key] = value
    return value


def _reference_rows(ctx: dict, rows: Any, which: str) -> Any:
    """Projections (R, J) of flat (class·Ψf + fine psi) rows at the fine or current size.

    Taken from the per-iteration table when it fits the memory budget, else projected.
    """
    table = ctx["tables"][which]
    if table is not None:
        return table[rows]
    setup = ctx["setup"]
    n_psi_f = setup.sampling.n_psi_fine
    pix, size = (setup.pix_fine, setup.fine_size) if which == "fine" else (setup.pix_current, setup.current_size)
    return _project_chunked(setup, rows // n_psi_f, setup.psi_fine_deg[rows % n_psi_f], pix, size / 2.0,
                            ctx["cdt"], ctx["budget"])


#: A particle's fine pass is evaluated densely when its gathered set (significant coarse
#: psis × significant coarse translations) is at least this fraction of the whole coarse
#: grid. The dense GEMMs share one right-hand side and need no per-particle gathers or
#: scatters; with benchmarks/bench_estep.py (sigma2 scaled to get intermediate regimes,
#: 64 px, K = 12, 30 psis × 21 translations) the two cost the same between ~0.1 and ~0.35.
DENSE_FRACTION = 0.2


# ----------------------------------------------------------------------------- main entry
def expectation_batch(
    batch: ParticleBatch,
    model: Model,
    settings: Settings,
    setup: EStepSetup,
    *,
    accumulate_residual: bool = False,
    split_halves: bool = False,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
) -> tuple[BatchStats, ParticleResults]:
    """E-step for one :class:`ParticleBatch`: posteriors, best poses, sufficient statistics.

    accumulate_residual: back-project X − CTF·s·P instead of X (VDAM, facts 3.3).
    split_halves: two pseudo-half accumulators by part_index parity (VDAM, facts 3.3).
    memory_budget_bytes: particles are processed in chunks so that temporaries stay
    roughly under this many bytes (the statistics arrays and the per-iteration projection
    tables, each kept only when under a quarter of it, come on top).
    Raises ValueError if no class has pdf_class > 0.
    """
    xp = array_module(batch.images)
    fdt = xp.float64 if batch.images.dtype == np.float64 else xp.float32
    cdt = xp.complex128 if fdt == xp.float64 else xp.complex64
    samp = setup.sampling
    k_all = model.n_classes
    n = model.box
    nsh = n // 2 + 1
    pdf_class = to_host(model.pdf_class).astype(np.float64)
    active = np.flatnonzero(pdf_class > 0)
    if active.size == 0:
        raise ValueError("expectation: every class has pdf_class = 0; nothing to align against")
    ka = active.size
    n_psi_c, n_tc = samp.n_psi_coarse, samp.n_trans_coarse
    n_psi_f = samp.n_psi_fine
    n_halves = 2 if split_halves else 1
    n_optics = int(model.sigma2_noise.shape[0])
    n_groups = int(model.scale.shape[0])
    pc, pf, pcur = setup.pix_coarse, setup.pix_fine, setup.pix_current
    j_cur = pcur.n
    active_x = xp.asarray(active)
    budget = int(memory_budget_bytes)
    keep = budget // 4
    dkey = np.dtype(cdt).str

    # projections of every class, shared by all batches of the iteration: coarse (K·Ψc, Jc),
    # fine and current size (K·Ψf, J) (the latter only when it fits the budget)
    def coarse_table():
        p = _project_chunked(setup, xp.repeat(xp.arange(k_all), n_psi_c), xp.tile(setup.psi_coarse_deg, k_all),
                             pc, setup.coarse_size / 2.0, cdt, budget)
        return _ri(p), _power(p)

    def fine_table(which):
        pix, size = (pf, setup.fine_size) if which == "fine" else (pcur, setup.current_size)
        if k_all * n_psi_f * pix.n * np.dtype(cdt).itemsize > keep:
            return None
        return _shared(setup, (which, dkey), lambda: _project_chunked(
            setup, xp.repeat(xp.arange(k_all), n_psi_f), xp.tile(setup.psi_fine_deg, k_all), pix, size / 2.0,
            cdt, budget), keep)

    p_ri_all, p_pow_all = _shared(setup, ("coarse", dkey), coarse_table, keep)
    rows_c = (active_x[:, None] * n_psi_c + xp.arange(n_psi_c)[None, :]).ravel()
    p_coarse_ri = p_ri_all if ka == k_all else p_ri_all[rows_c]
    p_coarse_pow = p_pow_all if ka == k_all else p_pow_all[rows_c]
    tables = {"fine": fine_table("fine")}
    tables["current"] = tables["fine"] if pf.size == pcur.size else fine_table("current")
    phi_c = _shared(setup, ("phi_c", dkey), lambda: phase_factors(pc, setup.trans_coarse_px, n, cdt), keep)
    phi_f = _shared(setup, ("phi_f", dkey), lambda: phase_factors(pf, setup.trans_fine_px, n, cdt), keep)
    phi_cur = phi_f if pf.size == pcur.size else _shared(
        setup, ("phi_cur", dkey), lambda: phase_factors(pcur, setup.trans_fine_px, n, cdt), keep)

    # priors (facts 2.5); offset prior centre is RELION's stored value prior_offset·pdf_class
    pdf_dir = xp.asarray(model.pdf_direction, dtype=xp.float64)[active_x]
    log_pdf_dir = xp.log(xp.maximum(pdf_dir, 1e-300))
    centre_A = xp.asarray(model.prior_offset_A, dtype=xp.float64) * xp.asarray(model.pdf_class, dtype=xp.float64)[:, None]
    px_A = model.pixel_size_A
    s2off = float(model.sigma2_offset_A2)
    ssnr_mask = xp.asarray(model.data_vs_prior, dtype=xp.float64) > 3.0  # (K, nsh) for scale stats

    stats = dict(
        bp_data=xp.zeros((n_halves * k_all * n_psi_f, j_cur), dtype=cdt),
        bp_weight=xp.zeros((n_halves * k_all * n_psi_f, j_cur), dtype=fdt),
        wsum_sigma2_noise=xp.zeros((n_optics, nsh), dtype=xp.float64),
        sumw_optics=xp.zeros((n_optics,), dtype=xp.float64),
        wsum_pdf_class=xp.zeros((k_all,), dtype=xp.float64),
        wsum_prior_offset_A=xp.zeros((k_all, 2), dtype=xp.float64),
        wsum_sigma2_offset_A2=xp.zeros((), dtype=xp.float64),
        scale_xa=xp.zeros((n_groups,), dtype=xp.float64),
        scale_aa=xp.zeros((n_groups,), dtype=xp.float64),
        n_particles_group=xp.zeros((n_groups,), dtype=xp.float64),
        sum_norm_correction=xp.zeros((), dtype=xp.float64),
        log_likelihood=xp.zeros((), dtype=xp.float64),
        sum_pmax=xp.zeros((), dtype=xp.float64),
    )
    bsz = batch.size
    res = dict(class_index=xp.zeros(bsz, dtype=xp.int64), psi_deg=xp.zeros(bsz), origin_px=xp.zeros((bsz, 2)),
               dll=xp.zeros(bsz), pmax=xp.zeros(bsz), n_significant=xp.zeros(bsz, dtype=xp.int64),
               norm_correction=xp.zeros(bsz))

    itemsize = 8 if fdt == xp.float64 else 4
    # coarse pass temporaries per particle; half the budget, the fine pass needs the rest
    per_particle = itemsize * (n_tc * (4 * pc.n + 6 * ka * n_psi_c) + 16 * n * n)
    chunk = max(1, int(budget // max(2 * per_particle, 1)))
    ctx = dict(xp=xp, fdt=fdt, cdt=cdt, model=model, settings=settings, setup=setup, active=active,
               active_x=active_x, p_coarse_ri=p_coarse_ri, p_coarse_pow=p_coarse_pow, phi_c=phi_c, phi_f=phi_f,
               phi_cur=phi_cur, tables=tables, log_pdf_dir=log_pdf_dir, centre_A=centre_A, px_A=px_A,
               s2off=s2off, ssnr_mask=ssnr_mask, n_halves=n_halves, accumulate_residual=accumulate_residual,
               budget=budget, itemsize=itemsize, res=res,
               optics=xp.asarray(batch.optics_group, dtype=xp.int64), groups=xp.asarray(batch.group, dtype=xp.int64),
               norm_correction=xp.asarray(batch.norm_correction, dtype=xp.float64))
    for s in range(0, bsz, chunk):
        sel = xp.arange(s, min(bsz, s + chunk))
        _process_chunk(batch, sel, ctx, stats, res)

    stats["bp_data"] = stats["bp_data"].reshape(n_halves, k_all, n_psi_f, j_cur)
    stats["bp_weight"] = stats["bp_weight"].reshape(n_halves, k_all, n_psi_f, j_cur)
    out = BatchStats(n_particles=bsz, psi_fine_deg=setup.psi_fine_deg, kx=pcur.kx, ky=pcur.ky,
                     current_size=setup.current_size, **stats)
    return out, ParticleResults(**res)


def _offset_log_prior(off_round: Any, ctx: dict) -> Any:
    """ln pdf_offset (B, Ka, Tc) at the absolute coarse offsets, all in Å (facts 2.5)."""
    xp = ctx["xp"]
    setup = ctx["setup"]
    o_A = ctx["px_A"] * (off_round[:, None, :].astype(xp.float64) + setup.trans_coarse_px[None, :, :])  # (B,Tc,2)
    mu = ctx["centre_A"][ctx["active_x"]]  # (Ka, 2)
    d2 = ((o_A[:, None, :, :] - mu[None, :, None, :]) ** 2).sum(-1)  # (B, Ka, Tc)
    s2 = ctx["s2off"]
    if s2 < 0.0001:
        return xp.where(d2 > 0, -np.inf, 0.0)
    return -d2 / (2.0 * s2) - np.log(2.0 * np.pi * s2)


@dataclass(frozen=True)
class _Chunk:
    """A chunk of particles after the coarse pass, with the fine-size likelihood terms."""

    sel: Any         # (b,) rows of the batch
    prep: _Prepared
    sig: Any         # (b, Ka, Ψc, Tc) significant coarse samples
    n_sig: Any       # (b,) rlnNrOfSignificantSamples
    lp_off: Any      # (b, Ka, Tc) ln offset prior
    m0: Any          # (b,) max and sum of the pass-0 weights (single-pass normalisation)
    tot0: Any
    x: Any           # (b, Jf) masked transform at the fine pixels
    a: Any           # (b, Jf) s·CTF
    w: Any           # (b, Jf) 1/(2σ²), 0 at the origin
    x2: Any          # (b,) Σ w|x|²
    sum_log_s2: Any  # (b,) Σ ln(2πσ²) over the fine pixels (dLL)


def _pass_terms(prep: _Prepared, pix: PixelSet, fdt: Any):
    xp = array_module(prep.xm)
    x = prep.xm[:, pix.flat]
    a = (prep.scale[:, None] * prep.ctf_ref[:, pix.flat]).astype(fdt)
    s2 = prep.sigma2[:, pix.shell]
    w = xp.where((pix.shell[None, :] > 0) & (s2 > 0), 0.5 / xp.where(s2 > 0, s2, 1.0), 0.0).astype(fdt)
    x2 = (w * _power(x)).sum(axis=1, dtype=xp.float64)
    return x, a, w, x2, s2


def _process_chunk(batch: ParticleBatch, sel: Any, ctx: dict, stats: dict, res: dict) -> None:
    xp, fdt = ctx["xp"], ctx["fdt"]
    model, settings, setup = ctx["model"], ctx["settings"], ctx["setup"]
    samp = setup.sampling
    ka = ctx["active"].size
    n_psi_c, n_tc = samp.n_psi_coarse, samp.n_trans_coarse
    pc, pf = setup.pix_coarse, setup.pix_fine
    prep = _prepare(batch, sel, model, settings, setup, fdt)
    b = int(sel.shape[0])

    # ---------------- pass 0: coarse, everything, one GEMM for the cross term
    x, a, w, x2, _ = _pass_terms(prep, pc, fdt)
    lhs = (w * a * x)[:, None, :] * ctx["phi_c"][None, :, :]  # (B, Tc, Jc)
    cross = _ri(lhs).reshape(b * n_tc, -1) @ ctx["p_coarse_ri"].T  # (B*Tc, Ka*Ψc)
    del lhs
    power = (w * a * a) @ ctx["p_coarse_pow"].T  # (B, Ka*Ψc)
    d = (x2[:, None, None] + prep.xi2_high[:, None, None] / 2.0
         - 2.0 * cross.reshape(b, n_tc, ka * n_psi_c).astype(xp.float64) + power[:, None, :].astype(xp.float64))
    del cross
    d = d.reshape(b, n_tc, ka, n_psi_c).transpose(0, 2, 3, 1)  # (B, Ka, Ψc, Tc): class -> psi -> trans
    lp_off = _offset_log_prior(prep.offset_round, ctx)  # (B, Ka, Tc)
    lp_cls = ctx["log_pdf_dir"]
    # priors divided by their mean over evaluated combinations (only changes dLL)
    lp_cls_n = lp_cls - xp.log(xp.mean(xp.exp(lp_cls)))
    off_mean = xp.log(xp.maximum(xp.exp(lp_off).mean(axis=(1, 2)), 1e-300))
    logw0 = lp_cls_n[None, :, None, None] + (lp_off - off_mean[:, None, None])[:, :, None, :] - d
    del d
    flat0 = logw0.reshape(b, -1)
    m0 = flat0.max(axis=1)
    w0 = xp.exp(flat0 - m0[:, None])
    del logw0, flat0
    tot0 = w0.sum(axis=1)
    thr0, n_sig = _threshold(xp.sort(w0, axis=1)[:, ::-1], tot0, settings.adaptive_fraction, settings.maxsig)
    sig = (w0 >= thr0[:, None]).reshape(b, ka, n_psi_c, n_tc)
    del w0

    # ---------------- pass 1: oversampled children of significant coarse samples
    x, a, w, x2, s2 = _pass_terms(prep, pf, fdt)
    sum_log_s2 = xp.where((pf.shell[None, :] > 0) & (s2 > 0), xp.log(2.0 * np.pi * xp.where(s2 > 0, s2, 1.0)), 0.0).sum(axis=1)
    ch = _Chunk(sel=sel, prep=prep, sig=sig, n_sig=n_sig, lp_off=lp_off, m0=m0, tot0=tot0, x=x, a=a, w=w, x2=x2,
                sum_log_s2=sum_log_s2)
    rot_sig = sig.any(axis=3).reshape(b, ka * n_psi_c)
    tr_sig = sig.any(axis=(1, 2))  # (B, Tc)
    n_rot = rot_sig.sum(axis=1)
    n_tr = tr_sig.sum(axis=1)
    # similar set sizes together -> little padding in the per-particle batched GEMMs
    order = to_host(xp.argsort(-(n_rot * (n_tc + 1) + n_tr)))
    n_rot_h, n_tr_h = to_host(n_rot), to_host(n_tr)
    # dense when the particle's rectangular set is a large part of the whole fine grid
    dense = (n_rot_h * n_tr_h)[order] >= DENSE_FRACTION * (ka * n_psi_c * n_tc)
    if np.any(dense):
        _fine_dense_all(order[dense], ch, ctx, stats, res, batch)
    order = order[~dense]
    if order.size:
        rot_order = xp.argsort(~rot_sig, axis=1, kind="stable")
        tr_order = xp.argsort(~tr_sig, axis=1, kind="stable")
        _fine_gathered_all(order, n_rot_h[order], n_tr_h[order], rot_order, tr_order, n_rot, n_tr, ch, ctx,
                           stats, res, batch)


# ----------------------------------------------------------------------------- fine pass: gathered
def _fine_gathered_all(order, n_rot_o, n_tr_o, rot_order, tr_order, n_rot, n_tr, ch, ctx, stats, res, batch):
    """Padded per-particle fine passes over sub-chunks that fit the memory budget."""
    xp = ctx["xp"]
    samp = ctx["setup"].sampling
    n_op, n_ot = samp.n_over_psi, samp.n_over_trans
    pf, pcur = ctx["setup"].pix_fine, ctx["setup"].pix_current
    item = ctx["itemsize"]
    b = int(order.shape[0])
    start = 0
    while start < b:
        # padded sub-chunks of at most _SUB particles that also fit the memory budget
        rmax = int(n_rot_o[start]) * n_op
        tmax = int(n_tr_o[start: start + _SUB].max()) * n_ot
        per = item * (2 * tmax * (2 * pf.n) + 2 * rmax * (2 * pf.n) + 6 * tmax * rmax + 10 * rmax * pcur.n) + 1
        cnt = max(1, min(_SUB, int(ctx["budget"] // per)))
        sub = xp.asarray(order[start: start + cnt])
        _fine_gathered(sub, rot_order, tr_order, n_rot, n_tr, ch, ctx, stats, res, batch)
        start += cnt


def _fine_gathered(sub, rot_order, tr_order, n_rot, n_tr, ch: _Chunk, ctx, stats, res, batch) -> None:
    xp, fdt, cdt = ctx["xp"], ctx["fdt"], ctx["cdt"]
    settings, setup = ctx["settings"], ctx["setup"]
    samp = setup.sampling
    n_psi_c = samp.n_psi_coarse
    n_op, n_ot = samp.n_over_psi, samp.n_over_trans
    n_psi_f = samp.n_psi_fine
    pcur = setup.pix_current
    prep = ch.prep
    b = int(sub.shape[0])
    bi = xp.arange(b)
    rmax_c = int(n_rot[sub].max())
    tmax_c = int(n_tr[sub].max())
    rc = rot_order[sub][:, :rmax_c]  # (b, Rc) coarse rotation index ka*Ψc + ψc
    rc_valid = xp.arange(rmax_c)[None, :] < n_rot[sub][:, None]
    tc = tr_order[sub][:, :tmax_c]
    tc_valid = xp.arange(tmax_c)[None, :] < n_tr[sub][:, None]
    # fine children
    rf_c = xp.repeat(rc, n_op, axis=1)  # parent coarse rotation of each fine rotation
    rf_valid = xp.repeat(rc_valid, n_op, axis=1)
    i_op = xp.tile(xp.arange(n_op), rmax_c)[None, :]
    cls_a = rf_c // n_psi_c  # active-class index
    psi_f_idx = (rf_c % n_psi_c) * n_op + i_op  # fine psi index
    tf_c = xp.repeat(tc, n_ot, axis=1)
    tf_valid = xp.repeat(tc_valid, n_ot, axis=1)
    tf = tf_c * n_ot + xp.tile(xp.arange(n_ot), tmax_c)[None, :]  # fine translation index
    sig_s = ch.sig[sub]  # (b, Ka, Ψc, Tc)
    pair_valid = (sig_s[bi[:, None, None], (cls_a)[:, None, :], (rf_c % n_psi_c)[:, None, :], tf_c[:, :, None]]
                  & rf_valid[:, None, :] & tf_valid[:, :, None])  # (b, T4, R2)

    # union of fine references needed by this sub-chunk
    gid = cls_a * n_psi_f + psi_f_idx
    gid_v = xp.where(rf_valid, gid, gid[:, :1])
    uniq = xp.unique(gid_v)
    pos = xp.searchsorted(uniq, gid_v)
    u_rows = ctx["active_x"][uniq // n_psi_f] * n_psi_f + uniq % n_psi_f
    p_u = _reference_rows(ctx, u_rows, "fine")
    xs, as_, ws, x2s = ch.x[sub], ch.a[sub], ch.w[sub], ch.x2[sub]
    lhs = (ws * as_ * xs)[:, None, :] * ctx["phi_f"][tf]  # (b, T4, J)
    cross = xp.matmul(_ri(lhs), xp.swapaxes(_ri(p_u)[pos], 1, 2))  # (b, T4, R2)
    power_u = (ws * as_ * as_) @ _power(p_u).T  # (b, U)
    power = xp.take_along_axis(power_u, pos, axis=1)
    d = (x2s[:, None, None] + prep.xi2_high[sub][:, None, None] / 2.0
         - 2.0 * cross.astype(xp.float64) + power[:, None, :].astype(xp.float64))
    del lhs, cross
    lp_cls = ctx["log_pdf_dir"][cls_a]  # (b, R2)
    lp_o = ch.lp_off[sub][bi[:, None, None], cls_a[:, None, :], tf_c[:, :, None]]  # (b, T4, R2)
    # normalise priors by their mean over the evaluated fine samples
    cnt = xp.maximum(pair_valid.sum(axis=(1, 2)), 1)
    mean_c = xp.where(pair_valid, xp.exp(lp_cls)[:, None, :], 0.0).sum(axis=(1, 2)) / cnt
    mean_o = xp.where(pair_valid, xp.exp(lp_o), 0.0).sum(axis=(1, 2)) / cnt
    logw = lp_cls[:, None, :] + lp_o - d - (xp.log(xp.maximum(mean_c, 1e-300)) + xp.log(xp.maximum(mean_o, 1e-300)))[:, None, None]
    logw = xp.where(pair_valid, logw, -np.inf)
    flat = logw.reshape(b, -1)
    m1 = flat.max(axis=1)
    wn = xp.exp(flat - m1[:, None])
    tot1 = wn.sum(axis=1)
    lse = m1 + xp.log(tot1)
    if samp.oversampling == 0:
        # single pass: normalise by the pass-0 total and keep every significant sample
        lse = ch.m0[sub] + xp.log(ch.tot0[sub])
        wn = xp.exp(flat - lse[:, None])
        use = pair_valid.reshape(b, -1)
    else:
        wn = wn / tot1[:, None]
        thr1, _ = _threshold(xp.sort(wn, axis=1)[:, ::-1], xp.ones(b), settings.adaptive_fraction, -1)
        use = (wn >= thr1[:, None]) & pair_valid.reshape(b, -1)
    dll = lse - ch.sum_log_s2[sub]
    best = xp.argmax(wn, axis=1)
    pmax = wn[bi, best]
    t_best = best // gid.shape[1]
    r_best = best % gid.shape[1]
    wu = xp.where(use, wn, 0.0).reshape(b, tf.shape[1], gid.shape[1])  # (b, T4, R2) used weights
    off_round = prep.offset_round[sub].astype(xp.float64)
    _store_results(sub, ch, ctx, res, ctx["active_x"][cls_a[bi, r_best]], psi_f_idx[bi, r_best],
                   setup.trans_fine_px[tf[bi, t_best]], dll, pmax)

    # ---------------- sufficient statistics on the current-size pixel set
    omega = wu.sum(axis=1)  # (b, R2)
    wtot = omega.sum(axis=1)  # (b,)
    if pcur.size == setup.pix_fine.size:
        p_cur = p_u[pos]
        phi = ctx["phi_f"]
    else:
        p_cur = _reference_rows(ctx, u_rows, "current")[pos]
        phi = ctx["phi_cur"]
    # Σ_t W φ_t (b, R2, Jcur): real weights times the interleaved (re, im) view of φ
    g = xp.matmul(xp.swapaxes(wu, 1, 2).astype(fdt), phi[tf].view(fdt)).view(cdt)
    pt = _PixelTerms.of(sub, ch, ctx)
    rows = g * (pt.coef_data * pt.xn)[:, None, :]
    wrows = omega[:, :, None].astype(fdt) * pt.coef_w[:, None, :]
    if ctx["accumulate_residual"]:
        # (CTF·s/σ²)·(X − CTF·s·P): the P part is exactly weight·P
        rows = rows - wrows * p_cur
    k_all = ctx["model"].n_classes
    gsel = ch.sel[sub]
    half = (xp.asarray(batch.part_index[gsel], dtype=xp.int64) % 2) if ctx["n_halves"] == 2 else xp.zeros(b, dtype=xp.int64)
    cls_full = ctx["active_x"][cls_a]
    row_id = (half[:, None] * k_all + cls_full) * n_psi_f + psi_f_idx  # (b, R2)
    # a particle's rows are distinct (padding included: its rotation order is a permutation),
    # so one indexed add per particle accumulates exactly; padded rows add zeros
    for i in range(b):
        stats["bp_data"][row_id[i]] += rows[i]
        stats["bp_weight"][row_id[i]] += wrows[i]

    # noise, norm: Σ_{t,r} W |Xm φ_t − a P_r|² per pixel (origin included)
    cross_pix = (xp.conj(p_cur) * g).sum(axis=1)  # (b, J) Σ_r conj(P_r) G_r
    pp = (omega[:, :, None] * _power(p_cur)).sum(axis=1)  # (b, J)
    xa = aa = None
    if settings.do_scale:
        # only pixels in shells where some class has SSNR > 3 contribute
        jm = xp.flatnonzero(ctx["ssnr_mask"][:, pcur.shell].any(axis=0))
        msk = ctx["ssnr_mask"][cls_full[:, :, None], pcur.shell[jm][None, None, :]]  # (b, R2, Jm)
        cr = pt.ctf_ref[:, jm].astype(xp.float64)
        p_m = p_cur[:, :, jm]
        cross_m = (msk * xp.conj(p_m) * g[:, :, jm]).sum(axis=1)  # (b, Jm)
        xa = (cr * (pt.xm[:, jm] * cross_m).real).sum(axis=1)
        aa = (cr * cr * (msk * omega[:, :, None] * _power(p_m)).sum(axis=1)).sum(axis=1)
    _store_pixel_stats(sub, ch, ctx, stats, pt, wtot, cross_pix, pp, xa, aa)

    # class, offsets
    stats["wsum_pdf_class"] += xp.bincount(cls_full.ravel(), weights=omega.ravel(), minlength=k_all)
    o_A = ctx["px_A"] * (off_round[:, None, :] + setup.trans_fine_px[tf])  # (b, T4, 2)
    wo = xp.matmul(xp.swapaxes(wu, 1, 2), o_A)  # (b, R2, 2) Σ_t W o
    for ax in range(2):
        stats["wsum_prior_offset_A"][:, ax] += xp.bincount(cls_full.ravel(), weights=wo[..., ax].ravel(), minlength=k_all)
    mu = ctx["centre_A"][cls_full]  # (b, R2, 2)
    o2 = (o_A ** 2).sum(-1)  # (b, T4)
    s_off = (omega * (mu ** 2).sum(-1)).sum() - 2.0 * (mu * wo).sum() + (wu.sum(axis=2) * o2).sum()
    stats["wsum_sigma2_offset_A2"] += s_off


# ----------------------------------------------------------------------------- fine pass: dense
def _dense_bytes(ctx: dict, n_rot: int) -> tuple[int, int]:
    """(per-particle, shared) temporary bytes of the dense fine pass over ``n_rot`` fine rotations."""
    setup = ctx["setup"]
    item = ctx["itemsize"]
    n_tf = setup.sampling.n_trans_fine
    jf, jc = setup.pix_fine.n, setup.pix_current.n
    likelihood = n_tf * (5 * item * jf + (item + 8) * n_rot)       # shifted images, cross, ln w
    weights = n_tf * n_rot * (8 * 3 + 2 + item)                    # w, sorted copy, cumsum, masks, W
    statistics = n_tf * (item * n_rot + 14 * item * jc)            # W, shifted images, Σ_r W conj(P)
    shared = n_rot * (jf + jc) * item * 8                          # projections and their copies
    return max(likelihood, weights, statistics) + 1, shared


def _fine_dense_all(order: np.ndarray, ch: _Chunk, ctx: dict, stats: dict, res: dict, batch: ParticleBatch) -> None:
    """Dense fine passes over sub-chunks of ``order`` (host indices into the chunk) sized from the budget."""
    xp = ctx["xp"]
    samp = ctx["setup"].sampling
    ka = ctx["active"].size
    per, shared = _dense_bytes(ctx, ka * samp.n_psi_fine)
    cnt = max(1, int((ctx["budget"] - shared) // per))
    # particles with the same involved classes together: a sub-chunk evaluates the union
    cls_set = to_host(ch.sig[xp.asarray(order)].any(axis=(2, 3)))  # (n, Ka)
    order = order[np.lexsort(cls_set.T[::-1])]
    if ctx["n_halves"] == 2:
        # pseudo-halves contiguous within a sub-chunk: one GEMM per half
        half = to_host(xp.asarray(batch.part_index[ch.sel[xp.asarray(order)]])) % 2
        order = order[np.argsort(half, kind="stable")]
    for s in range(0, order.size, cnt):
        _fine_dense(xp.asarray(order[s: s + cnt]), ch, ctx, stats, res, batch)


def _fine_dense(sub: Any, ch: _Chunk, ctx: dict, stats: dict, res: dict, batch: ParticleBatch) -> None:
    """Fine pass of particles ``sub`` over all fine psis of the involved classes × all fine
    translations (the coarse pass's two GEMMs at the fine size), masked to the children of
    the significant coarse samples; statistics as GEMMs over (particle, translation)."""
    xp, fdt, cdt = ctx["xp"], ctx["fdt"], ctx["cdt"]
    settings, setup = ctx["settings"], ctx["setup"]
    samp = setup.sampling
    n_psi_c, n_tc = samp.n_psi_coarse, samp.n_trans_coarse
    n_op, n_ot = samp.n_over_psi, samp.n_over_trans
    n_psi_f, n_tf = samp.n_psi_fine, samp.n_trans_fine
    pcur = setup.pix_current
    k_all = ctx["model"].n_classes
    b = int(sub.shape[0])
    bi = xp.arange(b)
    sig_s = ch.sig[sub]  # (b, Ka, Ψc, Tc)
    used = xp.flatnonzero(sig_s.any(axis=(0, 2, 3)))  # involved active classes
    kd = int(used.shape[0])
    n_r = kd * n_psi_f
    cls_full = ctx["active_x"][used]
    ref_rows = (cls_full[:, None] * n_psi_f + xp.arange(n_psi_f)[None, :]).ravel()  # (R,) class -> fine psi
    p_f = _reference_rows(ctx, ref_rows, "fine")
    sig_t = sig_s[:, used].transpose(0, 3, 1, 2)  # (b, Tc, Kd, Ψc)
    shape6 = (b, n_tc, n_ot, kd, n_psi_c, n_op)  # fine translation = (tc, it), fine rotation = (k, ψc, io)

    # ---------------- likelihood: cross and power terms as two GEMMs
    xs, as_, ws = ch.x[sub], ch.a[sub], ch.w[sub]
    lhs = _ri((ws * as_ * xs)[:, None, :] * ctx["phi_f"][None, :, :]).reshape(b * n_tf, -1)
    cross = lhs @ _ri(p_f).T  # (b·Tf, R)
    del lhs
    logw = cross.astype(xp.float64, copy=False).reshape(shape6)
    del cross
    logw *= 2.0
    power = ((ws * as_ * as_) @ _power(p_f).T).astype(xp.float64)  # (b, R)
    logw -= power.reshape(b, 1, 1, kd, n_psi_c, n_op)
    logw -= (ch.x2[sub] + ch.prep.xi2_high[sub] / 2.0)[:, None, None, None, None, None]
    lp_cls = ctx["log_pdf_dir"][used]  # (Kd,)
    lp_o = ch.lp_off[sub][:, used, :].transpose(0, 2, 1)  # (b, Tc, Kd)
    # priors divided by their mean over the evaluated samples (children per coarse sample cancel)
    n_kt = sig_t.sum(axis=3).astype(xp.float64)  # (b, Tc, Kd)
    cnt = xp.maximum(n_kt.sum(axis=(1, 2)), 1.0)
    mean_c = (n_kt.sum(axis=1) * xp.exp(lp_cls)[None, :]).sum(axis=1) / cnt
    mean_o = (n_kt * xp.exp(lp_o)).sum(axis=(1, 2)) / cnt
    lp_b = lp_o - (xp.log(xp.maximum(mean_c, 1e-300)) + xp.log(xp.maximum(mean_o, 1e-300)))[:, None, None]
    lp_b = lp_b[:, :, :, None]  # (b, Tc, Kd, 1)
    # samples that are not children of significant coarse ones get ln w = -inf (weight 0)
    lp_b = xp.where(sig_t, lp_b + lp_cls[None, None, :, None], -np.inf)[:, :, :, :, None]  # (b, Tc, Kd, Ψc, 1)
    logw += lp_b[:, :, None, :, :, :]
    flat = logw.reshape(b, -1)  # (b, Tf·R): translation -> rotation
    del logw
    m1 = flat.max(axis=1)
    flat -= m1[:, None]
    xp.exp(flat, out=flat)
    tot1 = flat.sum(axis=1)
    lse = m1 + xp.log(tot1)
    if samp.oversampling == 0:
        # single pass: normalise by the pass-0 total and keep every significant sample
        lse = ch.m0[sub] + xp.log(ch.tot0[sub])
        flat *= xp.exp(m1 - lse)[:, None]
    else:
        flat /= tot1[:, None]
        thr1, _ = _threshold(xp.sort(flat, axis=1)[:, ::-1], xp.ones(b), settings.adaptive_fraction, -1)
        # weights below the threshold are not used; non-children are 0 already
        flat *= flat >= thr1[:, None]
    dll = lse - ch.sum_log_s2[sub]
    best = xp.argmax(flat, axis=1)
    pmax = flat[bi, best]
    t_best = best // n_r
    r_best = best % n_r
    _store_results(sub, ch, ctx, res, cls_full[r_best // n_psi_f], r_best % n_psi_f,
                   setup.trans_fine_px[t_best], dll, pmax)
    wts = flat.astype(fdt, copy=False).reshape(b * n_tf, n_r)  # used weights, (b·Tf, R)
    del flat

    # ---------------- sufficient statistics on the current-size pixel set
    if pcur.size == setup.pix_fine.size:
        p_cur, phi = p_f, ctx["phi_f"]
    else:
        p_cur, phi = _reference_rows(ctx, ref_rows, "current"), ctx["phi_cur"]
    jc = pcur.n
    omega = wts.reshape(b, n_tf, n_r).sum(axis=1, dtype=xp.float64)  # (b, R)
    wtot = omega.sum(axis=1)
    pt = _PixelTerms.of(sub, ch, ctx)
    # back-projection: Σ_{particle, t} W φ_t (CTF·s/σ²) X as one GEMM per pseudo-half
    cx = pt.coef_data * pt.xn  # (b, J)
    halves = (to_host(xp.asarray(batch.part_index[ch.sel[sub]], dtype=xp.int64)) % 2 if ctx["n_halves"] == 2
              else np.zeros(b, dtype=np.int64))
    for h in np.unique(halves):
        lo, hi = np.searchsorted(halves, h), np.searchsorted(halves, h, side="right")  # contiguous by construction
        y = _ri(cx[lo:hi, None, :] * phi[None, :, :]).reshape((hi - lo) * n_tf, 2 * jc)
        data = (wts[lo * n_tf: hi * n_tf].T @ y).view(cdt)  # (R, J)
        del y
        bw = omega[lo:hi].T.astype(fdt) @ pt.coef_w[lo:hi]  # (R, J)
        if ctx["accumulate_residual"]:
            data = data - bw * p_cur  # (CTF·s/σ²)·(X − CTF·s·P): the P part is weight·P
        row_id = int(h) * k_all * n_psi_f + ref_rows  # unique rows
        stats["bp_data"][row_id] += data
        stats["bp_weight"][row_id] += bw

    # noise, norm, scale: Σ_r W conj(P_r) per (particle, t) as one GEMM, then Σ_t φ_t·(...)
    conj_p = xp.conj(p_cur)  # (R, J)
    pw = _power(p_cur).astype(xp.float64)
    if settings.do_scale:
        # the scale sums only need pixels in shells where some involved class has SSNR > 3
        msk = ctx["ssnr_mask"][cls_full][:, pcur.shell]  # (Kd, J)
        jm = xp.flatnonzero(msk.any(axis=0))
        msk = xp.repeat(msk[:, jm], n_psi_f, axis=0)  # (R, Jm)
        conj_p = xp.concatenate([conj_p, conj_p[:, jm] * msk], axis=1)  # (R, J + Jm)
    q = (wts @ _ri(conj_p)).view(cdt).reshape(b, n_tf, -1)  # (b, Tf, J [+ Jm]) Σ_r W conj(P_r)
    del conj_p
    cross_pix = xp.einsum("tj,btj->bj", phi, q[..., :jc])  # Σ_r conj(P_r) G_r
    pp = omega @ pw  # (b, J)
    xa = aa = None
    if settings.do_scale:
        cr = pt.ctf_ref[:, jm].astype(xp.float64)
        cross_m = xp.einsum("tj,btj->bj", phi[:, jm], q[..., jc:])
        xa = (cr * (pt.xm[:, jm] * cross_m).real).sum(axis=1)
        aa = (cr * cr * (omega @ (msk * pw[:, jm]))).sum(axis=1)
    del q
    _store_pixel_stats(sub, ch, ctx, stats, pt, wtot, cross_pix, pp, xa, aa)

    # class, offsets
    wk = wts.reshape(b, n_tf, kd, n_psi_f).sum(axis=3, dtype=xp.float64)  # (b, Tf, Kd)
    omega_k = wk.sum(axis=1)  # (b, Kd)
    stats["wsum_pdf_class"][cls_full] += omega_k.sum(axis=0)
    off_round = ch.prep.offset_round[sub].astype(xp.float64)
    o_A = ctx["px_A"] * (off_round[:, None, :] + setup.trans_fine_px[None, :, :])  # (b, Tf, 2)
    wo = xp.matmul(xp.swapaxes(wk, 1, 2), o_A)  # (b, Kd, 2) Σ_t W o
    stats["wsum_prior_offset_A"][cls_full] += wo.sum(axis=0)
    mu = ctx["centre_A"][cls_full]  # (Kd, 2)
    s_off = ((omega_k * (mu ** 2).sum(-1)[None, :]).sum() - 2.0 * (mu[None] * wo).sum()
             + (wk.sum(axis=2) * (o_A ** 2).sum(-1)).sum())
    stats["wsum_sigma2_offset_A2"] += s_off


# ----------------------------------------------------------------------------- shared bookkeeping
@dataclass(frozen=True)
class _PixelTerms:
    """Per-particle terms on the current-size pixels used by the statistics."""

    xm: Any         # (b, J) masked transform
    xn: Any         # (b, J) unmasked transform
    ctf_ref: Any    # (b, J)
    a_ref: Any      # (b, J) float64 s·CTF
    coef_data: Any  # (b, J) s·CTF/σ² applied to the data
    coef_w: Any     # (b, J) s²·CTF²/σ²

    @staticmethod
    def of(sub: Any, ch: _Chunk, ctx: dict) -> "_PixelTerms":
        xp, fdt = ctx["xp"], ctx["fdt"]
        pcur = ctx["setup"].pix_current
        prep = ch.prep
        flat_c = pcur.flat
        s_b = prep.scale[sub][:, None]
        ctf_ref = prep.ctf_ref[sub][:, flat_c]
        s2c = prep.sigma2[sub][:, pcur.shell]
        inv_s2 = xp.where(s2c > 0, 1.0 / xp.where(s2c > 0, s2c, 1.0), 0.0)
        return _PixelTerms(
            xm=prep.xm[sub][:, flat_c], xn=prep.xn[sub][:, flat_c], ctf_ref=ctf_ref,
            a_ref=(s_b * ctf_ref).astype(xp.float64),
            coef_data=(s_b * prep.ctf_bp[sub][:, flat_c] * inv_s2).astype(fdt),
            coef_w=(s_b * s_b * prep.ctf_w[sub][:, flat_c] * inv_s2).astype(fdt))


def _store_results(sub, ch: _Chunk, ctx: dict, res: dict, cls_best: Any, psi_f_best: Any, t_best_px: Any,
                   dll: Any, pmax: Any) -> None:
    """Per-particle results of the fine pass (best class, fine psi, absolute offset, dLL, Pmax)."""
    xp = ctx["xp"]
    gsel = ch.sel[sub]
    res["class_index"][gsel] = cls_best
    res["psi_deg"][gsel] = ctx["setup"].psi_fine_deg[psi_f_best]
    res["origin_px"][gsel] = ch.prep.offset_round[sub].astype(xp.float64) + t_best_px
    res["dll"][gsel] = dll
    res["pmax"][gsel] = pmax
    res["n_significant"][gsel] = ch.n_sig[sub]


def _store_pixel_stats(sub, ch: _Chunk, ctx: dict, stats: dict, pt: _PixelTerms, wtot: Any, cross_pix: Any,
                       pp: Any, xa: Any, aa: Any) -> None:
    """Noise spectrum, norm correction, scale and counters from the per-pixel sums.

    cross_pix = Σ_{r,t} W conj(P_r) φ_t, pp = Σ_{r,t} W |P_r|²; per pixel the noise is
    Σ_{t,r} W |Xm φ_t − a P_r|² = wtot|Xm|² − 2a Re(Xm·cross_pix) + a² pp (origin included).
    """
    xp = ctx["xp"]
    model, settings, setup = ctx["model"], ctx["settings"], ctx["setup"]
    batch_gsel = ch.sel[sub]
    nsh = model.box // 2 + 1
    pcur = setup.pix_current
    xm2 = _power(pt.xm).astype(xp.float64)
    noise_pix = wtot[:, None] * xm2 - 2.0 * pt.a_ref * (pt.xm * cross_pix).real + pt.a_ref * pt.a_ref * pp
    optics = ctx["optics"][batch_gsel]
    n_optics = stats["sumw_optics"].shape[0]
    idx = (optics[:, None] * nsh + pcur.shell[None, :]).ravel()
    stats["wsum_sigma2_noise"] += xp.bincount(idx, weights=noise_pix.ravel(), minlength=n_optics * nsh).reshape(n_optics, nsh)
    cur_half = setup.current_size // 2
    high = ch.prep.spectrum[sub].copy()
    high[:, : cur_half + 1] = 0.0
    stats["wsum_sigma2_noise"] += xp.stack([high[optics == g_].sum(axis=0) for g_ in range(n_optics)])
    stats["sumw_optics"] += xp.bincount(optics, weights=wtot, minlength=n_optics)
    e = noise_pix.sum(axis=1) + high.sum(axis=1)
    norm_old = ctx["norm_correction"][batch_gsel]
    if settings.do_norm:
        new_norm = norm_old / model.avg_norm_correction * xp.sqrt(2.0 * e)
    else:
        new_norm = norm_old
    ctx["res"]["norm_correction"][batch_gsel] = new_norm
    stats["sum_norm_correction"] += new_norm.sum()
    groups = ctx["groups"][batch_gsel]
    n_groups = stats["scale_xa"].shape[0]
    stats["n_particles_group"] += xp.bincount(groups, minlength=n_groups).astype(xp.float64)
    if xa is not None:
        stats["scale_xa"] += xp.bincount(groups, weights=xa, minlength=n_groups)
        stats["scale_aa"] += xp.bincount(groups, weights=aa, minlength=n_groups)
    dll = ctx["res"]["dll"][batch_gsel]
    stats["log_likelihood"] += dll.sum()
    stats["sum_pmax"] += ctx["res"]["pmax"][batch_gsel].sum()
