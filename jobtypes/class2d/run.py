"""The Class2D run: initialise (or continue), iterate E-step and M-step, write RELION's files.

Order of one EM iteration follows RELION's ``MlOptimiser::iterate`` (facts 1.1): random
perturbation of the sampling, image sizes from the current resolution, E-step over all
particles, M-step, centre-of-mass re-centring (``do_center``), ``run_unmasked_classes.mrcs``,
solvent flattening, resolution update, write. Iteration 0 writes the initial model.

Deliberate differences from RELION, each for reproducibility or correctness:

* The psi grid is never rounded up to a multiple of 32 on a GPU (RELION does with
  accelerators), so CPU and GPU runs search the same grid and agree.
* On continue, the E-step class prior is the stored class distribution (RELION resets it
  to flat for the first continued iteration), so a continued run reproduces an
  uninterrupted one.
* Particles are not reshuffled per EM iteration (the order does not change an EM result).
* ``run_it000_sampling.star`` is written (RELION's MPI version does, its sequential one not).

Example (what ``emclass2d run emclass2d.class2d ...`` calls)::

    run_class2d(ctx)        # ctx.options is a Class2DOptions
"""
from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from emclass2d.core.accuracy import N_PARTICLES as N_ACCURACY_PARTICLES
from emclass2d.core.accuracy import expected_accuracies, trial_poses
from emclass2d.core.backend import get_xp, gpu_available, parse_gpu_ids, to_device, to_host
from emclass2d.core.center import center_classes
from emclass2d.core.ctf import compute_ctf
from emclass2d.core.fourier import frequency_grid
from emclass2d.core.initial import (NoiseSums, ReferenceSums, add_noise_sums, add_reference_sums, blob_references,
                                    check_background_normalisation, first_particles_per_group, initial_ssnr,
                                    initial_tau2, rotated_defocus_angle, sigma2_noise_from_sums, stage2_references)
from emclass2d.core.mask import solvent_flatten
from emclass2d.core.model import Model, Settings
from emclass2d.core.mstep import maximization
from emclass2d.core.resolution import default_ini_high_A, image_sizes, initial_resolution, update_current_resolution
from emclass2d.core.sampling import Sampling, make_sampling, perturbation_for_iteration, with_perturbation
from emclass2d.jobtypes.running.streams import format_duration
from emclass2d.jobtypes.base import JobFailed, RunContext
from emclass2d.jobtypes.class2d.particle_stream import ParticleStream, ParticleResultsHost, move_to
from emclass2d.jobtypes.class2d.options import Class2DOptions
from emclass2d.jobtypes.class2d.outputs import IterationFiles, write_iteration
from emclass2d.jobtypes.reports.convergence import write_convergence_plot
from emclass2d.nodes.files import class2d as c2f
from emclass2d.nodes.graph import labels as L
from emclass2d.nodes.io.images import ImageReadError
from emclass2d.nodes.io.mrc import write_mrcs
from emclass2d.nodes.io.particles import ParticleTable, image_source_for, resolve_in_project
from emclass2d.nodes.io.star import StarFileError

#: RELION's initial sigma of the offset prior (``--offset`` 10 Å).
INITIAL_SIGMA_OFFSET_A = 10.0
#: Width of the soft edge of particle masks (RELION ``--maskedge``), pixels.
WIDTH_MASK_EDGE_PX = 5


@dataclass
class RunState:
    """What the loop carries from one iteration to the next (host copies where it matters)."""

    model: Model
    table: ParticleTable
    sampling: Sampling
    settings: Settings
    root: str
    start_iteration: int
    random_seed: int
    allow_coarser: bool = False  #: RELION --allow_coarser_sampling
    history: list[dict[str, Any]] = field(default_factory=list)
    smallest_changes: dict[str, float] = field(default_factory=lambda: {
        "orient": 999.0, "offsets": 999.0, "classes": 9999999.0})


# ----------------------------------------------------------------------------- entry point
def run_class2d(ctx: RunContext) -> None:
    """Run (or continue) a Class2D job in ``ctx.job_dir`` (see module docstring)."""
    opts = ctx.options
    assert isinstance(opts, Class2DOptions)
    _configure_threads(opts.nr_threads)
    devices = select_devices(opts)
    ctx.log(f"Compute devices: {', '.join(devices)}")
    if opts.do_queue:
        ctx.warn("WARNING: Submit to queue? is Yes, but queue submission is not available: the job runs here")
    try:
        state = continue_state(ctx, opts) if ctx.is_continue else new_state(ctx, opts, devices)
    except (StarFileError, ImageReadError, ValueError) as exc:
        raise JobFailed(str(exc)) from exc
    if opts.do_grad:
        from emclass2d.jobtypes.class2d.vdam_loop import run_vdam  # noqa: PLC0415

        run_vdam(ctx, opts, state, devices)
    else:
        run_em(ctx, opts, state, devices)


