"""The E-step of one batch: the coarse pass over every sample, then the fine pass of the significant ones.

:func:`expectation_batch` is the entry point (see :mod:`emclass2d.core.estep` for the
algorithm); :data:`DENSE_FRACTION` chooses, per particle, between the gathered and the
dense fine pass.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from emclass2d.core.backend import array_module, to_host
from emclass2d.core.batch import ParticleBatch
from emclass2d.core.model import Model, Settings
from emclass2d.core.stats import BatchStats
from emclass2d.core.estep.pixels import phase_factors
from emclass2d.core.estep.setup import DEFAULT_MEMORY_BUDGET, EStepSetup
from emclass2d.core.estep.images import _prepare
from emclass2d.core.estep.terms import (ParticleResults, _Chunk, _offset_log_prior, _pass_terms, _power,
                                        _project_chunked, _ri, _shared, _threshold)
from emclass2d.core.estep.fine_gathered import _fine_gathered_all
from emclass2d.core.estep.fine_dense import _fine_dense_all

#: A particle's fine pass is evaluated densely when its gathered set (significant coarse
#: psis × significant coarse translations) is at least this fraction of the whole coarse
#: grid. The dense GEMMs share one right-hand side and need no per-particle gathers or
#: scatters; with benchmarks/bench_estep.py (sigma2 scaled to get intermediate regimes,
#: 64 px, K = 12, 30 psis × 21 translations) the two cost the same between ~0.1 and ~0.35.
DENSE_FRACTION = 0.2


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

    accumulate_residual: back-project X − CTF·s·P instead of X (VDAM, RELION's ``grad_pseudo_halfsets``).
    split_halves: two pseudo-half accumulators by part_index parity (VDAM, RELION's ``grad_pseudo_halfsets``).
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

    # priors (RELION's ``getAllSquaredDifferences``); offset prior centre is RELION's stored value prior_offset·pdf_class
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
