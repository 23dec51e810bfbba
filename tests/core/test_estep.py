"""E-step against an independent float64 brute force over classes, psis and translations.

The brute force loops over every sample, rotates references by its own bilinear
interpolation of the full (not half-plane) padded transform, and applies RELION's
two-pass adaptive search literally (RELION's ``MlOptimiser::expectation``).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from emclass2d.core.backend import to_host
from emclass2d.core.batch import ParticleBatch
from emclass2d.core.ctf import compute_ctf
from emclass2d.core.estep import expectation_batch, prepare_iteration
from emclass2d.core.mask import mask_particles
from emclass2d.core.model import Model, Settings
from emclass2d.core.sampling import make_sampling, with_perturbation
from builders import particle_batch

N, PX, PF = 16, 3.0, 2


def _make_problem(seed=0, b=5, k=3, noise=0.04, norm=False):
    rng = np.random.default_rng(seed)
    c = np.arange(N) - N // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    refs = np.stack([np.exp(-((x - 2 * i + 1) ** 2 + (y - i) ** 2) / (4.0 + i)) - 0.4 * np.exp(-((x + 3) ** 2 + (y + 2 - i) ** 2) / 3.0)
                     for i in range(k)])
    imgs = np.stack([refs[rng.integers(k)][::1, ::-1].T if i % 2 else refs[rng.integers(k)] for i in range(b)])
    imgs = imgs + np.sqrt(noise) * rng.standard_normal(imgs.shape)
    model = Model.empty(k, N, PX, n_optics=2, n_groups=2, xp=np)
    s2 = np.stack([np.full(N // 2 + 1, noise / (2 * N * N)), np.full(N // 2 + 1, 1.3 * noise / (2 * N * N))])
    model = dataclasses.replace(
        model, references=refs, sigma2_noise=s2, current_size=12, coarse_size=8, sigma2_offset_A2=30.0,
        pdf_class=np.array([0.5, 0.3, 0.2])[:k], pdf_direction=np.array([0.45, 0.35, 0.2])[:k],
        prior_offset_A=rng.normal(0, 2, (k, 2)), scale=np.array([1.0, 0.8]), avg_norm_correction=1.1,
        data_vs_prior=rng.uniform(0, 6, (k, N // 2 + 1)),
    )
    batch = particle_batch(
        imgs.astype(np.float64), part_index=np.arange(b) + 10, group=np.arange(b) % 2,
        optics_group=(np.arange(b) // 2) % 2, origin_px=rng.uniform(-1.6, 1.6, (b, 2)),
        norm_correction=rng.uniform(0.8, 1.2, b), defocus_u_A=rng.uniform(8000, 20000, b),
        defocus_v_A=rng.uniform(8000, 20000, b), defocus_angle_deg=rng.uniform(0, 180, b),
        phase_shift_deg=np.zeros(b), ctf_bfactor_A2=np.zeros(b), ctf_scale=np.ones(b),
        voltage_kV=np.full(b, 300.0), cs_mm=np.full(b, 2.7), amplitude_contrast=np.full(b, 0.1),
        ctf_premultiplied=np.zeros(b, bool),
    )
    settings = Settings(do_ctf=True, zero_mask=True, do_norm=norm, do_scale=True, particle_diameter_A=36.0,
                        adaptive_fraction=0.99, random_seed=5)
    samp = with_perturbation(make_sampling(60.0, 1.0, 1.0, oversampling=1), 0.23)
    return model, batch, settings, samp


# ------------------------------------------------------------------ independent brute force
def _pixels(size):
    out = []
    for i in range(N):
        ky = i if i <= N // 2 else i - N
        for kx in range(N // 2 + 1):
            sh = int(round(np.hypot(kx, ky)))
            if kx <= size // 2 and -size // 2 < ky <= size // 2 and sh <= size // 2 and not (kx == 0 and ky < 0):
                out.append((i, kx, kx, ky, sh))
    return out


def _full_padded(ref, r_max):
    m = PF * N
    c = np.arange(N) - N // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    arg = np.pi * np.hypot(x, y) / (PF * N)
    sinc = np.where(arg > 0, np.sin(arg) / np.where(arg > 0, arg, 1), 1.0)
    pad = np.zeros((m, m))
    pad[m // 2 - N // 2: m // 2 + N // 2, m // 2 - N // 2: m // 2 + N // 2] = ref / sinc ** 2
    f = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(pad))) / (N * N)  # index m//2 = frequency 0
    fy, fx = np.meshgrid(np.arange(m) - m // 2, np.arange(m) - m // 2, indexing="ij")
    f[fx ** 2 + fy ** 2 > (PF * r_max) ** 2] = 0
    return f


def _rotated(fpad, psi_deg, kx, ky, r_lim):
    if kx * kx + ky * ky > r_lim * r_lim:
        return 0.0
    m = fpad.shape[0]
    a = np.deg2rad(psi_deg)
    xr = PF * (np.cos(a) * kx - np.sin(a) * ky)
    yr = PF * (np.sin(a) * kx + np.cos(a) * ky)
    x0, y0 = int(np.floor(xr)), int(np.floor(yr))
    fx, fy = xr - x0, yr - y0
    val = 0.0
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = y0 + dy + m // 2, x0 + dx + m // 2
            if 0 <= yy < m and 0 <= xx < m:
                val += wy * wx * fpad[yy, xx]
    return val


def _brute(model, batch, settings, samp):
    k_n = model.references.shape[0]
    cur, coarse = model.current_size, model.coarse_size
    fpads = [_full_padded(r, cur // 2) for r in model.references]
    psi_c = samp.coarse_psi_deg()
    psi_f = samp.fine_psi_deg()
    t_c = samp.coarse_translations_px()
    t_f = samp.fine_translations_px()
    n_t = len(t_c)
    pix_c, pix_cur = _pixels(coarse), _pixels(cur)
    freq_x = np.tile(np.arange(N // 2 + 1)[None, :], (N, 1)) / (N * PX)
    freq_y = np.tile(np.where(np.arange(N) <= N // 2, np.arange(N), np.arange(N) - N)[:, None], (1, N // 2 + 1)) / (N * PX)
    shells = np.rint(np.hypot(freq_x * N * PX, freq_y * N * PX)).astype(int)
    ctr = model.prior_offset_A * model.pdf_class[:, None]
    out = []
    stats = dict(data=np.zeros((k_n, len(psi_f.ravel()), len(pix_cur)), complex),
                 weight=np.zeros((k_n, len(psi_f.ravel()), len(pix_cur))),
                 s2=np.zeros((2, N // 2 + 1)), sumw=np.zeros(2), pdf=np.zeros(k_n), off=np.zeros((k_n, 2)),
                 s2off=0.0, xa=np.zeros(2), aa=np.zeros(2))
    for p in range(batch.size):
        img = batch.images[p].copy()
        if settings.do_norm:
            img *= model.avg_norm_correction / batch.norm_correction[p]
        o = np.array([int(np.sign(v) * np.floor(abs(v) + 0.5)) for v in batch.origin_px[p]])
        sh = np.zeros_like(img)
        for r in range(N):
            for c in range(N):
                rs, cs = r - o[1], c - o[0]
                if 0 <= rs < N and 0 <= cs < N:
                    sh[r, c] = img[rs, cs]
        masked = mask_particles(sh[None], settings.particle_diameter_A / (2 * PX), settings.width_mask_edge_px)[0]
        xm = np.fft.rfft2(np.fft.ifftshift(masked)) / N ** 2
        xn = np.fft.rfft2(np.fft.ifftshift(sh)) / N ** 2
        ctf = compute_ctf(freq_x, freq_y, batch.defocus_u_A[p], batch.defocus_v_A[p], batch.defocus_angle_deg[p],
                          300.0, 2.7, 0.1).astype(np.float64)
        g, og = batch.group[p], batch.optics_group[p]
        s = model.scale[g]
        s2 = model.sigma2_noise[og]
        keep = ~((np.arange(N // 2 + 1)[None, :] == 0) & (freq_y < 0))
        high = (shells > cur // 2) & (shells <= N // 2) & keep
        xi2 = float((np.abs(xm[high]) ** 2).sum())

        def diff(pix, kk, psi, t, r_lim):
            d = 0.0
            for (i, j, kx, ky, sh_) in pix:
                if sh_ == 0:
                    continue
                ph = np.exp(-2j * np.pi * (kx * t[0] + ky * t[1]) / N)
                pv = _rotated(fpads[kk], psi, kx, ky, r_lim)
                d += abs(xm[i, j] * ph - s * ctf[i, j] * pv) ** 2 / (2 * s2[sh_])
            return d + xi2 / 2

        def log_off(kk, t):
            oa = PX * (o + t)
            d2 = ((oa - ctr[kk]) ** 2).sum()
            return -d2 / (2 * model.sigma2_offset_A2) - np.log(2 * np.pi * model.sigma2_offset_A2)

        # pass 0
        lw0 = np.zeros((k_n, len(psi_c), n_t))
        mean_c = model.pdf_direction.mean()
        mean_o = np.mean([[np.exp(log_off(kk, t)) for t in t_c] for kk in range(k_n)])
        for kk in range(k_n):
            for a, psi in enumerate(psi_c):
                for ti, t in enumerate(t_c):
                    lw0[kk, a, ti] = (np.log(model.pdf_direction[kk] / mean_c) + log_off(kk, t_c[ti]) - np.log(mean_o)
                                      - diff(pix_c, kk, psi, t, coarse / 2))
        w0 = np.exp(lw0 - lw0.max())
        srt = np.sort(w0.ravel())[::-1]
        cs = np.cumsum(srt)
        n_sig = int(np.argmax(cs > settings.adaptive_fraction * w0.sum())) + 1
        sig = w0 >= srt[n_sig - 1]
        # pass 1: children of significant coarse samples
        samples = []
        for kk, a, ti in zip(*np.nonzero(sig)):
            for io in range(2):
                for it in range(4):
                    samples.append((kk, a * 2 + io, ti, it))
        pc = np.array([model.pdf_direction[s_[0]] for s_ in samples]).mean()
        po = np.array([np.exp(log_off(s_[0], t_c[s_[2]])) for s_ in samples]).mean()
        lw = np.array([np.log(model.pdf_direction[kk] / pc) + log_off(kk, t_c[ti]) - np.log(po)
                       - diff(pix_cur, kk, psi_f.ravel()[pf_], t_f[ti, it], cur / 2) for kk, pf_, ti, it in samples])
        lse = lw.max() + np.log(np.exp(lw - lw.max()).sum())
        w = np.exp(lw - lse)
        srt = np.sort(w)[::-1]
        thr = srt[int(np.argmax(np.cumsum(srt) > settings.adaptive_fraction)) + 1 - 1]
        best = int(np.argmax(w))
        kk, pf_, ti, it = samples[best]
        sum_log = sum(np.log(2 * np.pi * s2[sh_]) for (_, _, _, _, sh_) in pix_cur if sh_ > 0)
        res = dict(cls=kk, psi=psi_f.ravel()[pf_], off=o + t_f[ti, it], dll=lse - sum_log, pmax=w[best], nsig=n_sig)
        e = 0.0
        for (kk, pf_, ti, it), wv in zip(samples, w):
            if wv < thr:
                continue
            t = t_f[ti, it]
            stats["pdf"][kk] += wv
            oa = PX * (o + t)
            stats["off"][kk] += wv * oa
            stats["s2off"] += wv * ((oa - ctr[kk]) ** 2).sum()
            stats["sumw"][og] += wv
            for jj, (i, j, kx, ky, sh_) in enumerate(pix_cur):
                ph = np.exp(-2j * np.pi * (kx * t[0] + ky * t[1]) / N)
                pv = _rotated(fpads[kk], psi_f.ravel()[pf_], kx, ky, cur / 2)
                a_ = s * ctf[i, j]
                stats["data"][kk, pf_, jj] += wv * a_ / s2[sh_] * xn[i, j] * ph
                stats["weight"][kk, pf_, jj] += wv * a_ * a_ / s2[sh_]
                dn = wv * abs(xm[i, j] * ph - a_ * pv) ** 2
                stats["s2"][og, sh_] += dn
                e += dn
                if model.data_vs_prior[kk, sh_] > 3:
                    stats["xa"][g] += wv * ctf[i, j] * np.real(xm[i, j] * ph * np.conj(pv))
                    stats["aa"][g] += wv * (ctf[i, j] * abs(pv)) ** 2
        for shell in range(cur // 2 + 1, N // 2 + 1):
            pw = float((np.abs(xm[(shells == shell) & keep]) ** 2).sum())
            stats["s2"][og, shell] += pw
            e += pw
        res["norm"] = batch.norm_correction[p] / model.avg_norm_correction * np.sqrt(2 * e) if settings.do_norm else batch.norm_correction[p]
        out.append(res)
    return out, stats


@pytest.mark.parametrize("norm", [False, True])
def test_estep_matches_brute_force(xp, norm):
    model, batch, settings, samp = _make_problem(norm=norm)
    expected, st_ref = _brute(model, batch, settings, samp)
    dev = lambda a: xp.asarray(a)  # noqa: E731
    model_d = dataclasses.replace(model, **{f: dev(getattr(model, f)) for f in
                                            ("references", "pdf_class", "pdf_direction", "prior_offset_A",
                                             "sigma2_noise", "data_vs_prior", "scale", "tau2")})
    batch_d = ParticleBatch(**{f.name: dev(getattr(batch, f.name)) for f in dataclasses.fields(batch)})
    setup = prepare_iteration(model_d, settings, samp, iteration=3)
    stats, res = expectation_batch(batch_d, model_d, settings, setup, memory_budget_bytes=200_000)
    for p, e in enumerate(expected):
        assert int(res.class_index[p]) == e["cls"]
        assert float(res.psi_deg[p]) == pytest.approx(e["psi"])
        assert np.allclose(to_host(res.origin_px[p]), e["off"])
        assert int(res.n_significant[p]) == e["nsig"]
        assert float(res.pmax[p]) == pytest.approx(e["pmax"], rel=1e-7)
        assert float(res.dll[p]) == pytest.approx(e["dll"], rel=1e-9)
        assert float(res.norm_correction[p]) == pytest.approx(e["norm"], rel=1e-9)
    data = to_host(stats.bp_data)[0]
    assert np.allclose(data, st_ref["data"], atol=1e-9 * np.abs(st_ref["data"]).max())
    assert np.allclose(to_host(stats.bp_weight)[0], st_ref["weight"], rtol=1e-9)
    assert np.allclose(to_host(stats.wsum_sigma2_noise), st_ref["s2"], rtol=1e-8, atol=1e-14)
    assert np.allclose(to_host(stats.sumw_optics), st_ref["sumw"], rtol=1e-9)
    assert np.allclose(to_host(stats.wsum_pdf_class), st_ref["pdf"], rtol=1e-9)
    assert np.allclose(to_host(stats.wsum_prior_offset_A), st_ref["off"], rtol=1e-8, atol=1e-10)
    assert float(stats.wsum_sigma2_offset_A2) == pytest.approx(st_ref["s2off"], rel=1e-8)
    assert np.allclose(to_host(stats.scale_xa), st_ref["xa"], rtol=1e-8)
    assert np.allclose(to_host(stats.scale_aa), st_ref["aa"], rtol=1e-8)
    assert float(stats.log_likelihood) == pytest.approx(sum(e["dll"] for e in expected), rel=1e-9)


def test_chunking_and_order_do_not_change_results():
    model, batch, settings, samp = _make_problem(seed=2, b=6)
    settings = dataclasses.replace(settings, zero_mask=False)  # noise fill seeded per particle
    setup = prepare_iteration(model, settings, samp, iteration=2)
    st_a, res_a = expectation_batch(batch, model, settings, setup)
    perm = np.array([3, 5, 0, 1, 4, 2])
    sub = ParticleBatch(**{f.name: getattr(batch, f.name)[perm] for f in dataclasses.fields(batch)})
    st_b, res_b = expectation_batch(sub, model, settings, setup, memory_budget_bytes=100_000)
    assert np.array_equal(res_a.class_index[perm], res_b.class_index)
    assert np.allclose(res_a.dll[perm], res_b.dll, rtol=1e-10)
    assert np.allclose(st_a.bp_data, st_b.bp_data, atol=1e-12)
    # split into two batches and merge
    first = ParticleBatch(**{f.name: getattr(batch, f.name)[:2] for f in dataclasses.fields(batch)})
    rest = ParticleBatch(**{f.name: getattr(batch, f.name)[2:] for f in dataclasses.fields(batch)})
    merged = expectation_batch(first, model, settings, setup)[0] + expectation_batch(rest, model, settings, setup)[0]
    assert merged.n_particles == 6
    assert np.allclose(merged.wsum_sigma2_noise, st_a.wsum_sigma2_noise, rtol=1e-10)
    assert merged.bp_data.dtype == np.complex128


def test_residual_and_pseudo_halves():
    model, batch, settings, samp = _make_problem(seed=4, b=4)
    setup = prepare_iteration(model, settings, samp, iteration=1)
    st, _ = expectation_batch(batch, model, settings, setup)
    st2, _ = expectation_batch(batch, model, settings, setup, split_halves=True, accumulate_residual=True)
    assert st2.bp_data.shape[0] == 2
    assert np.allclose(st2.bp_weight.sum(0), st.bp_weight[0])
    # residual = data − weight·P: check against the references projected at the fine psis
    from emclass2d.core.projector import project
    k, npsi, j = st.bp_data.shape[1:]
    cls = np.repeat(np.arange(k), npsi)
    p = project(setup.projector, cls, np.tile(setup.psi_fine_deg, k), st.kx, st.ky, setup.current_size / 2)
    expect = st.bp_data[0] - st.bp_weight[0] * p.reshape(k, npsi, j)
    assert np.allclose(st2.bp_data.sum(0), expect, atol=1e-12)
    # parity of part_index 10..13 -> halves 0,1,0,1
    assert np.any(st2.bp_weight[0] != 0) and np.any(st2.bp_weight[1] != 0)


def test_empty_class_is_skipped():
    model, batch, settings, samp = _make_problem(seed=1, b=3)
    model = dataclasses.replace(model, pdf_class=np.array([0.6, 0.0, 0.4]))
    setup = prepare_iteration(model, settings, samp, iteration=1)
    st, res = expectation_batch(batch, model, settings, setup)
    assert not np.any(res.class_index == 1)
    assert st.wsum_pdf_class[1] == 0 and np.all(st.bp_weight[0, 1] == 0)