def _configure_threads(nr_threads: int) -> None:
    """Limit BLAS/FFT threads to ``nr_threads`` (RELION ``--j``)."""
    try:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415

        threadpool_limits(int(nr_threads))
    except Exception:  # threadpoolctl absent: leave the BLAS default
        pass
    try:
        import scipy.fft  # noqa: PLC0415

        scipy.fft.set_workers(int(nr_threads))  # type: ignore[attr-defined]
    except Exception:
        pass


def select_devices(opts: Class2DOptions) -> list[str]:
    """``["cpu"]`` or the GPUs named by ``gpu_ids`` (RELION syntax; empty = all visible)."""
    if not opts.use_gpu:
        return ["cpu"]
    if not gpu_available():
        raise JobFailed("Use GPU acceleration? is Yes but no CUDA device is usable here "
                        "(install emclass2d[gpu] on a machine with an NVIDIA GPU, or set use_gpu No)")
    ids = parse_gpu_ids(opts.gpu_ids)
    if not ids:
        raise JobFailed(f"Which GPUs to use: '{opts.gpu_ids}' selects no device")
    return [f"gpu:{i}" for i in ids]


# ----------------------------------------------------------------------------- new runs
def resolve_seed(seed: int) -> int:
    """RELION's -1 = seed from the clock; the value used is written to the optimiser.star."""
    return int(time.time()) % 2_000_000_000 if seed < 0 else int(seed)


def make_settings(opts: Class2DOptions, box: int, pixel_size_A: float, n_groups: int, seed: int) -> Settings:
    """Core switches from the job options (GUI: --norm --scale --flatten_solvent always on)."""
    return Settings(
        tau2_fudge=float(opts.tau_fudge), do_ctf=bool(opts.do_ctf_correction),
        ctf_intact_first_peak=bool(opts.ctf_intact_first_peak), do_norm=True, do_scale=n_groups > 1,
        zero_mask=bool(opts.do_zero_mask), particle_diameter_A=float(opts.particle_diameter),
        width_mask_edge_px=WIDTH_MASK_EDGE_PX, strict_highres_exp_A=float(opts.highres_limit),
        random_seed=int(seed))


def make_base_sampling(opts: Class2DOptions) -> Sampling:
    """RELION GUI: coarse psi step = 2 × fine, coarse offset step = 2 × fine, oversampling 1."""
    factor = 2 ** int(opts.oversampling)
    if not opts.dont_skip_align:
        return make_sampling(360.0, 0.0, 0.0, oversampling=0)
    return make_sampling(float(opts.psi_sampling) * factor, float(opts.offset_range),
                         float(opts.offset_step) * factor, oversampling=int(opts.oversampling))


def _read_particles(ctx: RunContext, fn_img: str) -> ParticleTable:
    if not fn_img:
        raise JobFailed("fn_img (Input images STAR file) is empty: give a particles.star")
    path = resolve_in_project(fn_img, ctx.project_dir)
    if not path.is_file():
        raise JobFailed(f"Input images STAR file {fn_img} not found")
    return ParticleTable.read(path)


