"""One VDAM gradient step on the class averages, after the E-step of a mini-batch.

Moments of the two pseudo-halves, replacement of an inactive class, SSNR per class,
the damped reference step and the other parameters with momentum (RELION's
``MlOptimiser::maximizationGradientParameters`` and ``BackProjector::reconstructGrad``),
and VDAM's centring, which moves the first moments with the averages. Pure functions
on the arrays of the statistics' device.

Example::

    model, vstate, pair = gradient_maximization(model, stats, setup.tau2, settings, vstate, sched, it)

See also: :mod:`emclass2d.core.vdam` (moments, reference update), :mod:`emclass2d.core.vdam_schedule`.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from emclass2d.core.backend import array_module, to_host
from emclass2d.core.center import center_classes
from emclass2d.core.model import Model, Settings
from emclass2d.core.mstep import back_rotate_stats, maximization_other_parameters, ssnr_arrays
from emclass2d.core.projector import grid_to_fftw, padded_size
from emclass2d.core.resolution import estimated_resolution_and_completeness
from emclass2d.core.vdam import (VdamState, centring_min_shift_px, choose_class_replacement, copy_class_rows,
                                 reconstruct_grad, replace_class, shift_first_moments, update_moments)
from emclass2d.core.vdam_schedule import VdamSchedule


def gradient_maximization(model: Model, stats: Any, tau2: Any, settings: Settings, vstate: VdamState,
                          sched: VdamSchedule, it: int, copy_replacement: bool = True,
                          ) -> tuple[Model, VdamState, tuple[int, int] | None]:
    """Moments, class replacement, SSNR, reference step and other parameters (RELION's ``MlOptimiser::maximizationGradientParameters``, ``BackProjector::reconstructGrad``).

    ``model`` and ``vstate`` on the device of ``stats``; ``stats`` hold the residual sums
    of two pseudo-halves. ``copy_replacement`` False leaves out RELION's copy of the
    largest-error class into an inactive one (class splits replace it). Returns (new
    model, new moments, (drop, expand) or None).
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
    if copy_replacement and sched.class_replacement_at(it):
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
    """Class ``drop`` becomes a copy of class ``expand`` (``MlModel::reset_class``, RELION's ``--class_inactivity_threshold``).

    Copies the average, pdf_class, pdf_direction, tau2, SSNR and the moments (the copied
    half-1 first moment damped by 0.9); pdf_class is renormalised by the next M-step.
    RELION keeps the dropped class's offset prior as stored, i.e. the product mean offset ×
    old pdf_class, which the E-step uses as the prior's centre; ``prior_offset_A`` (the
    mean itself) is rescaled so that product stays the same under the copied pdf_class.
    """
    rows = copy_class_rows(dict(references=model.references, pdf_class=model.pdf_class,
                                pdf_direction=model.pdf_direction, tau2=model.tau2,
                                data_vs_prior=model.data_vs_prior), drop, expand)
    xp = array_module(model.prior_offset_A)
    old_pdf, new_pdf = float(to_host(model.pdf_class)[drop]), float(to_host(rows["pdf_class"])[drop])
    prior = xp.array(model.prior_offset_A, copy=True)
    prior[drop] = prior[drop] * (old_pdf / new_pdf if new_pdf > 0 else 0.0)
    return replace(model, prior_offset_A=prior, **rows), replace_class(vstate, drop, expand)


def center_gradient_classes(refs: np.ndarray, vstate: VdamState, max_shift_px: float, diameter_A: float,
                            pixel_size_A: float) -> tuple[np.ndarray, VdamState, np.ndarray]:
    """VDAM centring (RELION's ``centerClasses`` in VDAM): only shifts >= max(0.01·diameter/px, 2) px, moments shifted too.

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
