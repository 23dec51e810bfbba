"""The gathered fine pass: each particle's significant psis × translations, in padded batched GEMMs.

Used when few coarse samples are significant (peaked posteriors); gives the same results
as :mod:`~emclass2d.core.estep.fine_dense`.
"""
from __future__ import annotations


import numpy as np

from emclass2d.core.estep.terms import (_SUB, _Chunk, _PixelTerms, _power, _reference_rows, _ri, _store_pixel_stats,
                                        _store_results, _threshold)


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