def new_state(ctx: RunContext, opts: Class2DOptions, devices: list[str]) -> RunState:
    """Read particles, estimate the initial noise and build blob references (RELION 4+)."""
    table = _read_particles(ctx, opts.fn_img)
    if opts.do_ctf_correction:
        table.check_ctf_labels()
    for msg in table.warn_small_groups(10):
        ctx.warn(f"WARNING: {msg}")
    seed = resolve_seed(opts.random_seed)
    n, px = table.box_size, table.pixel_size_A
    diameter_A = float(opts.particle_diameter)
    if diameter_A > n * px:
        ctx.warn(f"WARNING: Mask diameter ({diameter_A:g} Å) is larger than the box ({n} px × {px:g} Å = {n * px:g} Å)")
    settings = make_settings(opts, n, px, table.n_groups, seed)
    images = image_source_for(table, ctx.project_dir)
    k = int(opts.nr_classes)
    ctx.log(f"Particles: {table.n_particles} ({n} px, {px:g} Å/px, {table.n_groups} scale groups, "
            f"{table.n_optics_groups} optics groups); classes: {k}; random seed: {seed}")
    xp = get_xp(devices[0])
    radius_px = diameter_A / (2 * px)

    # Initial noise spectra and stage-1 references from the first particles per optics group.
    first = first_particles_per_group(table.optics_index)
    noise = NoiseSums.zeros(n, table.n_optics_groups, xp=xp)
    refs = ReferenceSums.zeros(n, k, xp=xp)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    X, Y = frequency_grid(n, px, xp)
    warned = False
    ctx.progress(0, len(first), "initial noise and references")
    for start in range(0, len(first), 256):
        ctx.check_abort()
        idx = first[start:start + 256]
        imgs = to_device(images.read(idx), devices[0])
        if not warned:
            msg = check_background_normalisation(to_host(imgs), radius_px, first_index=int(idx[0]))
            if msg:
                ctx.warn(f"WARNING: {msg}")
                warned = True
        noise = add_noise_sums(noise, imgs, xp.asarray(table.optics_index[idx]),
                               radius_px=radius_px if opts.do_zero_mask else None, edge_px=WIDTH_MASK_EDGE_PX)
        psi = rng.uniform(0.0, 360.0, size=len(idx))
        ctf = None
        if opts.do_ctf_correction:
            c = table.ctf_parameters(idx)
            ctf = compute_ctf(X, Y, c["defocus_u_A"], c["defocus_v_A"],
                              rotated_defocus_angle(c["defocus_angle_deg"], psi), c["voltage_kV"], c["cs_mm"],
                              c["amplitude_contrast"], c["phase_shift_deg"], c["ctf_bfactor_A2"], c["ctf_scale"],
                              intact_first_peak=opts.ctf_intact_first_peak)
        refs = add_reference_sums(refs, imgs, ctf, xp.asarray(idx % k), xp.asarray(psi))
        ctx.progress(min(start + 256, len(first)), len(first), "initial noise and references")
    sigma2 = sigma2_noise_from_sums(noise)
    ini_high = default_ini_high_A(n, px)
    stage2 = stage2_references(refs, ini_high, px)
    references = blob_references(stage2, diameter_A / px, WIDTH_MASK_EDGE_PX, ini_high, px, seed)

    model = Model.empty(n_classes=k, box=n, pixel_size_A=px, n_optics=table.n_optics_groups,
                        n_groups=table.n_groups, xp=xp, tau2_fudge=settings.tau2_fudge,
                        sigma2_offset_A2=INITIAL_SIGMA_OFFSET_A ** 2)
    tau2 = initial_tau2(references, settings.tau2_fudge)
    ssnr = initial_ssnr(tau2, sigma2, table.n_particles, model.pdf_class,
                        group_counts=np.bincount(table.optics_index, minlength=table.n_optics_groups))
    sampling = make_base_sampling(opts)
    cur_res = initial_resolution(n, px, ini_high)
    cur, coarse = image_sizes(cur_res, n, px, settings.incr_size, sampling.psi_step_deg, diameter_A,
                              sampling.oversampling, settings.strict_highres_exp_A)
    model = replace(model, references=xp.asarray(references, dtype=xp.float32), sigma2_noise=xp.asarray(sigma2),
                    tau2=xp.asarray(tau2), data_vs_prior=xp.asarray(ssnr), current_resolution=cur_res,
                    current_size=cur, coarse_size=coarse)
    root = f"{ctx.job_dir}run"
    state = RunState(model=move_to(model, "cpu"), table=table, sampling=sampling, settings=settings, root=root,
                     start_iteration=1, random_seed=seed, allow_coarser=bool(opts.allow_coarser))
    _write(ctx, opts, state, 0, write_sampling=True)
    return state


