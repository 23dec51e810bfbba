"""The EM loop of the Class2D job: E-step over all particles, M-step, write, every iteration.

Order of one iteration follows RELION's ``MlOptimiser::iterate``: random perturbation of
the sampling, image sizes from the current resolution, E-step over all particles, M-step,
centre-of-mass re-centring (``do_center``), ``run_unmasked_classes.mrcs``, solvent
flattening, resolution update, accuracies, write.

Deliberate differences from RELION, each for reproducibility or correctness:

* The psi grid is never rounded up to a multiple of 32 on a GPU (RELION does with
  accelerators), so CPU and GPU runs search the same grid and agree.
* On continue, the E-step class prior is the stored class distribution (RELION resets it
  to flat for the first continued iteration), so a continued run reproduces an
  uninterrupted one.
* Particles are not reshuffled per EM iteration (the order does not change an EM result).
* ``run_it000_sampling.star`` is written (RELION's MPI version does, its sequential one not).

Example (what :func:`emclass2d.jobtypes.class2d.run.run_class2d` calls without ``do_grad``)::

    run_em(ctx, opts, state, devices=["cpu"])
"""
from __future__ import annotations

import time

import numpy as np

from emclass2d.core.mstep import maximization
from emclass2d.jobtypes.base import JobFailed, RunContext
from emclass2d.jobtypes.class2d.options import Class2DOptions
from emclass2d.jobtypes.class2d.particle_stream import move_to
from emclass2d.jobtypes.class2d.split import EM_SPLIT_SETTLE, em_split_window, mark_seen, split_inactive_class
from emclass2d.jobtypes.class2d.step import (RunState, after_maximization, estimate_accuracies, finish,
                                             iteration_setup, make_particle_stream, record_iteration,
                                             update_particles, write_iteration_files)
from emclass2d.jobtypes.running.streams import format_duration


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
        model, sampling = iteration_setup(state, opts, it)
        stats, results, setup = stream.expectation(model, settings, sampling, it, all_particles)
        model = move_to(maximization(move_to(model, devices[0]), stats, setup.tau2, settings), "cpu")
        model = after_maximization(ctx, opts, state, model, it, write_unmasked=True)
        model = estimate_accuracies(state, model, it, devices[0])
        summary = update_particles(state, results, model)
        mark_seen(state, results.index, it)
        if opts.do_split_classes and em_split_window(it, nr_iter):
            model, _ = split_inactive_class(ctx, opts, state, model, stream, it, settle_iterations=EM_SPLIT_SETTLE)
        state.model = model
        write_iteration_files(ctx, opts, state, it, write_sampling=True)
        elapsed, eta = record_iteration(state, summary, it, nr_iter, t0, t_start)
        ctx.log(f"Iteration {it:3d}/{nr_iter}: resolution {summary['resolution_A']:.2f} Å, "
                f"class changes {100 * summary['changes_classes']:.1f}%, offsets {summary['changes_offsets_A']:.2f} Å, "
                f"psi {summary['changes_psi_deg']:.2f}°, {elapsed:.1f} s (ETA {format_duration(eta)})")
        ctx.iteration_done(it, summary)
    finish(ctx, opts, state, nr_iter)
