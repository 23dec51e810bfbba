"""Pieces shared by the coarse and fine passes of the E-step: likelihood terms, priors, bookkeeping.

Per-particle results (:class:`ParticleResults`), the terms of a pass at a pixel set
(:func:`_pass_terms`), the offset prior (every offset in Å), the significance threshold
(RELION's ``adaptive_fraction`` and ``maxsig``), reference projections shared by the
batches of an iteration, and the storing of per-particle results and pixel statistics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from emclass2d.core.backend import array_module
from emclass2d.core.projector import project
from emclass2d.core.estep.pixels import PixelSet
from emclass2d.core.estep.setup import EStepSetup
from emclass2d.core.estep.images import _Prepared

#: Largest particle count of one padded gathered fine-pass GEMM (bounds the padding waste).
_SUB = 24


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


def _offset_log_prior(off_round: Any, ctx: dict) -> Any:
    """ln pdf_offset (B, Ka, Tc) at the absolute coarse offsets, all in Å (RELION's ``getAllSquaredDifferences``)."""
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