# ----------------------------------------------------------------------------- continue
def continue_state(ctx: RunContext, opts: Class2DOptions) -> RunState:
    """State from ``fn_cont`` (a run_itNNN_optimiser.star); restarts at NNN+1 (facts 1.10)."""
    if not opts.fn_cont:
        raise JobFailed("Continue needs fn_cont: the run_itNNN_optimiser.star to continue from")
    name = Path(opts.fn_cont).name
    if "_it" not in name or not name.endswith("_optimiser.star"):
        raise JobFailed(f"fn_cont {opts.fn_cont}: expected a run_itNNN_optimiser.star file")
    it = c2f.read_class2d_iteration(opts.fn_cont, ctx.project_dir)
    g = it.optimiser.general
    if int(it.model.general.get("rlnReferenceDimensionality", 2)) != 2:
        raise JobFailed(f"{opts.fn_cont}: not a 2D classification (rlnReferenceDimensionality "
                        f"{it.model.general.get('rlnReferenceDimensionality')})")
    table = it.data
    refs, _ = it.read_class_images()
    n = int(it.model.general["rlnOriginalImageSize"])
    px = float(it.model.general["rlnPixelSize"])
    k = it.model.n_classes
    seed = int(g.get("rlnRandomSeed", 0))
    settings = Settings(
        tau2_fudge=float(opts.tau_fudge), do_ctf=bool(g.get("rlnDoCorrectCtf", True)),
        ctf_intact_first_peak=bool(g.get("rlnDoIgnoreCtfUntilFirstPeak", False)),
        ctf_phase_flipped=bool(g.get("rlnCtfDataArePhaseFlipped", False)),
        do_norm=bool(g.get("rlnDoCorrectNorm", True)), do_scale=bool(g.get("rlnDoCorrectScale", True)) and table.n_groups > 1,
        zero_mask=bool(g.get("rlnDoZeroMask", True)), particle_diameter_A=float(opts.particle_diameter),
        width_mask_edge_px=float(g.get("rlnWidthMaskEdge", WIDTH_MASK_EDGE_PX)),
        adaptive_fraction=float(g.get("rlnAdaptiveOversampleFraction", 0.999)),
        strict_highres_exp_A=float(g.get("rlnHighresLimitExpectation", -1.0)),
        random_seed=seed)
    classes = it.model.classes
    pdf = classes["rlnClassDistribution"].to_numpy(dtype=np.float64)
    prior = np.stack([classes["rlnClassPriorOffsetX"].to_numpy(dtype=np.float64),
                      classes["rlnClassPriorOffsetY"].to_numpy(dtype=np.float64)], axis=1)
    prior_A = np.where(pdf[:, None] > 0, prior / np.where(pdf > 0, pdf, 1.0)[:, None], 0.0)
    spectra = it.model.class_spectra
    nsh = n // 2 + 1

    def spectrum(label: str) -> np.ndarray:
        out = np.zeros((k, nsh))
        for i, t in enumerate(spectra):
            v = t[label].to_numpy(dtype=np.float64)
            out[i, : min(nsh, v.size)] = v[:nsh]
        return out

    n_optics = max(len(it.model.optics_noise), 1)
    sigma2 = np.zeros((n_optics, nsh))
    for gi, t in enumerate(it.model.optics_noise):
        sigma2[gi, t["rlnSpectralIndex"].to_numpy(dtype=np.int64)] = t["rlnSigma2Noise"].to_numpy(dtype=np.float64)
    groups = it.model.groups
    scale = np.ones(table.n_groups)
    if groups is not None and len(groups) == table.n_groups:
        scale = groups["rlnGroupScaleCorrection"].to_numpy(dtype=np.float64)
    cur_res_A = float(it.model.general["rlnCurrentResolution"])
    sampling = make_base_sampling(opts)
    model = Model.empty(n_classes=k, box=n, pixel_size_A=px, n_optics=n_optics, n_groups=table.n_groups,
                        tau2_fudge=settings.tau2_fudge)
    model = replace(
        model, references=np.asarray(refs, dtype=np.float32), pdf_class=pdf / max(pdf.sum(), 1e-30),
        pdf_direction=pdf / max(pdf.sum(), 1e-30), prior_offset_A=prior_A,
        sigma2_offset_A2=float(it.model.general.get("rlnSigmaOffsetsAngst", INITIAL_SIGMA_OFFSET_A)) ** 2,
        sigma2_noise=sigma2, tau2=spectrum("rlnReferenceTau2"), data_vs_prior=spectrum("rlnSsnrMap"),
        sigma2_ref=spectrum("rlnReferenceSigma2"), fourier_completeness=spectrum("rlnFourierCompleteness"),
        overall_completeness=classes["rlnOverallFourierCompleteness"].to_numpy(dtype=np.float64),
        estimated_resolution_A=classes["rlnEstimatedResolution"].to_numpy(dtype=np.float64),
        accuracy_rot_deg=classes["rlnAccuracyRotations"].to_numpy(dtype=np.float64),
        accuracy_trans_A=classes["rlnAccuracyTranslationsAngst"].to_numpy(dtype=np.float64),
        scale=scale, avg_norm_correction=float(it.model.general.get("rlnNormCorrectionAverage", 1.0)),
        current_resolution=1.0 / cur_res_A if cur_res_A > 0 else 0.0,
        current_size=int(it.model.general.get("rlnCurrentImageSize", n)),
        log_likelihood=float(it.model.general.get("rlnLogLikelihood", 0.0)),
        ave_pmax=float(it.model.general.get("rlnAveragePmax", 0.0)))
    root = c2f.continue_root(it.output_root, it.iteration)
    ctx.log(f"Continuing from {opts.fn_cont} (iteration {it.iteration}); new files are {root}_itNNN_*")
    state = RunState(model=model, table=table, sampling=sampling, settings=settings, root=root,
                     start_iteration=it.iteration + 1, random_seed=seed, allow_coarser=bool(opts.allow_coarser))
    _write(ctx, opts, state, it.iteration, write_sampling=True)
    return state


