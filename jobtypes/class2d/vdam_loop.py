"""The VDAM loop of the Class2D job: mini-batch gradient steps on the EM E-step (facts 3.1-3.9).

One iteration is one mini-batch (RELION ``--grad``, GUI "Use VDAM algorithm? Yes"):

1. step size s(it), regularisation T(it), ``do_grad``, maxsig = 5·K, mini-batch size and
   members (reshuffled from ``random_seed + it``) from :mod:`emclass2d.core.vdam_schedule`;
2. E-step over the mini-batch only, streamed from the memory-mapped stacks, back-projecting
   the residual X − CTF·s·P into two pseudo-halves (particle index even / odd);
3. first and second moments and the preconditioned gradient; replacement of an inactive
   class by a copy of the class with the largest error (``class_inactivity_threshold``,
   in-between phase only);
4. per class: SSNR arrays from the half-1 weights, gradient step on the class average with
   the per-shell FSC-like weight (:func:`emclass2d.core.vdam.reconstruct_grad`);
5. noise spectra, scales, class fractions, offset priors and norm with momentum ``mu``;
6. centring (initial and in-between phases and the last iteration; shifts shorter than
   max(0.01·diameter/px, 2) px are ignored; first moments shifted with the average),
   solvent flattening, current resolution; files only every ``grad_write_iter``
   iterations, at iteration 0 and at the last iteration, with the moment stacks
   ``run_itNNN_1moment.mrcs`` / ``_2moment.mrcs``.

The last mini-batch is the whole data set (fresh assignments for every particle, μ = 0);
``grad_em_iters`` trailing iterations are plain EM over all particles. Memory is bounded
by the largest mini-batch: the particle stream reads its particles in batches from the stacks.

A run continued from any written iteration reads the moments back from the moment stacks
and the schedule from the iteration number, and reproduces the uninterrupted run up to
the rounding of the values stored in STAR files.

Deliberate differences from RELION:

* Mini-batches are drawn with NumPy's generator seeded by ``random_seed + it``, not
  ``std::mt19937``: reproducible, but not the same particles as RELION's run.
* The step size and T follow the sequential schedule (RELION's MPI version keeps their
  start values); the class step is s·(1 − exp(−(3K+10)·pdf_class)) as in the sequential
  program.
* For runs so short that a phase has no iterations, the step-size/T sigmoid becomes a hard
  step instead of RELION's division by zero.
* A continued run keeps the stored class distribution as E-step class prior (RELION
  resets it to flat), and its starting iteration is written under the new root even when
  that iteration is not a multiple of ``grad_write_iter``.

Example (what :func:`emclass2d.jobtypes.class2d.run.run_class2d` calls for ``do_grad``)::

    run_vdam(ctx, opts, state, devices=["cpu"])
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np

from emclass2d.core.backend import array_module, get_xp, to_host
from emclass2d.core.center import center_classes
from emclass2d.core.model import Model, Settings
from emclass2d.core.mstep import back_rotate_stats, maximization, maximization_other_parameters, ssnr_arrays
from emclass2d.core.projector import grid_to_fftw
from emclass2d.core.resolution import estimated_resolution_and_completeness
from emclass2d.core.vdam import (VdamState, centring_min_shift_px, choose_class_replacement, copy_class_rows,
                                 padded_size, reconstruct_grad, replace_class, shift_first_moments, update_moments)
from emclass2d.core.vdam_schedule import VdamSchedule, make_vdam_schedule, minibatch_indices
from emclass2d.jobtypes.base import JobFailed, RunContext
from emclass2d.jobtypes.class2d.particle_stream import move_to
from emclass2d.jobtypes.class2d.options import Class2DOptions
from emclass2d.jobtypes.running.streams import format_duration
from emclass2d.jobtypes.class2d.run import (RunState, _after_maximization, _iteration_setup, _update_particles,
                                            estimate_accuracies, record_iteration,
                                            _write, finish, make_particle_stream)
from emclass2d.nodes.files import class2d as c2f
from emclass2d.nodes.io.mrc import read_complex_stack
from emclass2d.nodes.io.particles import resolve_in_project

#: ``--grad_min_resol`` as RELION stores it (parsed, unused: facts 3.10).
GRAD_MIN_RESOL_A = 20.0


def schedule_for(opts: Class2DOptions, nr_particles: int, nr_classes: int) -> VdamSchedule:
    """The resolved VDAM schedule of a run from its options (RELION's automatic values filled in)."""
    return make_vdam_schedule(
        nr_iter=int(opts.nr_iter_grad), nr_particles=int(nr_particles), nr_classes=int(nr_classes),
        ini_frac=float(opts.grad_ini_frac), fin_frac=float(opts.grad_fin_frac),
        ini_subset=int(opts.grad_ini_subset), fin_subset=int(opts.grad_fin_subset),
        stepsize=float(opts.grad_stepsize), tau2_fudge=float(opts.tau_fudge),
        grad_em_iters=int(opts.grad_em_iters), write_every=int(opts.grad_write_iter), mu=float(opts.mu),
        class_inactivity_threshold=float(opts.class_inactivity_threshold))


def vdam_optimiser_values(opts: Class2DOptions, sched: VdamSchedule, it: int) -> dict[str, Any]:
    """The VDAM labels of ``optimiser_general`` for iteration ``it`` (facts 1.5; RELION names)."""
    return dict(
        rlnDoGradientRefine=True, rlnDoStochasticGradientDescent=bool(sched.do_grad(it)),
        rlnGradEmIters=int(sched.grad_em_iters), rlnGradCurrentStepsize=float(sched.step_size(it)),
        rlnSgdInitialIterationsFraction=float(sched.ini_frac), rlnSgdFinalIterationsFraction=float(sched.fin_frac),
        rlnSgdMinimumResolution=GRAD_MIN_RESOL_A, rlnSgdInitialResolution=-1.0, rlnSgdFinalResolution=-1.0,
        rlnSgdInitialSubsetSize=int(sched.ini_subset), rlnSgdFinalSubsetSize=int(sched.fin_subset),
        rlnSgdMuFactor=float(sched.mu), rlnSgdSkipAnneal=False,
        rlnSgdClassInactivityThreshold=float(sched.class_inactivity_threshold),
        rlnSgdSubsetSize=int(sched.subset_size(it)), rlnSgdWriteEverySubset=int(sched.write_every),
        rlnSgdStepsize=float(opts.grad_stepsize), rlnSgdStepsizeScheme="", rlnTau2FudgeScheme="",
        rlnTau2FudgeArg=float(opts.tau_fudge), rlnMaximumSignificantPoses=-1)


def read_moments(ctx: RunContext, opts: Class2DOptions, nr_classes: int, pad: int, device: str) -> VdamState:
    """Moments stored with the iteration continued from (``fn_cont``), via its model.star.

    Raises:
        JobFailed: the model.star names no moment stacks (not a VDAM run) or they do not fit.
    """
    opt = c2f.read_optimiser_star(resolve_in_project(opts.fn_cont, ctx.project_dir))
    model_path = resolve_in_project(str(opt.general["rlnModelStarFile"]), ctx.project_dir)
    stacks = c2f.read_model_star(model_path).moment_stacks
    if stacks is None:
        raise JobFailed(f"{model_path}: no rlnGradMoment1/rlnGradMoment2 columns in data_model_classes; "
                        "a VDAM run can only continue from an iteration of a VDAM run")
    paths = [resolve_in_project(s, ctx.project_dir) for s in stacks]
    for label, p in zip(("rlnGradMoment1", "rlnGradMoment2"), paths):
        if not p.is_file():
            raise JobFailed(f"{model_path}: _{label} names {p}, which does not exist")
    m1, m2 = (read_complex_stack(p).view(np.float32) for p in paths)
    try:
        state = VdamState.from_moment_stacks(m1, m2, xp=get_xp(device))
    except ValueError as exc:
        raise JobFailed(f"{model_path}: {exc}") from exc
    if state.nr_classes != nr_classes or state.padded_size != pad:
        raise JobFailed(f"{paths[1]}: moments of {state.nr_classes} classes on a {state.padded_size}-px padded grid; "
                        f"expected {nr_classes} classes and {pad} px")
    return state


# ----------------------------------------------------------------------------- one gradient step
def gradient_maximization(model: Model, stats: Any, tau2: Any, settings: Settings, vstate: VdamState,
                          sched: VdamSchedule, it: int) -> tuple[Model, VdamState, tuple[int, int] | None]:
    """Moments, class replacement, SSNR, reference step and other parameters (facts 3.4-3.7).

    ``model`` and ``vstate`` on the device of ``stats``; ``stats`` hold the residual sums
    of two pseudo-halves. Returns (new model, new moments, (drop, expand) or None).
    """
    n, pf = model.box, model.padding_factor
    cur = int(stats.current_size)
    t_fudge = sched.tau2_fudge_at(it)
    m = padded_size(n, pf)
    d1, w1 = back_rotate_stats(stats, n, pf, half=0)
    d2, w2 = back_rotate_stats(stats, n, pf, half=1)
    upd = update_moments(vstate, grid_to_fftw(d1, m), grid_to_fftw(w1, m), grid_to_fftw(d2, m),
                         grid_to_fftw(w2, m), model.pdf_class, cur, n)
    vstate = upd.state
    update = upd.active.copy()
    pair = None
    if sched.class_replacement_at(it):
        pair = choose_class_replacement(model.pdf_class, upd.avg_class_error, sched.class_inactivity_threshold)
    if pair is not None:
        model, vstate = replace_inactive_class(model, vstate, *pair)
        update[pair[0]] = False
    xp = array_module(w1)
    tau2 = xp.asarray(tau2, dtype=xp.float64)
    ssnr = xp.array(model.data_vs_prior, dtype=xp.float64, copy=True)
    sig = xp.array(model.sigma2_ref, dtype=xp.float64, copy=True)
    comp = xp.array(model.fourier_completeness, dtype=xp.float64, copy=True)
    new_tau2 = xp.array(model.tau2, dtype=xp.float64, copy=True)
    for k in np.flatnonzero(update):
        ssnr[k], sig[k], comp[k] = ssnr_arrays(w1[k], tau2[k], t_fudge, pf, n, cur // 2)
        new_tau2[k] = tau2[k]
    refs, _ = reconstruct_grad(model.references, upd.grad, upd.noise, model.pdf_class, sched.step_size(it),
                               t_fudge, cur, update)
    res_A, overall = estimated_resolution_and_completeness(ssnr, comp, n, model.pixel_size_A)
    model = replace(model, references=refs.astype(xp.float32), data_vs_prior=ssnr, sigma2_ref=sig,
                    fourier_completeness=comp, tau2=new_tau2, estimated_resolution_A=res_A,
                    overall_completeness=overall, tau2_fudge=float(t_fudge), current_size=cur)
    model = maximization_other_parameters(model, stats, settings, mu=sched.mu_at(it))
    return model, vstate, pair


def replace_inactive_class(model: Model, vstate: VdamState, drop: int, expand: int) -> tuple[Model, VdamState]:
    """Class ``drop`` becomes a copy of class ``expand`` (``MlModel::reset_class``, facts 3.7).

    Copies the average, pdf_class, pdf_direction, tau2, SSNR and the moments (the copied
    half-1 first moment damped by 0.9); pdf_class is renormalised by the next M-step.
    """
    rows = copy_class_rows(dict(references=model.references, pdf_class=model.pdf_class,
                                pdf_direction=model.pdf_direction, tau2=model.tau2,
                                data_vs_prior=model.data_vs_prior), drop, expand)
    return replace(model, **rows), replace_class(vstate, drop, expand)


def center_gradient_classes(refs: np.ndarray, vstate: VdamState, max_shift_px: float, diameter_A: float,
                            pixel_size_A: float) -> tuple[np.ndarray, VdamState, np.ndarray]:
    """VDAM centring (facts 3.8): only shifts >= max(0.01·diameter/px, 2) px, moments shifted too.

    Returns (averages, moments, applied shifts (K, 2) px, zero rows where not applied).
    """
    centred, shifts = center_classes(refs, max_shift_px)
    shifts = np.asarray(to_host(shifts), dtype=np.float64)
    apply = np.hypot(shifts[:, 0], shifts[:, 1]) >= centring_min_shift_px(diameter_A, pixel_size_A)
    out = np.where(apply[:, None, None], np.asarray(to_host(centred)), refs).astype(np.float32)
    shifts = np.where(apply[:, None], shifts, 0.0)
    if apply.any():
        vstate = shift_first_moments(vstate, shifts)
    return out, vstate, shifts


# ----------------------------------------------------------------------------- the loop
def run_vdam(ctx: RunContext, opts: Class2DOptions, state: RunState, devices: list[str]) -> None:
    """VDAM iterations ``state.start_iteration … nr_iter_grad`` (module docstring)."""
    table = state.table
    k = state.model.n_classes
    try:
        sched = schedule_for(opts, table.n_particles, k)
    except ValueError as exc:
        raise JobFailed(str(exc)) from exc
    nr_iter = sched.nr_iter
    if state.start_iteration > nr_iter:
        raise JobFailed(f"Number of VDAM mini-batches ({nr_iter}) must exceed the iteration continued from "
                        f"({state.start_iteration - 1}); it counts the total, not additional mini-batches")
    if state.random_seed == 0:
        ctx.warn("WARNING: random seed 0: mini-batches are not shuffled (always the same leading particles)")
    pad = padded_size(state.model.box, state.model.padding_factor)
    dev = devices[0]
    if ctx.is_continue:
        vstate = read_moments(ctx, opts, k, pad, dev)
    else:
        vstate = VdamState.initial(k, pad, xp=get_xp(dev))
    ini, mid, fin = sched.phase_lengths
    ctx.log(f"VDAM: {nr_iter} mini-batches ({ini} initial, {mid} in-between, {fin} final), sizes "
            f"{sched.ini_subset} to {sched.fin_subset} of {table.n_particles} particles, T {sched.tau2_fudge}, "
            f"step {sched.stepsize}, mu {sched.mu}, files every {sched.write_every}")
    # the starting iteration again, now with the moments and the VDAM labels
    start = state.start_iteration - 1
    state.model = replace(state.model, tau2_fudge=float(sched.tau2_fudge_at(start)))
    _write_vdam(ctx, opts, state, sched, start, vstate)

    stream = make_particle_stream(ctx, opts, table, devices)
    t_start = time.monotonic()
    for it in range(state.start_iteration, nr_iter + 1):
        t0 = time.monotonic()
        ctx.check_abort()
        do_grad = sched.do_grad(it)
        t_fudge = sched.tau2_fudge_at(it)
        settings = replace(state.settings, maxsig=sched.maximum_significants(it), tau2_fudge=float(t_fudge))
        subset = sched.subset_size(it)
        indices = minibatch_indices(table.n_particles, subset, state.random_seed, it, table.optics_index)
        model, sampling = _iteration_setup(state, opts, it)
        model = replace(model, tau2_fudge=float(t_fudge))
        stats, results, setup = stream.expectation(model, settings, sampling, it, indices,
                                                   accumulate_residual=do_grad, split_halves=do_grad)
        pair = None
        if do_grad:
            model, vstate, pair = gradient_maximization(move_to(model, dev), stats, setup.tau2, settings,
                                                        vstate, sched, it)
            model = move_to(model, "cpu")
            center = sched.center_classes_at(it, bool(opts.do_center))
            if center:
                refs, vstate, _ = center_gradient_classes(
                    np.asarray(model.references), vstate, state.sampling.offset_range_px,
                    settings.diameter_A(model.box, model.pixel_size_A), model.pixel_size_A)
                model = replace(model, references=refs)
            model = _after_maximization(ctx, opts, state, model, it, write_unmasked=False, center=False)
        else:
            model = move_to(maximization(move_to(model, dev), stats, setup.tau2, settings), "cpu")
            model = _after_maximization(ctx, opts, state, model, it, write_unmasked=False,
                                        center=sched.center_classes_at(it, bool(opts.do_center)))
        if it <= 1 or it % 10 == 0 or it == nr_iter:  # RELION's VDAM schedule of accuracy estimates
            model = estimate_accuracies(state, model, it, dev)
        if pair is not None:
            ctx.log(f"Mini-batch {it}: class {pair[0] + 1} (inactive) replaced by a copy of class {pair[1] + 1}")
        summary = _update_particles(state, results, model)
        state.model = model
        if sched.writes_files(it):
            _write_vdam(ctx, opts, state, sched, it, vstate)
        elapsed, eta = record_iteration(state, summary, it, nr_iter, t0, t_start, n_particles=int(len(indices)),
                                        step_size=float(sched.step_size(it)), tau2_fudge=float(t_fudge))
        ctx.log(f"Mini-batch {it:3d}/{nr_iter} ({len(indices)} particles): resolution {summary['resolution_A']:.2f} Å, "
                f"step {sched.step_size(it):.3f}, T {t_fudge:.3f}, class changes {100 * summary['changes_classes']:.1f}%, "
                f"{elapsed:.1f} s (ETA {format_duration(eta)})")
        ctx.iteration_done(it, summary)
    finish(ctx, opts, state, nr_iter)


def _write_vdam(ctx: RunContext, opts: Class2DOptions, state: RunState, sched: VdamSchedule, it: int,
                vstate: VdamState) -> None:
    m1, m2 = vstate.to_moment_stacks()  # interleaved (re, im) float32 -> complex views for the writer
    _write(ctx, opts, state, it, write_sampling=True, vdam=vdam_optimiser_values(opts, sched, it),
           moments=(np.ascontiguousarray(m1).view(np.complex64), np.ascontiguousarray(m2).view(np.complex64)))


__all__ = ["run_vdam", "schedule_for", "vdam_optimiser_values", "gradient_maximization", "center_gradient_classes",
           "read_moments", "replace_inactive_class"]
