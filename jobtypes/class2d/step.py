"""Pieces shared by the EM and VDAM loops of a Class2D run: state, one iteration's set-up and end.

:class:`RunState` is what a loop carries from one iteration to the next. Per iteration:
:func:`iteration_setup` (perturbed sampling, image sizes), the E-step through
:func:`make_particle_stream`, then :func:`after_maximization` (centring, unmasked classes,
solvent flattening, resolution; RELION's ``MlOptimiser::centerClasses``,
``solventFlatten``, ``updateCurrentResolution``), :func:`estimate_accuracies`,
:func:`update_particles` (the data.star columns and RELION's change statistics),
:func:`write_iteration_files` (the optimiser and sampling labels of the run) and, at the
end, :func:`finish` (gallery, convergence plot, output nodes of a continued run).

Example::

    model, sampling = iteration_setup(state, opts, it)
    stats, results, setup = make_particle_stream(ctx, opts, state.table, devices).expectation(
        model, state.settings, sampling, it, indices)
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
from emclass2d.core.backend import get_xp, to_device, to_host
from emclass2d.core.center import center_classes
from emclass2d.core.ctf import compute_ctf
from emclass2d.core.fourier import frequency_grid
from emclass2d.core.mask import solvent_flatten
from emclass2d.core.model import Model, Settings
from emclass2d.core.resolution import image_sizes, update_current_resolution
from emclass2d.core.sampling import Sampling, make_sampling, perturbation_for_iteration, with_perturbation
from emclass2d.jobtypes.base import RunContext
from emclass2d.jobtypes.class2d.options import Class2DOptions
from emclass2d.jobtypes.class2d.particle_stream import ParticleResultsHost, ParticleStream
from emclass2d.jobtypes.reports.convergence import write_convergence_plot
from emclass2d.nodes.files.class2d import IterationFiles, write_iteration
from emclass2d.nodes.graph import labels as L
from emclass2d.nodes.io.mrc import write_mrcs
from emclass2d.nodes.io.particles import ParticleTable, image_source_for

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
    #: Iteration in which each particle was last assigned (0 = not in this run yet); for class splits.
    last_seen: np.ndarray | None = None
    #: Iteration of the latest split that made each class (class index -> iteration).
    split_at: dict[int, int] = field(default_factory=dict)


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


def iteration_setup(state: RunState, opts: Class2DOptions, it: int) -> tuple[Model, Sampling]:
    """Perturbed sampling and image sizes of iteration ``it`` (reproducible from the seed)."""
    model, settings = state.model, state.settings
    sampling = with_perturbation(current_sampling(state), perturbation_for_iteration(state.random_seed, it))
    cur, coarse = image_sizes(model.current_resolution, model.box, model.pixel_size_A, settings.incr_size,
                              sampling.psi_step_deg, settings.diameter_A(model.box, model.pixel_size_A),
                              sampling.oversampling, settings.strict_highres_exp_A)
    return replace(model, current_size=cur, coarse_size=coarse, tau2_fudge=settings.tau2_fudge), sampling


def current_sampling(state: RunState) -> Sampling:
    """The sampling of the next iteration: as requested, or coarser with ``allow_coarser``.

    RELION's ``--allow_coarser_sampling`` (RELION's ``MlOptimiser::calculateExpectedAngularErrors``, K > 1): psi step = max(0.8 · best psi
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


def after_maximization(ctx: RunContext, opts: Class2DOptions, state: RunState, model: Model, it: int,
                        write_unmasked: bool, center: bool | None = None) -> Model:
    """Centring, unmasked classes, solvent flattening, resolution update (RELION's ``MlOptimiser::centerClasses``, ``MlOptimiser::updateCurrentResolution``)."""
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
    """rlnAccuracyRotations/TranslationsAngst of ``model`` from the first particles (RELION's ``MlOptimiser::calculateExpectedAngularErrors``).

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


def update_particles(state: RunState, r: ParticleResultsHost, model: Model) -> dict[str, float]:
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


def write_iteration_files(ctx: RunContext, opts: Class2DOptions, state: RunState, it: int, write_sampling: bool,
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
