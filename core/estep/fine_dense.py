"""The dense fine pass: all fine psis of the involved classes × all fine translations, masked.

Used when posteriors are flat (many significant coarse samples, as in the first
iterations): the coarse pass's two GEMMs on the fine grid, masked to the children of the
significant samples; the statistics as GEMMs over particle × translation. Gives the same
results as :mod:`~emclass2d.core.estep.fine_gathered`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from emclass2d.core.backend import to_host
from emclass2d.core.batch import ParticleBatch
from emclass2d.core.estep.terms import (_Chunk, _PixelTerms, _power, _reference_rows, _ri, _store_pixel_stats,
                                        _store_results, _threshold)


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