# ----------------------------------------------------------------------------- EM loop
def run_em(ctx: RunContext, opts: Class2DOptions, state: RunState, devices: list[str]) -> None:
    """EM iterations ``state.start_iteration … nr_iter_em`` (RELION ``MlOptimiser::iterate``)."""
    table, settings = state.table, state.settings
    stream = make_particle_stream(ctx, opts, table, devices)
    nr_iter = int(opts.nr_iter_em)
    if state.start_iteration > nr_iter:
        raise JobFailed(f"Number of EM iterations ({nr_iter}) must exceed the iteration continued from "
                        f"({state.start_iteration - 1}); it counts the total, not additional iterations")
    all_particles = np.arange(table.n_particles)
    t_start = time.monotonic()
    for it in range(state.start_iteration, nr_iter + 1):
        t0 = time.monotonic()
        ctx.check_abort()
        model, sampling = _iteration_setup(state, opts, it)
        stats, results, setup = stream.expectation(model, settings, sampling, it, all_particles)
        model = move_to(maximization(move_to(model, devices[0]), stats, setup.tau2, settings), "cpu")
        model = _after_maximization(ctx, opts, state, model, it, write_unmasked=True)
        model = estimate_accuracies(state, model, it, devices[0])
        summary = _update_particles(state, results, model)
        state.model = model
        _write(ctx, opts, state, it, write_sampling=True)
        elapsed, eta = record_iteration(state, summary, it, nr_iter, t0, t_start)
        ctx.log(f"Iteration {it:3d}/{nr_iter}: resolution {summary['resolution_A']:.2f} Å, "
                f"class changes {100 * summary['changes_classes']:.1f}%, offsets {summary['changes_offsets_A']:.2f} Å, "
                f"psi {summary['changes_psi_deg']:.2f}°, {elapsed:.1f} s (ETA {format_duration(eta)})")
        ctx.iteration_done(it, summary)
    finish(ctx, opts, state, nr_iter)


def record_iteration(state: RunState, summary: dict[str, Any], it: int, nr_iter: int, t0: float, t_start: float,
                     **extra: Any) -> tuple[float, float]:
    """Complete ``summary`` (resolution, class distribution, time) and add it to the history.

    Returns (seconds of this iteration, estimated seconds left).
    """
    model = state.model
    elapsed = time.monotonic() - t0
    eta = (time.monotonic() - t_start) / (it - state.start_iteration + 1) * (nr_iter - it)
    summary.update(iteration=it, resolution_A=1.0 / model.current_resolution if model.current_resolution > 0 else 999.0,
                   class_distribution=to_host(model.pdf_class).tolist(), seconds=elapsed, **extra)
    state.history.append(summary)
    return elapsed, eta


