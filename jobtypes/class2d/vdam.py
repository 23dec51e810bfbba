"""The VDAM loop of the Class2D job: mini-batch gradient steps on the EM E-step (RELION's ``MlOptimiser::iterate`` with ``--grad``).

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

The array work of one gradient step is :func:`emclass2d.core.vdam_maximization.gradient_maximization`.

Example (what :func:`emclass2d.jobtypes.class2d.run.run_class2d` calls for ``do_grad``)::

    run_vdam(ctx, opts, state, devices=["cpu"])
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np

from emclass2d.core.backend import get_xp
from emclass2d.core.mstep import maximization
from emclass2d.core.model import Model
from emclass2d.core.projector import padded_size
from emclass2d.core.vdam import VdamState, restart_split_moments
from emclass2d.core.vdam_maximization import center_gradient_classes, gradient_maximization
from emclass2d.core.vdam_schedule import VdamSchedule, make_vdam_schedule, minibatch_indices
from emclass2d.jobtypes.base import JobFailed, RunContext
from emclass2d.jobtypes.class2d.options import Class2DOptions
from emclass2d.jobtypes.class2d.particle_stream import ParticleStream, move_to
from emclass2d.jobtypes.class2d.split import mark_seen, split_inactive_class, vdam_split_settle
from emclass2d.jobtypes.class2d.step import (RunState, after_maximization, estimate_accuracies, finish,
                                             iteration_setup, make_particle_stream, record_iteration,
                                             update_particles, write_iteration_files)
from emclass2d.jobtypes.running.streams import format_duration
from emclass2d.nodes.files import class2d as c2f
from emclass2d.nodes.io.mrc import read_complex_stack
from emclass2d.nodes.io.particles import resolve_in_project

#: ``--grad_min_resol`` as RELION stores it (RELION parses it and never uses it).
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
    """The VDAM labels of ``optimiser_general`` for iteration ``it`` (RELION's ``MlOptimiser::write``)."""
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
        model, sampling = iteration_setup(state, opts, it)
        model = replace(model, tau2_fudge=float(t_fudge))
        stats, results, setup = stream.expectation(model, settings, sampling, it, indices,
                                                   accumulate_residual=do_grad, split_halves=do_grad)
        pair = None
        if do_grad:
            model, vstate, pair = gradient_maximization(move_to(model, dev), stats, setup.tau2, settings,
                                                        vstate, sched, it, copy_replacement=not opts.do_split_classes)
            model = move_to(model, "cpu")
            center = sched.center_classes_at(it, bool(opts.do_center))
            if center:
                refs, vstate, _ = center_gradient_classes(
                    np.asarray(model.references), vstate, state.sampling.offset_range_px,
                    settings.diameter_A(model.box, model.pixel_size_A), model.pixel_size_A)
                model = replace(model, references=refs)
            model = after_maximization(ctx, opts, state, model, it, write_unmasked=False, center=False)
        else:
            model = move_to(maximization(move_to(model, dev), stats, setup.tau2, settings), "cpu")
            model = after_maximization(ctx, opts, state, model, it, write_unmasked=False,
                                        center=sched.center_classes_at(it, bool(opts.do_center)))
        if it <= 1 or it % 10 == 0 or it == nr_iter:  # RELION's VDAM schedule of accuracy estimates
            model = estimate_accuracies(state, model, it, dev)
        if pair is not None:
            ctx.log(f"Mini-batch {it}: class {pair[0] + 1} (inactive) replaced by a copy of class {pair[1] + 1}")
        summary = update_particles(state, results, model)
        mark_seen(state, results.index, it)
        if do_grad and opts.do_split_classes and sched.class_replacement_at(it):
            model, vstate = split_gradient_class(ctx, opts, state, model, vstate, stream, it, sched)
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


def split_gradient_class(ctx: RunContext, opts: Class2DOptions, state: RunState, model: Model, vstate: VdamState,
                         stream: ParticleStream, it: int, sched: VdamSchedule) -> tuple[Model, VdamState]:
    """``do_split_classes``: the inactive class re-seeded by a split, the moments of both halves restarted."""
    settle = vdam_split_settle(state.table.n_particles, sched.subset_size(it))
    model, split = split_inactive_class(ctx, opts, state, model, stream, it, settle_iterations=settle)
    if split is None:
        return model, vstate
    return model, restart_split_moments(vstate, split.expand, split.drop)


def _write_vdam(ctx: RunContext, opts: Class2DOptions, state: RunState, sched: VdamSchedule, it: int,
                vstate: VdamState) -> None:
    m1, m2 = vstate.to_moment_stacks()  # interleaved (re, im) float32 -> complex views for the writer
    write_iteration_files(ctx, opts, state, it, write_sampling=True, vdam=vdam_optimiser_values(opts, sched, it),
           moments=(np.ascontiguousarray(m1).view(np.complex64), np.ascontiguousarray(m2).view(np.complex64)))