def make_particle_stream(ctx: RunContext, opts: Class2DOptions, table: ParticleTable, devices: list[str]) -> ParticleStream:
    """The particle streamer with the batch size from the options (0 = from the memory budget)."""
    n = table.box_size
    budget = int(opts.memory_budget_mb * 1024 * 1024)
    batch = int(opts.batch_size) or int(min(2048, max(64, budget // max(64 * n * n * 4, 1))))
    images = image_source_for(table, ctx.project_dir)
    return ParticleStream(table, images, devices, batch, budget, with_ctf=bool(opts.do_ctf_correction),
                  preread=bool(opts.do_preread_images), check_abort=ctx.check_abort, progress=ctx.progress)


def _iteration_setup(state: RunState, opts: Class2DOptions, it: int) -> tuple[Model, Sampling]:
    """Perturbed sampling and image sizes of iteration ``it`` (reproducible from the seed)."""
    model, settings = state.model, state.settings
    sampling = with_perturbation(current_sampling(state), perturbation_for_iteration(state.random_seed, it))
    cur, coarse = image_sizes(model.current_resolution, model.box, model.pixel_size_A, settings.incr_size,
                              sampling.psi_step_deg, settings.diameter_A(model.box, model.pixel_size_A),
                              sampling.oversampling, settings.strict_highres_exp_A)
    return replace(model, current_size=cur, coarse_size=coarse, tau2_fudge=settings.tau2_fudge), sampling


def current_sampling(state: RunState) -> Sampling:
    """The sampling of the next iteration: as requested, or coarser with ``allow_coarser``.

    RELION's ``--allow_coarser_sampling`` (facts 2.13, K > 1): psi step = max(0.8 · best psi
    accuracy · 2^o, requested step); offset step = 0.8 · best translation accuracy · 2^o,
    at least the requested step and at most 0.95 × the offset range.
    """
    base, model = state.sampling, state.model
    if not state.allow_coarser or model.n_classes < 2 or base.offset_range_px <= 0:
        return base
    rot = np.asarray(to_host(model.accuracy_rot_deg), dtype=np.float64)
    trans_px = np.asarray(to_host(model.accuracy_trans_A), dtype=np.float64) / model.pixel_size_A
    known = rot < 999.0
    if not known.any():
        return base
    factor = 2 ** base.oversampling
    psi_step = max(0.8 * float(rot[known].min()) * factor, base.psi_step_deg)
    offset_step = min(max(0.8 * float(trans_px[known].min()) * factor, base.offset_step_px), 0.95 * base.offset_range_px)
    return make_sampling(psi_step, base.offset_range_px, offset_step, oversampling=base.oversampling,
                         perturb_factor=base.perturb_factor)


def _after_maximization(ctx: RunContext, opts: Class2DOptions, state: RunState, model: Model, it: int,
                        write_unmasked: bool, center: bool | None = None) -> Model:
    """Centring, unmasked classes, solvent flattening, resolution update (facts 2.9, 2.10)."""
    refs = np.asarray(to_host(model.references), dtype=np.float32)
    if opts.do_center if center is None else center:
        refs, _ = center_classes(refs, state.sampling.offset_range_px)
    if write_unmasked:
        write_mrcs(Path(ctx.project_dir) / f"{state.root.split('_ct', 1)[0]}_unmasked_classes.mrcs",
                   refs, model.pixel_size_A)
    diameter_A = state.settings.diameter_A(model.box, model.pixel_size_A)
    refs = solvent_flatten(refs, diameter_A / (2 * model.pixel_size_A), WIDTH_MASK_EDGE_PX)
    cur_res = update_current_resolution(model.data_vs_prior, model.box, model.pixel_size_A, state.settings.minres_map)
    return replace(model, references=refs.astype(np.float32), current_resolution=cur_res)


def estimate_accuracies(state: RunState, model: Model, it: int, device: str = "cpu") -> Model:
    """rlnAccuracyRotations/TranslationsAngst of ``model`` from the first particles (facts 2.13).

    Uses the CTFs, group scales and optics-group noise spectra of the first
    :data:`~emclass2d.core.accuracy.N_PARTICLES` particles of the table, at the model's
    current image size; poses are seeded by (random seed, iteration).
    """
    table, s = state.table, state.settings
    idx = np.arange(min(N_ACCURACY_PARTICLES, table.n_particles))
    if idx.size == 0:
        return model
    n, px = model.box, model.pixel_size_A
    xp = get_xp(device)
    ctf = None
    if s.do_ctf:
        c = table.ctf_parameters(idx)
        fx, fy = frequency_grid(n, px, xp)
        ctf = compute_ctf(fx, fy, xp.asarray(c["defocus_u_A"]), xp.asarray(c["defocus_v_A"]),
                          xp.asarray(c["defocus_angle_deg"]), xp.asarray(c["voltage_kV"]), xp.asarray(c["cs_mm"]),
                          xp.asarray(c["amplitude_contrast"]), xp.asarray(c["phase_shift_deg"]),
                          xp.asarray(c["ctf_bfactor_A2"]), xp.asarray(c["ctf_scale"]),
                          intact_first_peak=s.ctf_intact_first_peak, phase_flipped=s.ctf_phase_flipped)
        premult = xp.asarray(c["ctf_premultiplied"]).astype(bool)[:, None, None]
        ctf = xp.where(premult, ctf * ctf, ctf)
    sigma2 = np.asarray(to_host(model.sigma2_noise), dtype=np.float64)[table.optics_index[idx]] * s.sigma2_fudge
    scale = np.asarray(to_host(model.scale), dtype=np.float64)[table.group_index[idx]] if s.do_scale else None
    psi0, axis = trial_poses(idx.size, state.random_seed, it)
    acc = expected_accuracies(to_device(np.asarray(to_host(model.references)), device), to_host(model.pdf_class), ctf,
                              xp.asarray(sigma2), int(model.current_size), psi0, axis, px, scale=scale,
                              padding_factor=int(model.padding_factor))
    return replace(model, accuracy_rot_deg=acc.rot_deg, accuracy_trans_A=acc.trans_A)


def _wrap_deg(d: np.ndarray) -> np.ndarray:
    return (d + 180.0) % 360.0 - 180.0


def _update_particles(state: RunState, r: ParticleResultsHost, model: Model) -> dict[str, float]:
    """Write E-step results into the particle table; return RELION's change statistics."""
    table = state.table
    parts = table.particles
    idx = r.index
    px = model.pixel_size_A
    old_class = parts["rlnClassNumber"].to_numpy()[idx].astype(np.int64)
    old_psi = parts["rlnAnglePsi"].to_numpy(dtype=np.float64)[idx]
    old_off = np.stack([parts["rlnOriginXAngst"].to_numpy(dtype=np.float64)[idx],
                        parts["rlnOriginYAngst"].to_numpy(dtype=np.float64)[idx]], axis=1)
    new_class = r.class_index.astype(np.int64) + 1
    new_off = r.origin_px.astype(np.float64) * px
    had = old_class > 0
    n = max(len(idx), 1)
    changes_classes = float(np.count_nonzero(had & (old_class != new_class))) / n if had.any() else 1.0
    changes_psi = float(np.mean(np.abs(_wrap_deg(r.psi_deg - old_psi)))) if had.any() else 999.0
    changes_off = float(np.sqrt(np.sum((new_off - old_off) ** 2) / (2 * n))) if had.any() else 999.0
    table.set_column("rlnAnglePsi", r.psi_deg, idx)
    table.set_column("rlnOriginXAngst", new_off[:, 0], idx)
    table.set_column("rlnOriginYAngst", new_off[:, 1], idx)
    table.set_column("rlnClassNumber", new_class, idx, dtype=np.int64)
    table.set_column("rlnNormCorrection", r.norm_correction, idx)
    table.set_column("rlnLogLikeliContribution", r.dll, idx)
    table.set_column("rlnMaxValueProbDistribution", r.pmax, idx)
    table.set_column("rlnNrOfSignificantSamples", r.n_significant.astype(np.int64), idx, dtype=np.int64)
    sc = state.smallest_changes
    if had.any():
        sc["orient"] = min(sc["orient"], changes_psi)
        sc["offsets"] = min(sc["offsets"], changes_off)
        sc["classes"] = min(sc["classes"], float(round(changes_classes)))
    return {"changes_classes": changes_classes, "changes_psi_deg": changes_psi, "changes_offsets_A": changes_off}


# ----------------------------------------------------------------------------- writing
def optimiser_values(opts: Class2DOptions, state: RunState, it_changes: dict[str, float] | None = None,
                     vdam: dict[str, Any] | None = None) -> dict[str, Any]:
    """The optimiser_general labels that describe this run (RELION names and units)."""
    model, s = state.model, state.settings
    last = state.history[-1] if state.history else {}
    acc_rot = to_host(model.accuracy_rot_deg)
    acc_tr = to_host(model.accuracy_trans_A)
    px = model.pixel_size_A
    values: dict[str, Any] = dict(
        rlnNumberOfIterations=int(opts.nr_iter), rlnRandomSeed=int(state.random_seed),
        rlnAdaptiveOversampleOrder=int(state.sampling.oversampling),
        rlnAdaptiveOversampleFraction=float(s.adaptive_fraction),
        rlnParticleDiameter=float(s.diameter_A(model.box, px)), rlnWidthMaskEdge=int(s.width_mask_edge_px),
        rlnDoZeroMask=bool(s.zero_mask), rlnDoSolventFlattening=True,
        rlnHighresLimitExpectation=float(s.strict_highres_exp_A), rlnIncrementImageSize=int(s.incr_size),
        rlnDoGradientRefine=bool(opts.do_grad), rlnTau2FudgeArg=float(opts.tau_fudge),
        rlnMaximumSignificantPoses=int(s.maxsig),
        rlnBestResolutionThusFar=float(max([1.0 / h["resolution_A"] for h in state.history if h.get("resolution_A", 0) > 0] or [0.0])),
        rlnOverallAccuracyRotations=float(acc_rot.min()) if acc_rot.size else 999.0,
        rlnOverallAccuracyTranslationsAngst=float(acc_tr.min()) if acc_tr.size else 999.0,
        rlnChangesOptimalOrientations=float(last.get("changes_psi_deg", 999.0)),
        rlnChangesOptimalOffsets=float(last.get("changes_offsets_A", 999.0)),
        rlnChangesOptimalClasses=float(last.get("changes_classes", 9999999.0)),
        rlnSmallestChangesOrientations=float(state.smallest_changes["orient"]),
        rlnSmallestChangesOffsets=float(state.smallest_changes["offsets"]),
        rlnSmallestChangesClasses=int(state.smallest_changes["classes"]),
        rlnDoCorrectNorm=bool(s.do_norm), rlnDoCorrectScale=bool(s.do_scale), rlnDoCorrectCtf=bool(s.do_ctf),
        rlnDoCenterClasses=bool(opts.do_center), rlnDoIgnoreCtfUntilFirstPeak=bool(s.ctf_intact_first_peak),
        rlnCtfDataArePhaseFlipped=bool(s.ctf_phase_flipped), rlnRefsAreCtfCorrected=True,
        rlnMaxNumberOfPooledParticles=int(opts.nr_pool) * int(opts.nr_threads),
    )
    if vdam:
        values.update(vdam)
    return values


def sampling_values(state: RunState, it: int) -> dict[str, Any]:
    """sampling_general labels of iteration ``it`` (coarse steps; offsets in Å)."""
    px = state.model.pixel_size_A
    original = state.sampling
    smp = with_perturbation(current_sampling(state), perturbation_for_iteration(state.random_seed, it) if it > 0 else 0.0)
    return dict(rlnPsiStep=float(smp.psi_step_deg), rlnOffsetRange=float(smp.offset_range_px * px),
                rlnOffsetStep=float(smp.offset_step_px * px), rlnSamplingPerturbInstance=float(smp.perturbation),
                rlnPsiStepOriginal=float(original.psi_step_deg),
                rlnOffsetRangeOriginal=float(original.offset_range_px * px),
                rlnOffsetStepOriginal=float(original.offset_step_px * px))


def command_line(ctx: RunContext) -> str:
    """The exact command line of this execution (optimiser.star line 2)."""
    return ctx.command_line or " ".join(shlex.quote(a) for a in sys.argv)


def _write(ctx: RunContext, opts: Class2DOptions, state: RunState, it: int, write_sampling: bool,
           vdam: dict[str, Any] | None = None, moments: Any = None) -> IterationFiles:
    files = IterationFiles(state.root, it)
    write_iteration(files, state.model, state.table, optimiser_values(opts, state, vdam=vdam),
                    sampling_values(state, it) if write_sampling else None,
                    command_line(ctx), moments=moments, project_dir=ctx.project_dir)
    return files


def finish(ctx: RunContext, opts: Class2DOptions, state: RunState, last_it: int) -> None:
    """Gallery and convergence plot of the last iteration; output nodes of a continued run."""
    files = IterationFiles(state.root, last_it)
    job = Path(ctx.project_dir) / ctx.job_dir
    try:
        write_convergence_plot(job / "convergence.png", state.history)
    except Exception as exc:  # a picture must never fail a finished classification
        ctx.warn(f"WARNING: convergence plot not written: {exc}")
    try:
        _write_gallery(ctx, state, files)
    except Exception as exc:
        ctx.warn(f"WARNING: class gallery not written: {exc}")
    if ctx.is_continue:
        ctx.add_output_node(files.data, L.NODE_CLASS2D_DATA)
        ctx.add_output_node(files.optimiser, L.NODE_CLASS2D_OPTIMISER)
    pdf = to_host(state.model.pdf_class)
    counts = np.bincount(state.table.particles["rlnClassNumber"].to_numpy().astype(np.int64),
                         minlength=len(pdf) + 1)[1:]
    ctx.log(f"Finished {last_it} iterations: {np.count_nonzero(counts)} of {len(pdf)} classes hold particles; "
            f"largest class {counts.max() if counts.size else 0} particles.")
    ctx.log(f"Class averages: {files.classes}")
    ctx.log(f"Optimiser (input of a Select job): {files.optimiser}")
    ctx.log(f"Gallery: {ctx.job_dir}class_gallery.png")


def _write_gallery(ctx: RunContext, state: RunState, files: IterationFiles) -> None:
    from emclass2d.jobtypes.reports.gallery import write_gallery  # noqa: PLC0415

    model = state.model
    refs = np.asarray(to_host(model.references))
    k = refs.shape[0]
    write_gallery(Path(ctx.project_dir) / ctx.job_dir / "class_gallery.png", refs, np.arange(1, k + 1),
                  to_host(model.pdf_class), to_host(model.estimated_resolution_A))
